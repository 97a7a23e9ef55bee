/* pgcordon mcp: the MCP server on stdio (one JSON-RPC message per line), a client of the gateway. */
#include "cli/mcp_cmd.h"

#include <errno.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "mcp/server.h"

/* Input not yet handled: whole lines, then at most one partial one. */
typedef struct Input {
	char *buf;
	size_t len, cap;
	size_t scanned;	   /* lines before this offset were already looked at for a cancel */
	bool eof;
	bool skipping;	   /* in a line longer than MCP_MAX_MESSAGE: dropped up to its newline */
	const char *call_id; /* the JSON text of the running call's id, while one runs */
} Input;

/* Pending lines beyond this are left unread until the running call ends. */
#define MAX_PENDING (4 * MCP_MAX_MESSAGE)

static void send_line(char *line)
{
	if (!line)
		return;
	if (fputs(line, stdout) == EOF || fputc('\n', stdout) == EOF || fflush(stdout) == EOF) {
		fprintf(stderr, "pgcordon mcp: cannot write to stdout: %s\n", strerror(errno));
		exit(1);
	}
	free(line);
}

/* The bytes of a line too long to take: dropped, answered once with a parse error. */
static void skip_long(Input *in)
{
	char *nl = memchr(in->buf, '\n', in->len);
	if (!in->skipping) {
		in->skipping = true;
		send_line(mcp_too_long());
	}
	if (nl) {
		size_t rest = in->len - (size_t)(nl + 1 - in->buf);
		memmove(in->buf, nl + 1, rest);
		in->len = rest;
		in->skipping = false;
	} else {
		in->len = 0;
	}
	in->scanned = 0;
}

/* One read; false at the end of input or on an error. */
static bool fill(Input *in)
{
	if (in->cap - in->len < 65536) {
		in->cap = in->cap ? in->cap * 2 : 131072;
		in->buf = xrealloc(in->buf, in->cap);
	}
	ssize_t n;
	do
		n = read(STDIN_FILENO, in->buf + in->len, in->cap - in->len);
	while (n < 0 && errno == EINTR);
	if (n <= 0) {
		in->eof = true;
		return false;
	}
	in->len += (size_t)n;
	/* Bounded by the tail: a partial line over the limit is dropped as it comes. */
	char *last = memrchr(in->buf, '\n', in->len);
	size_t partial = last ? in->len - (size_t)(last + 1 - in->buf) : in->len;
	if (in->skipping || (partial > MCP_MAX_MESSAGE && !last))
		skip_long(in);
	return true;
}

/* The next whole line (its length in *len, '\r' dropped), or NULL; taken off by consume(). */
static char *peek_line(Input *in, size_t *len, size_t *used)
{
	char *nl = in->len ? memchr(in->buf, '\n', in->len) : NULL;
	if (!nl)
		return NULL;
	*used = (size_t)(nl + 1 - in->buf);
	*len = (size_t)(nl - in->buf);
	if (*len && in->buf[*len - 1] == '\r')
		(*len)--;
	return in->buf;
}

static void consume(Input *in, size_t used)
{
	memmove(in->buf, in->buf + used, in->len - used);
	in->len -= used;
	in->scanned = in->scanned > used ? in->scanned - used : 0;
}

/* While a call runs: reads what came, and looks for that call's cancellation. */
static McpWatch watch(void *arg)
{
	Input *in = arg;
	if (in->len >= MAX_PENDING)
		return MCP_STOP_WATCHING;
	if (!fill(in))
		return MCP_STOP_WATCHING; /* end of input: what was asked is still answered, then we exit */
	while (in->scanned < in->len) {
		char *start = in->buf + in->scanned;
		char *nl = memchr(start, '\n', in->len - in->scanned);
		if (!nl)
			break;
		size_t n = (size_t)(nl - start);
		in->scanned += n + 1;
		if (n <= MCP_MAX_MESSAGE && in->call_id && mcp_cancels(start, n, in->call_id))
			return MCP_CANCEL;
	}
	return MCP_GO_ON;
}

