/* pgcordon mcp: the MCP server on stdio (one JSON-RPC message per line), a client of the gateway. */
#include "cli/mcp_cmd.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/util.h"
#include "mcp/server.h"

/* Ids of requests cancelled while still queued behind a call; the oldest is forgotten first. */
#define MAX_CANCELLED 64

/* Input not yet handled, buf[start, len): whole lines, then at most one partial one. */
typedef struct Input {
	char *buf;
	size_t start, len, cap;
	size_t line_start; /* where the last, partial line begins */
	size_t scanned; /* lines before this offset were already looked at while a call ran */
	bool eof;
	bool skipping; /* in a line longer than MCP_MAX_MESSAGE: dropped up to its newline */
	const char *call_id; /* the JSON text of the running call's id, while one runs */
	bool call_cancelled; /* the client cancelled the running call: it gets no response */
	char *cancelled[MAX_CANCELLED];
	int ncancelled;
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

/*
 * The n bytes just read at buf[len - n, len): a line longer than MCP_MAX_MESSAGE is
 * answered once with a parse error and dropped as it comes, never kept whole.
 */
static void bound_lines(Input *in, size_t n)
{
	char *fresh = in->buf + in->len - n;
	if (in->skipping) {
		char *nl = memchr(fresh, '\n', n);
		if (!nl) {
			in->len -= n;
			return;
		}
		size_t keep = n - (size_t)(nl + 1 - fresh);
		memmove(fresh, nl + 1, keep);
		in->len = in->len - n + keep;
		in->skipping = false;
		in->line_start = in->len - keep;
		fresh = in->buf + in->line_start;
		n = keep;
	}
	char *nl = n ? memrchr(fresh, '\n', n) : NULL;
	if (nl)
		in->line_start = (size_t)(nl + 1 - in->buf);
	if (in->len - in->line_start > MCP_MAX_MESSAGE) {
		send_line(mcp_too_long());
		in->len = in->line_start;
		in->skipping = true;
	}
}

/* One read (waiting for input even on a non-blocking stdin); false at the end of input or on an error. */
static bool fill(Input *in)
{
	if (in->start) {
		memmove(in->buf, in->buf + in->start, in->len - in->start);
		in->len -= in->start;
		in->line_start -= in->start;
		in->scanned = in->scanned > in->start ? in->scanned - in->start : 0;
		in->start = 0;
	}
	if (in->cap - in->len < 65536) {
		in->cap = in->cap ? in->cap * 2 : 131072;
		in->buf = xrealloc(in->buf, in->cap);
	}
	ssize_t n;
	for (;;) {
		n = read(STDIN_FILENO, in->buf + in->len, in->cap - in->len);
		if (n >= 0 || (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK))
			break;
		if (errno != EINTR) {
			struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
			poll(&p, 1, -1);
		}
	}
	if (n <= 0) {
		in->eof = true;
		return false;
	}
	in->len += (size_t)n;
	bound_lines(in, (size_t)n);
	return true;
}

/* The next whole line (its length in *len, '\r' dropped), or NULL; taken off by consume(). */
static char *peek_line(Input *in, size_t *len, size_t *used)
{
	char *line = in->buf + in->start;
	char *nl = in->len > in->start ? memchr(line, '\n', in->len - in->start) : NULL;
	if (!nl)
		return NULL;
	*used = (size_t)(nl + 1 - line);
	*len = (size_t)(nl - line);
	if (*len && line[*len - 1] == '\r')
		(*len)--;
	return line;
}

static void consume(Input *in, size_t used)
{
	in->start += used;
	if (in->start == in->len)
		in->start = in->len = in->scanned = in->line_start = 0;
}

static void remember_cancelled(Input *in, char *id)
{
	if (in->ncancelled == MAX_CANCELLED) {
		free(in->cancelled[0]);
		memmove(in->cancelled, in->cancelled + 1, (MAX_CANCELLED - 1) * sizeof *in->cancelled);
		in->ncancelled--;
	}
	in->cancelled[in->ncancelled++] = id;
}

/* True (and forgotten) when the request with this id was cancelled before it ran. */
static bool take_cancelled(Input *in, const char *id)
{
	for (int i = 0; id && i < in->ncancelled; i++) {
		if (strcmp(in->cancelled[i], id) == 0) {
			free(in->cancelled[i]);
			memmove(in->cancelled + i, in->cancelled + i + 1, (size_t)(in->ncancelled - i - 1) * sizeof *in->cancelled);
			in->ncancelled--;
			return true;
		}
	}
	return false;
}

/*
 * While a call runs: reads what came, answers pings at once (the line is then blanked),
 * and looks for cancellations: of the running call (it stops), or of a request still
 * queued (it will not run).
 */
static McpWatch watch(void *arg)
{
	Input *in = arg;
	if (in->len - in->start >= MAX_PENDING)
		return MCP_STOP_WATCHING;
	if (!fill(in))
		return MCP_STOP_WATCHING; /* end of input: what was asked is still answered, then we exit */
	if (in->scanned < in->start)
		in->scanned = in->start;
	while (in->scanned < in->len) {
		char *line = in->buf + in->scanned;
		char *nl = memchr(line, '\n', in->len - in->scanned);
		if (!nl)
			break;
		size_t n = (size_t)(nl - line);
		in->scanned += n + 1;
		if (n > MCP_MAX_MESSAGE)
			continue;
		char *target;
		char *pong = mcp_peek(line, n, &target);
		if (pong) {
			send_line(pong);
			memset(line, ' ', n);
			continue;
		}
		if (!target)
			continue;
		if (in->call_id && strcmp(target, in->call_id) == 0) {
			free(target);
			in->call_cancelled = true;
			return MCP_CANCEL;
		}
		remember_cancelled(in, target);
	}
	return MCP_GO_ON;
}

/* Before a request runs: not if it was cancelled while queued; else it is the running call. */
static bool starts(void *arg, const char *id)
{
	Input *in = arg;
	if (take_cancelled(in, id))
		return false;
	in->call_id = id;
	in->call_cancelled = false;
	return true;
}

static void handle(McpDb *db, Input *in, const char *text, size_t len)
{
	bool blank = true;
	for (size_t i = 0; i < len && blank; i++)
		blank = text[i] == ' ' || text[i] == '\t';
	if (blank)
		return;
	if (len > MCP_MAX_MESSAGE) {
		send_line(mcp_too_long());
		return;
	}
	/* A copy: the input buffer moves when more is read while the call runs. */
	char *line = xmalloc(len + 1);
	memcpy(line, text, len);
	line[len] = 0;
	in->call_cancelled = false;
	char *out = mcp_handle(db, line, len, starts, in);
	in->call_id = NULL;
	free(line);
	if (in->call_cancelled)
		free(out); /* the protocol: a cancelled request gets no response */
	else
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
		/* Not libpq's message: it quotes the text it could not take, which may be a secret. */
		fprintf(stderr, "pgcordon mcp: --connect is not a connection string or URI libpq can read\n");
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
			handle(db, &in, line, len);
			consume(&in, used);
			continue;
		}
		if (in.eof) {
			if (in.len > in.start)
				handle(db, &in, in.buf + in.start, in.len - in.start); /* a last message without its newline */
			break;
		}
		fill(&in);
	}
	free(in.buf);
	for (int i = 0; i < in.ncancelled; i++)
		free(in.cancelled[i]);
	mcp_db_free(db);
	return 0;
}
