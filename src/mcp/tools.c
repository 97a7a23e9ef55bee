/* The MCP tools, run through the gateway's PostgreSQL listener with libpq. */
#include "mcp/tools.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

#define MAX_NOTICES 32
#define MAX_NOTICE_BYTES 4096
#define MAX_PARAMS 1000
#define CONNECT_TIMEOUT "10"
#define CANCEL_GRACE_MS 30000

struct McpDb {
	char *conninfo;
	McpLimits limits;
	PGconn *conn;
	int watch_fd;
	McpInterrupt interrupt;
	void *interrupt_arg;
	json_t *notices; /* of the call that runs */
	bool in_block;	 /* a transaction was open after the last statement */
	bool lost_block; /* the session died with a transaction open: the next call says so, and runs nothing */
};

/* What one statement gave back. */
typedef struct Run {
	json_t *columns, *rows;
	long nrows;
	size_t bytes;
	bool truncated;	  /* rows past a limit were not returned */
	bool cancelled;	  /* we sent a cancel (limit reached, or interrupted) */
	bool interrupted; /* the client cancelled the call or went away */
	bool unwatched;	  /* the caller's input is not watched for the rest of the call */
	bool completed;	  /* the statement ran to its end (its result's end arrived) */
	bool rolled_back; /* our cancel at a limit ended it: what it changed is undone */
	bool abandoned;	  /* no end within CANCEL_GRACE_MS of the cancel: the session is closed */
	int64_t cancelled_at;
	struct CancelSend *cancel_send; /* the cancel under way on its own thread */
	char *command;
	long affected;
	json_t *error; /* {sqlstate, message, detail, hint}, or NULL */
} Run;

/* A JSON string of n bytes; bytes that are not UTF-8 (a client_encoding the agent set) become '?'. */
static json_t *text(const char *s, size_t n)
{
	json_t *j = json_stringn(s, n);
	if (j)
		return j;
	char *copy = xmalloc(n + 1);
	for (size_t i = 0; i < n; i++)
		copy[i] = (unsigned char)s[i] < 0x80 && s[i] ? s[i] : '?';
	j = json_stringn(copy, n);
	free(copy);
	return j;
}

/* At most max bytes of s, ending before a character the cut would split. */
static json_t *text_cut(const char *s, size_t max)
{
	return text(s, util_utf8_prefix(s, strlen(s), max));
}

static json_t *error_object(const char *sqlstate, const char *message)
{
	return json_pack("{ss so}", "sqlstate", sqlstate, "message", text_cut(message, MAX_NOTICE_BYTES));
}

static char *conn_message(PGconn *conn);

/* libpq's own failure (no connection, lost connection). */
static json_t *conn_error(PGconn *conn, const char *what)
{
	char *m = conn ? conn_message(conn) : xstrdup("out of memory");
	char *msg = xasprintf("%s: %s", what, m);
	json_t *e = error_object("08006", msg);
	free(msg);
	free(m);
	return e;
}

static void put_field(json_t *o, const char *key, const PGresult *r, int field)
{
	const char *v = PQresultErrorField(r, field);
	if (v && *v)
		json_object_set_new(o, key, text_cut(v, MAX_NOTICE_BYTES));
}

static json_t *server_error(const PGresult *r)
{
	json_t *e = json_object();
	put_field(e, "severity", r, PG_DIAG_SEVERITY);
	put_field(e, "sqlstate", r, PG_DIAG_SQLSTATE);
	put_field(e, "message", r, PG_DIAG_MESSAGE_PRIMARY);
	put_field(e, "detail", r, PG_DIAG_MESSAGE_DETAIL);
	put_field(e, "hint", r, PG_DIAG_MESSAGE_HINT);
	if (!json_object_get(e, "message"))
		json_object_set_new(e, "message", text_cut(PQresultErrorMessage(r), MAX_NOTICE_BYTES));
	return e;
}

/* Adds a notice to the call's result (taking it), up to MAX_NOTICES and a last word that more were dropped. */
static void add_notice(McpDb *db, json_t *notice)
{
	size_t n = db->notices ? json_array_size(db->notices) : MAX_NOTICES + 1;
	if (n < MAX_NOTICES)
		json_array_append(db->notices, notice);
	else if (n == MAX_NOTICES)
		json_array_append_new(db->notices, json_pack("{ss}", "message", "(more notices were dropped)"));
	json_decref(notice);
}