static void handle(McpDb *db, Input *in, const char *line, size_t len)
{
	bool blank = true;
	for (size_t i = 0; i < len && blank; i++)
		blank = line[i] == ' ' || line[i] == '\t';
	if (blank)
		return;
	if (len > MCP_MAX_MESSAGE) {
		send_line(mcp_too_long());
		return;
	}
	char *id = mcp_request_id(line, len);
	in->call_id = id;
	char *out = mcp_handle(db, line, len);
	in->call_id = NULL;
	free(id);
	send_line(out);
}

static void usage(void)
{
	fprintf(stderr, "usage: pgcordon mcp --connect CONNINFO [--max-rows N] [--max-bytes N]\n"
			"  CONNINFO: how to reach the gateway, as libpq takes it, without a password:\n"
			"            \"host=127.0.0.1 port=6432 dbname=app user=ci-bot\" or postgresql://ci-bot@host:6432/app\n"
			"  the credential (API key, token or password) comes from PGPASSWORD or a password file\n"
			"  --max-rows N   rows returned per call (default 100)\n"
			"  --max-bytes N  bytes of values returned per call (default 65536)\n");
}

static bool number(const char *s, long min, long max, long *out)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		return false;
	*out = v;
	return true;
}

/* A conninfo libpq takes, without a password (it would show in every process listing). */
static bool conninfo_ok(const char *conninfo)
{
	char *err = NULL;
	PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
	if (!opts) {
		fprintf(stderr, "pgcordon mcp: --connect: %s", err ? err : "out of memory\n");
		PQfreemem(err);
		return false;
	}
	bool ok = true;
	for (PQconninfoOption *o = opts; o->keyword; o++) {
		if (strcmp(o->keyword, "password") == 0 && o->val && *o->val) {
			fprintf(stderr, "pgcordon mcp: --connect must not carry the password, which any user could "
					"read in the process list; set PGPASSWORD (or use a password file) instead\n");
			ok = false;
		}
	}
	PQconninfoFree(opts);
	return ok;
}

int mcp_cmd_main(int argc, char **argv)
{
	const char *conninfo = NULL;
	long rows = 100, bytes = 65536;
	if (argc == 3 && (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
		usage();
		return 0;
	}
	for (int i = 2; i < argc; i += 2) {
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool ok = v != NULL;
		if (ok && strcmp(argv[i], "--connect") == 0)
			conninfo = v;
		else if (ok && strcmp(argv[i], "--max-rows") == 0)
			ok = number(v, 1, 100000, &rows);
		else if (ok && strcmp(argv[i], "--max-bytes") == 0)
			ok = number(v, 1024, 64L << 20, &bytes);
		else
			ok = false;
		if (!ok) {
			fprintf(stderr, "pgcordon mcp: bad or unexpected argument \"%s\"%s\n", argv[i],
				v ? " (--max-rows: 1-100000, --max-bytes: 1024-67108864)" : "");
			usage();
			return 2;
		}
	}
	if (!conninfo) {
		usage();
		return 2;
	}
	if (!conninfo_ok(conninfo))
		return 2;
	signal(SIGPIPE, SIG_IGN);
	McpDb *db = mcp_db_new(conninfo, (McpLimits){.max_rows = rows, .max_bytes = (size_t)bytes});
	Input in = {0};
	mcp_db_watch(db, STDIN_FILENO, watch, &in);
	for (;;) {
		size_t len, used;
		char *line = peek_line(&in, &len, &used);
		if (line) {
			if (!in.skipping)
				handle(db, &in, line, len);
			consume(&in, used);
			continue;
		}
		if (in.eof) {
			if (in.len && !in.skipping)
				handle(db, &in, in.buf, in.len); /* a last message without its newline */
			break;
		}
		fill(&in);
	}
	free(in.buf);
	mcp_db_free(db);
	return 0;
}