/* Notices (an approval request's id among them) go back with the call's result. */
static void on_notice(void *arg, const PGresult *r)
{
	McpDb *db = arg;
	if (db->notices && json_array_size(db->notices) <= MAX_NOTICES)
		add_notice(db, server_error(r));
}

McpDb *mcp_db_new(const char *conninfo, McpLimits limits)
{
	McpDb *db = xcalloc(1, sizeof *db);
	db->conninfo = xstrdup(conninfo);
	db->limits = limits;
	db->watch_fd = -1;
	return db;
}

void mcp_db_free(McpDb *db)
{
	if (!db)
		return;
	PQfinish(db->conn);
	util_wipe_free(db->conninfo); /* over HTTP it holds the caller's credential */
	json_decref(db->notices);
	free(db);
}

void mcp_db_watch(McpDb *db, int fd, McpInterrupt cb, void *arg)
{
	db->watch_fd = fd;
	db->interrupt = cb;
	db->interrupt_arg = arg;
}

/* A message of libpq's without its trailing newline, as a new string. */
static char *conn_message(PGconn *conn)
{
	const char *m = PQerrorMessage(conn);
	size_t n = strlen(m);
	while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
		n--;
	return xasprintf("%.*s", (int)n, m);
}

/*
 * NOTIFY messages of a LISTEN the agent ran: libpq keeps each until asked, so they are
 * taken after every statement; the first few go back as notices, the rest are dropped.
 */
static void drain_notifies(McpDb *db)
{
	PGnotify *n;
	while ((n = PQnotifies(db->conn))) {
		if (db->notices && json_array_size(db->notices) <= MAX_NOTICES)
			add_notice(db, json_pack("{ss so so}", "severity", "NOTIFICATION", "channel", text_cut(n->relname, 256),
						 "message", text_cut(n->extra, MAX_NOTICE_BYTES)));
		PQfreemem(n);
	}
}

/* Reads what came while idle: a FATAL then the end of the connection (libpq gives the FATAL as a notice). */
static bool still_open(PGconn *conn)
{
	for (int i = 0; i < 4 && PQstatus(conn) == CONNECTION_OK; i++) {
		struct pollfd p = {.fd = PQsocket(conn), .events = POLLIN};
		if (poll(&p, 1, 0) <= 0 || !PQconsumeInput(conn))
			break;
		PQisBusy(conn); /* parses it */
	}
	return PQstatus(conn) == CONNECTION_OK;
}

/*
 * One session for the server's life, so a transaction can span calls. When it has ended
 * (the gateway restarted, a token expired, an operator ended it) a new one is opened: at
 * once if it was idle, with a notice saying so; after an error if a transaction was open,
 * so the agent learns that its transaction is gone.
 */
static bool connected(McpDb *db, Run *run)
{
	if (db->conn && still_open(db->conn))
		return true;
	char *why = db->conn ? conn_message(db->conn) : NULL;
	if (db->conn) {
		PQfinish(db->conn);
		db->conn = NULL;
		db->lost_block = db->in_block;
		db->in_block = false;
	}
	if (db->lost_block) {
		db->lost_block = false;
		char *msg = xasprintf("the gateway session ended with a transaction open, which is rolled back; the "
				      "next call opens a new session%s%s%s",
				      why ? " (" : "", why ? why : "", why ? ")" : "");
		run->error = error_object("08006", msg);
		free(msg);
		free(why);
		return false;
	}
	if (why) {
		char *msg = xasprintf("the previous gateway session had ended (%s); this call runs in a new one", why);
		add_notice(db, json_pack("{ss ss}", "severity", "NOTICE", "message", msg));
		free(msg);
		free(why);
	}
	/* Later keywords win: the agent's conninfo may lengthen the timeout, not change the encoding. */
	const char *keys[] = {"connect_timeout", "keepalives", "dbname", "client_encoding", "fallback_application_name", NULL};
	const char *values[] = {CONNECT_TIMEOUT, "1", db->conninfo, "UTF8", "pgcordon-mcp", NULL};
	db->conn = PQconnectdbParams(keys, values, 1);
	if (PQstatus(db->conn) != CONNECTION_OK) {
		run->error = conn_error(db->conn, "cannot connect to the gateway");
		PQfinish(db->conn);
		db->conn = NULL;
		return false;
	}
	PQsetNoticeReceiver(db->conn, on_notice, db);
	return true;
}

/*
 * PQcancel has no timeout: a listener that takes the connection and never answers (a gateway
 * that is stopping) would hold the call forever. So it runs on a thread of its own, and the
 * call waits for it (finish_cancel) at most until CANCEL_GRACE_MS after the cancel: a
 * cancel still on its way could otherwise stop the session's next statement.
 */
typedef struct CancelSend {
	PGcancel *c;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool done;
	int refs; /* the thread's and the call's */
} CancelSend;

static void cancel_send_release(CancelSend *cs)
{
	pthread_mutex_lock(&cs->mu);
	bool last = --cs->refs == 0;
	pthread_mutex_unlock(&cs->mu);
	if (!last)
		return;
	PQfreeCancel(cs->c);
	pthread_mutex_destroy(&cs->mu);
	pthread_cond_destroy(&cs->cond);
	free(cs);
}

static void *send_cancel(void *arg)
{
	CancelSend *cs = arg;
	char err[256];
	PQcancel(cs->c, err, sizeof err);
	pthread_mutex_lock(&cs->mu);
	cs->done = true;
	pthread_cond_signal(&cs->cond);
	pthread_mutex_unlock(&cs->mu);
	cancel_send_release(cs);
	return NULL;
}

static void cancel(McpDb *db, Run *run)
{
	if (run->cancelled)
		return;
	run->cancelled = true;
	run->cancelled_at = (int64_t)util_now_ms();
	PGcancel *c = PQgetCancel(db->conn);
	if (!c)
		return;
	CancelSend *cs = xcalloc(1, sizeof *cs);
	*cs = (CancelSend){.c = c, .refs = 2};
	pthread_mutex_init(&cs->mu, NULL);
	pthread_condattr_t attr;
	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* the grace is counted on util_now_ms's clock */
	pthread_cond_init(&cs->cond, &attr);
	pthread_condattr_destroy(&attr);
	run->cancel_send = cs;
	pthread_t t;
	if (util_thread_start(&t, 256 * 1024, true, send_cancel, cs) != 0) {
		cs->refs = 1;
		send_cancel(cs); /* no thread to be had: send it from here */
		run->cancel_send = NULL;
	}
}

/*
 * Waits for the cancel's sending to end; past the grace the session is abandoned (closed).
 * A session already lost is not waited for: the next statement runs on a new one, which
 * the old cancel cannot reach.
 */
static void finish_cancel(McpDb *db, Run *run)
{
	CancelSend *cs = run->cancel_send;
	if (!cs)
		return;
	int64_t left = PQstatus(db->conn) != CONNECTION_OK ? 0 : run->cancelled_at + CANCEL_GRACE_MS - (int64_t)util_now_ms();
	struct timespec until = util_deadline(CLOCK_MONOTONIC, left > 0 ? (int)left : 0);
	pthread_mutex_lock(&cs->mu);
	while (!cs->done && pthread_cond_timedwait(&cs->cond, &cs->mu, &until) != ETIMEDOUT) {
	}
	bool done = cs->done;
	pthread_mutex_unlock(&cs->mu);
	if (!done)
		run->abandoned = true;
	cancel_send_release(cs);
	run->cancel_send = NULL;
}

/* Row data past a limit: outside a transaction the statement is cancelled; inside, read and dropped. */
static void limit_reached(McpDb *db, Run *run, bool in_block)
{
	run->truncated = true;
	if (!in_block)
		cancel(db, run);
}

static const char *type_name(Oid t)
{
	switch (t) {
	case 16: return "boolean";
	case 17: return "bytea";
	case 18: return "char";
	case 19: return "name";
	case 20: return "bigint";
	case 21: return "smallint";
	case 23: return "integer";
	case 25: return "text";
	case 26: return "oid";
	case 114: return "json";
	case 700: return "real";
	case 701: return "double precision";
	case 1042: return "character";
	case 1043: return "character varying";
	case 1082: return "date";
	case 1083: return "time";
	case 1114: return "timestamp";
	case 1184: return "timestamptz";
	case 1186: return "interval";
	case 1700: return "numeric";
	case 2950: return "uuid";
	case 3802: return "jsonb";
	default: return NULL;
	}
}

/*
 * A value as JSON: NULL as null, booleans and integers as themselves, the rest as the
 * server's text (numeric and float text keeps every digit, and NaN, that a JSON number
 * could not).
 */
static json_t *value(const PGresult *r, int i)
{
	if (PQgetisnull(r, 0, i))
		return json_null();
	const char *v = PQgetvalue(r, 0, i);
	size_t n = (size_t)PQgetlength(r, 0, i);
	switch (PQftype(r, i)) {
	case 16:
		return json_boolean(v[0] == 't');
	case 20:
	case 21:
	case 23:
	case 26: {
		char *end;
		errno = 0;
		long long x = strtoll(v, &end, 10);
		if (!errno && end == v + n && n)
			return json_integer(x);
		break;
	}
	default:
		break;
	}
	return text(v, n);
}

static void take_columns(Run *run, const PGresult *r)
{
	if (run->columns)
		return;
	run->columns = json_array();
	for (int i = 0; i < PQnfields(r); i++) {
		const char *name = PQfname(r, i);
		json_t *col = json_pack("{so}", "name", text(name, strlen(name)));
		const char *t = type_name(PQftype(r, i));
		if (t)
			json_object_set_new(col, "type", json_string(t));
		else
			json_object_set_new(col, "type_oid", json_integer(PQftype(r, i)));
		json_array_append_new(run->columns, col);
	}
}

/*
 * Whether a row of size bytes still fits under the limits (it is then counted). Past them
 * the result is cut, and the rows that still come are dropped.
 */
static bool row_fits(McpDb *db, Run *run, size_t size, bool in_block)
{
	if (run->truncated)
		return false;
	if (run->nrows >= db->limits.max_rows || size > db->limits.max_bytes - run->bytes) {
		limit_reached(db, run, in_block);
		return false;
	}
	run->nrows++;
	run->bytes += size;
	return true;
}

static void take_row(McpDb *db, Run *run, const PGresult *r, bool in_block)
{
	size_t size = 0;
	for (int i = 0; i < PQnfields(r); i++)
		size += (size_t)PQgetlength(r, 0, i);
	if (!row_fits(db, run, size, in_block))
		return;
	json_t *row = json_array();
	for (int i = 0; i < PQnfields(r); i++)
		json_array_append_new(row, value(r, i));
	json_array_append_new(run->rows, row);
}

/* COPY TO STDOUT: its lines come back as rows of one column, under the same limits. */
static void take_copy_line(McpDb *db, Run *run, char *line, int len, bool in_block)
{
	if (!run->columns)
		run->columns = json_pack("[{ss ss}]", "name", "copy", "type", "text");
	size_t n = (size_t)len;
	if (n && line[n - 1] == '\n')
		n--;
	if (row_fits(db, run, n, in_block))
		json_array_append_new(run->rows, json_pack("[o]", text(line, n)));
}

/*
 * Waits until the connection has input, watching the caller's input too: when the caller
 * cancels (or goes away) the statement is cancelled through the gateway, and its end is
 * still read, so the session stays in step.
 */
static bool wait_input(McpDb *db, Run *run)
{
	struct pollfd fds[2] = {{.fd = PQsocket(db->conn), .events = POLLIN}, {.fd = -1, .events = POLLIN}};
	if (!run->unwatched && db->watch_fd >= 0 && db->interrupt)
		fds[1].fd = db->watch_fd;
	for (;;) {
		int timeout = -1;
		if (run->cancelled) {
			int64_t left = run->cancelled_at + CANCEL_GRACE_MS - (int64_t)util_now_ms();
			if (left <= 0) {
				run->abandoned = true;
				return false;
			}
			timeout = (int)left;
		}
		int n = poll(fds, 2, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return false;
		if (fds[1].revents) {
			McpWatch w = db->interrupt(db->interrupt_arg);
			if (w == MCP_CANCEL) {
				run->interrupted = true;
				cancel(db, run);
			}
			if (w != MCP_GO_ON) {
				run->unwatched = true;
				fds[1].fd = -1;
			}
		}
		if (fds[0].revents)
			return PQconsumeInput(db->conn) == 1;
	}
}

static void take_copy_out(McpDb *db, Run *run, bool in_block)
{
	for (;;) {
		char *line = NULL;
		int len = PQgetCopyData(db->conn, &line, 1);
		if (len > 0) {
			take_copy_line(db, run, line, len, in_block);
			PQfreemem(line);
		} else if (len == 0) {
			if (!wait_input(db, run))
				return;
		} else {
			return; /* -1: done, the result follows; -2: the error follows */
		}
	}
}

static void take_result(McpDb *db, Run *run, PGresult *r, bool in_block)
{
	switch (PQresultStatus(r)) {
	case PGRES_SINGLE_TUPLE:
		take_columns(run, r);
		take_row(db, run, r, in_block);
		break;
	case PGRES_TUPLES_OK:
		take_columns(run, r);
		run->completed = true;
		free(run->command);
		run->command = xstrdup(PQcmdStatus(r));
		break;
	case PGRES_COMMAND_OK: {
		free(run->command);
		run->command = xstrdup(PQcmdStatus(r));
		const char *n = PQcmdTuples(r);
		run->affected = *n ? atol(n) : -1;
		break;
	}
	case PGRES_COPY_IN:
		PQputCopyEnd(db->conn, "COPY FROM STDIN is not available through MCP");
		break;
	case PGRES_COPY_OUT:
		take_copy_out(db, run, in_block);
		break;
	case PGRES_EMPTY_QUERY:
		run->command = xstrdup("");
		break;
	default: {
		const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		/* Our own cancel of a result cut at a limit is not the statement's failure. */
		if (run->cancelled && !run->interrupted && state && strcmp(state, "57014") == 0) {
			run->rolled_back = true;
			break;
		}
		if (!run->error)
			run->error = state ? server_error(r) : conn_error(db->conn, "the gateway connection failed");
		break;
	}
	}
}

/* Runs one statement (extended protocol: exactly one, with text parameters). */
static void run_statement(McpDb *db, const char *sql, int nparams, const char *const *values, Run *run)
{
	run->rows = json_array();
	run->affected = -1;
	if (!connected(db, run))
		return;
	bool in_block = PQtransactionStatus(db->conn) != PQTRANS_IDLE;
	if (!PQsendQueryParams(db->conn, sql, nparams, NULL, values, NULL, NULL, 0)) {
		run->error = conn_error(db->conn, "cannot send the statement");
		goto done;
	}
	PQsetSingleRowMode(db->conn);
	for (;;) {
		while (PQisBusy(db->conn)) {
			if (!wait_input(db, run)) {
				if (!run->error)
					run->error = conn_error(db->conn, "the gateway connection failed");
				goto done;
			}
		}
		PGresult *r = PQgetResult(db->conn);
		if (!r)
			break;
		take_result(db, run, r, in_block);
		PQclear(r);
	}
	if (run->interrupted && !run->error)
		run->error = error_object("57014", "the call was cancelled by the client");
done:
	finish_cancel(db, run);
	drain_notifies(db);
	if (run->abandoned && !run->error)
		run->error = error_object("08006", "the statement did not end within 30 s of its cancel; the session "
						   "was closed");
	if (run->abandoned || PQstatus(db->conn) != CONNECTION_OK) {
		/*
		 * This call's error tells the agent; the next call opens a new session. A transaction
		 * that was open is gone, and the next call says so first: it must not run in
		 * autocommit as if it were still inside it.
		 */
		PQfinish(db->conn);
		db->conn = NULL;
		db->lost_block = in_block;
		db->in_block = false;
		return;
	}
	db->in_block = PQtransactionStatus(db->conn) != PQTRANS_IDLE;
}

static void run_free(Run *run)
{
	json_decref(run->columns);
	json_decref(run->rows);
	json_decref(run->error);
	free(run->command);
}

/* The result object: rows or a command's tag, notices, and what was left out. */
static json_t *run_result(McpDb *db, Run *run)
{
	json_t *out = json_object();
	if (run->error) {
		json_object_set(out, "error", run->error);
	} else if (run->columns) {
		json_object_set(out, "columns", run->columns);
		json_object_set(out, "rows", run->rows);
		json_object_set_new(out, "row_count", json_integer(run->nrows));
		json_object_set_new(out, "truncated", json_boolean(run->truncated));
		if (run->truncated) {
			/* Whether the statement ran to its end matters when it changed something. */
			const char *end = run->completed ? "the statement ran to its end"
				: run->rolled_back ? "the statement was cancelled there, so whatever it changed was rolled back"
						   : "the rest were read and dropped";
			char *why = xasprintf("more rows than this server returns (max_rows %ld, max_bytes %zu): %s; "
					      "narrow the query or add a LIMIT",
					      db->limits.max_rows, db->limits.max_bytes, end);
			json_object_set_new(out, "note", json_string(why));
			free(why);
			if (run->rolled_back && !run->completed)
				json_object_set_new(out, "cancelled", json_true());
		}
		if (run->command)
			json_object_set_new(out, "command", json_string(run->command));
	} else if (run->command) {
		json_object_set_new(out, "command", json_string(run->command));
		if (run->affected >= 0)
			json_object_set_new(out, "rows_affected", json_integer(run->affected));
	}
	if (db->notices && json_array_size(db->notices))
		json_object_set(out, "notices", db->notices);
	return out;
}

/* A CallToolResult: the object as JSON text (what models read) and as structured content. */
static json_t *call_result(json_t *object, bool is_error)
{
	char *s = json_dumps(object, JSON_COMPACT | JSON_REAL_PRECISION(17));
	json_t *out = json_pack("{s[{ss ss}] so sb}", "content", "type", "text", "text", s ? s : "{}",
				"structuredContent", object, "isError", is_error);
	free(s);
	return out;
}

static json_t *tool_error(const char *message)
{
	return call_result(json_pack("{s{ss}}", "error", "message", message), true);
}

static json_t *run_tool(McpDb *db, const char *sql, int nparams, const char *const *values)
{
	Run run = {0};
	json_decref(db->notices);
	db->notices = json_array();
	run_statement(db, sql, nparams, values, &run);
	json_t *out = call_result(run_result(db, &run), run.error != NULL);
	run_free(&run);
	json_decref(db->notices);
	db->notices = NULL;
	return out;
}

/* A parameter's text: strings as they are, numbers and booleans as written, objects as JSON. */
static char *param_text(json_t *v)
{
	if (json_is_null(v))
		return NULL;
	if (json_is_string(v))
		return xstrdup(json_string_value(v));
	if (json_is_true(v) || json_is_false(v))
		return xstrdup(json_is_true(v) ? "true" : "false");
	return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(17));
}

static json_t *tool_query(McpDb *db, json_t *args)
{
	json_t *sql = json_object_get(args, "sql"), *params = json_object_get(args, "params");
	if (!json_is_string(sql) || !json_string_length(sql))
		return tool_error("\"sql\" must be a non-empty string: one SQL statement");
	if (strlen(json_string_value(sql)) != json_string_length(sql))
		return tool_error("\"sql\" contains a NUL character");
	if (params && !json_is_array(params) && !json_is_null(params))
		return tool_error("\"params\" must be an array of values for $1, $2, ...");
	size_t n = json_is_array(params) ? json_array_size(params) : 0;
	if (n > MAX_PARAMS)
		return tool_error("more than " UTIL_TEXT(MAX_PARAMS) " parameters");
	char **values = xcalloc(n ? n : 1, sizeof *values);
	for (size_t i = 0; i < n; i++) {
		values[i] = param_text(json_array_get(params, i));
		if (values[i] && json_is_string(json_array_get(params, i)) &&
		    strlen(values[i]) != json_string_length(json_array_get(params, i))) {
			for (size_t k = 0; k <= i; k++)
				free(values[k]);
			free(values);
			return tool_error("a parameter contains a NUL character");
		}
	}
	json_t *out = run_tool(db, json_string_value(sql), (int)n, (const char *const *)values);
	for (size_t i = 0; i < n; i++)
		free(values[i]);
	free(values);
	return out;
}

static const char LIST_TABLES[] =
	"SELECT n.nspname AS schema, c.relname AS name, "
	"CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view' "
	"WHEN 'm' THEN 'materialized view' WHEN 'f' THEN 'foreign table' END AS kind "
	"FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
	"WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') "
	"AND n.nspname <> 'information_schema' AND n.nspname !~ '^pg_' "
	"AND ($1::text IS NULL OR n.nspname = $1::text) ORDER BY 1, 2";

static json_t *tool_list_tables(McpDb *db, json_t *args)
{
	json_t *schema = json_object_get(args, "schema");
	if (schema && !json_is_string(schema) && !json_is_null(schema))
		return tool_error("\"schema\" must be a string");
	const char *values[1] = {json_is_string(schema) ? json_string_value(schema) : NULL};
	return run_tool(db, LIST_TABLES, 1, values);
}

static const char DESCRIBE_TABLE[] =
	"SELECT a.attname AS column, pg_catalog.format_type(a.atttypid, a.atttypmod) AS type, "
	"NOT a.attnotnull AS nullable, pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default "
	"FROM pg_catalog.pg_attribute a "
	"LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
	"WHERE a.attrelid = pg_catalog.to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped "
	"ORDER BY a.attnum";

static json_t *tool_describe_table(McpDb *db, json_t *args)
{
	json_t *table = json_object_get(args, "table");
	if (!json_is_string(table) || !json_string_length(table) ||
	    strlen(json_string_value(table)) != json_string_length(table))
		return tool_error("\"table\" must be a table name, optionally schema-qualified (\"public.orders\")");
	const char *values[1] = {json_string_value(table)};
	json_t *out = run_tool(db, DESCRIBE_TABLE, 1, values);
	json_t *res = json_object_get(out, "structuredContent");
	if (!json_is_true(json_object_get(out, "isError")) && json_integer_value(json_object_get(res, "row_count")) == 0) {
		json_decref(out);
		char *msg = xasprintf("no table or view named \"%s\" is visible to this identity", values[0]);
		out = tool_error(msg);
		free(msg);
	}
	return out;
}

json_t *mcp_tools_list(void)
{
	json_t *query = json_pack(
		"{ss ss s{ss s{s{ss ss} s{ss ss}} s[s] sb} s{sb sb sb}}", "name", "query", "description",
		"Run one SQL statement through the pgcordon gateway, as this server's identity: the gateway's "
		"policies, approvals, masking and audit apply. Returns the columns and rows (limited; a cut "
		"result says so), or the command tag, or the error with its SQLSTATE. Notices, such as an "
		"approval request's id, are returned too. Use $1, $2, ... with \"params\" for values.",
		"inputSchema", "type", "object", "properties", "sql", "type", "string", "description",
		"exactly one SQL statement", "params", "type", "array", "description",
		"values for $1, $2, ... (strings, numbers, booleans, null)", "required", "sql",
		"additionalProperties", false, "annotations", "readOnlyHint", false, "destructiveHint", true,
		"openWorldHint", false);
	json_t *list = json_pack("{ss ss s{ss s{s{ss ss}} sb} s{sb sb}}", "name", "list_tables", "description",
				 "List the tables and views this identity can see (schema, name, kind).", "inputSchema",
				 "type", "object", "properties", "schema", "type", "string", "description",
				 "only this schema", "additionalProperties", false, "annotations", "readOnlyHint",
				 true, "openWorldHint", false);
	json_t *describe = json_pack(
		"{ss ss s{ss s{s{ss ss}} s[s] sb} s{sb sb}}", "name", "describe_table", "description",
		"Describe a table or view: its columns, their types, nullability and defaults.", "inputSchema",
		"type", "object", "properties", "table", "type", "string", "description",
		"the name, optionally schema-qualified, as SQL would write it", "required", "table",
		"additionalProperties", false, "annotations", "readOnlyHint", true, "openWorldHint", false);
	return json_pack("[ooo]", query, list, describe);
}

json_t *mcp_tools_call(McpDb *db, const char *name, json_t *arguments)
{
	if (arguments && !json_is_object(arguments))
		return tool_error("\"arguments\" must be an object");
	if (strcmp(name, "query") == 0)
		return tool_query(db, arguments);
	if (strcmp(name, "list_tables") == 0)
		return tool_list_tables(db, arguments);
	if (strcmp(name, "describe_table") == 0)
		return tool_describe_table(db, arguments);
	return NULL;
}
