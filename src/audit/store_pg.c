/*
 * The audit store in a PostgreSQL database of its own, for several gateways sharing one
 * trail. Same table as SQLite; each gateway (node) keeps its own chain in it.
 */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/pg_conn.h"
#include "audit/store.h"
#include "core/util.h"

static const char *const SCHEMA =
	"SET client_min_messages = warning;"
	"CREATE TABLE IF NOT EXISTS audit_records ("
	" node text NOT NULL, seq bigint NOT NULL, time text NOT NULL, kind text NOT NULL,"
	" session_id text NOT NULL, user_name text NOT NULL, database text NOT NULL,"
	" body text NOT NULL, prev_tag text NOT NULL, tag text NOT NULL, PRIMARY KEY (node, seq));"
	"CREATE INDEX IF NOT EXISTS audit_records_session ON audit_records (session_id);"
	/* Partial: the session list reads session starts by time; statements do not pay for it. */
	"CREATE INDEX IF NOT EXISTS audit_records_session_starts ON audit_records (time) WHERE kind = 'session_start';";

static const char INSERT_NAME[] = "pgcordon_audit_insert";
static const char INSERT_SQL[] = "INSERT INTO audit_records (node, seq, time, kind, session_id, user_name, database, body,"
				 " prev_tag, tag) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

/* The connection, and what it needs again after a reconnect. */
typedef struct {
	PGconn *conn;
	bool strict;
	int timeout_ms; /* silence allowed while an answer is owed: see store_open; 0 no limit */
	bool given_up;  /* a call ran out of time or failed mid-way: what the connection holds is unknown */
	int doubt_pid;  /* the backend of a COMMIT sent and never answered: it may still commit; 0 none */
} PgStore;

static PgStore *pg_of(const AuditStore *st) { return st->db; }

static bool fail_with(const char *what, const char *message, char *err, size_t errlen)
{
	char msg[300];
	snprintf(msg, sizeof msg, "%s", message);
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = 0;
	snprintf(err, errlen, "audit store: %s: %s", what, msg);
	return false;
}

static bool fail(PGconn *c, const char *what, char *err, size_t errlen)
{
	return fail_with(what, c ? PQerrorMessage(c) : "out of memory", err, errlen);
}

/*
 * Waits for the next result (pg_conn_wait). A connection that stays silent for the store's
 * timeout while an answer is owed is given up: the next transaction starts on a new one.
 */
static bool await_result(PgStore *pg, const char *what, char *err, size_t errlen)
{
	char why[256];
	PgWait w = pg_conn_wait(pg->conn, pg->timeout_ms, why, sizeof why);
	if (w == PG_WAIT_READY)
		return true;
	pg->given_up = true; /* unread results may be left on it */
	if (w == PG_WAIT_SILENT) {
		snprintf(err, errlen, "audit store: %s: %s; the connection is given up", what, why);
		return false;
	}
	return fail_with(what, why, err, errlen);
}

/* Reads a command's results up to its end; the last goes to *out when out is not NULL. */
static bool collect(PgStore *pg, PGresult **out, const char *what, char *err, size_t errlen)
{
	bool ok = true;
	PGresult *last = NULL;
	for (;;) {
		if (!await_result(pg, what, err, errlen)) {
			PQclear(last);
			return false;
		}
		PGresult *r = PQgetResult(pg->conn);
		if (!r)
			break;
		ExecStatusType s = PQresultStatus(r);
		if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK && ok)
			ok = fail_with(what, PQresultErrorMessage(r), err, errlen);
		PQclear(last);
		last = r;
	}
	if (out && ok)
		*out = last;
	else
		PQclear(last);
	return ok;
}

/* False (and err) when a failed call left the connection unusable until reconnect_if_broken. */
static bool usable(const PgStore *pg, const char *what, char *err, size_t errlen)
{
	return !pg->given_up || fail_with(what, "the connection was given up after a failed call", err, errlen);
}

/* Runs a command; result rows (if any) go to *out when out is not NULL. */
static bool run(PgStore *pg, const char *sql, int n, const char *const *params, PGresult **out, const char *what,
		char *err, size_t errlen)
{
	if (!usable(pg, what, err, errlen))
		return false;
	int sent = n ? PQsendQueryParams(pg->conn, sql, n, NULL, params, NULL, NULL, 0) : PQsendQuery(pg->conn, sql);
	if (!sent)
		return fail(pg->conn, what, err, errlen);
	return collect(pg, out, what, err, errlen);
}

/*
 * What each connection to the store is set up with, at open (before the schema, whose
 * CREATE INDEX IF NOT EXISTS takes a lock too) and after a reconnect.
 */
static bool set_up(PgStore *pg, char *err, size_t errlen)
{
	/* Sends must not block either: a full socket buffer would hold the writer past its timeout. */
	if (PQsetnonblocking(pg->conn, 1) != 0)
		return fail(pg->conn, "settings", err, errlen);
	/* Default mode may lose the last commits if the store's host crashes; strict may not. */
	if (!run(pg, pg->strict ? "SET synchronous_commit = on" : "SET synchronous_commit = off", 0, NULL, NULL,
		 "settings", err, errlen))
		return false;
	/*
	 * A lock someone holds on the table must not hold the writer: waiting, it would let
	 * statements run on unrecorded while their records pile up. The batch fails instead, and
	 * audit.on_failure applies.
	 */
	return run(pg, PG_CONN_LIMIT_LOCK_WAIT, 0, NULL, NULL, "settings", err, errlen);
}

static bool prepare_insert(PgStore *pg, char *err, size_t errlen)
{
	if (!PQsendPrepare(pg->conn, INSERT_NAME, INSERT_SQL, 10, NULL))
		return fail(pg->conn, "prepare", err, errlen);
	return collect(pg, NULL, "prepare", err, errlen);
}

/*
 * A connection lost, given up, or left in a pipeline by a batch that failed half-way is
 * replaced, set up again. Only between transactions: a transaction goes with its connection.
 */
static bool reconnect_if_broken(PgStore *pg, char *err, size_t errlen)
{
	PGconn *c = pg->conn;
	if (!pg->given_up && PQstatus(c) != CONNECTION_BAD && PQpipelineStatus(c) == PQ_PIPELINE_OFF)
		return true;
	PQreset(c); /* blocking, bounded by connect_timeout */
	pg->given_up = false;
	if (PQstatus(c) != CONNECTION_OK)
		return fail(c, "connect", err, errlen);
	if (set_up(pg, err, errlen) && prepare_insert(pg, err, errlen))
		return true;
	pg->given_up = true; /* not without its settings: the next try connects again */
	return false;
}

static void pg_close(AuditStore *st)
{
	PQfinish(pg_of(st)->conn);
	free(st->db);
	free(st);
}

static bool pg_exec(AuditStore *st, const char *sql, char *err, size_t errlen)
{
	PgStore *pg = pg_of(st);
	bool begin = strcmp(sql, "BEGIN") == 0;
	if (begin && pg->doubt_pid)
		return fail_with(sql, "a COMMIT is still in doubt", err, errlen);
	if (begin && !reconnect_if_broken(pg, err, errlen))
		return false;
	PGconn *c = pg->conn;
	int pid = PQbackendPID(c);
	if (run(pg, sql, 0, NULL, NULL, sql, err, errlen))
		return true;
	/* Sent and not answered: the server may have committed it all the same. */
	if (strcmp(sql, "COMMIT") == 0 && (pg->given_up || PQstatus(c) == CONNECTION_BAD))
		pg->doubt_pid = pid;
	return false;
}

/*
 * The batch's inserts go out in one pipeline: one round trip for the batch rather than one
 * per record, which would cap the records per second at the store's latency. On failure
 * the connection may be left in pipeline mode; the next BEGIN then reconnects.
 */
static bool pg_append(AuditStore *st, const StoredRecord *recs, size_t n, char *err, size_t errlen)
{
	PgStore *pg = pg_of(st);
	PGconn *c = pg->conn;
	if (!usable(pg, "insert", err, errlen))
		return false;
	if (!PQenterPipelineMode(c))
		return fail(c, "insert", err, errlen);
	size_t sent = 0;
	for (; sent < n; sent++) {
		const StoredRecord *r = &recs[sent];
		char seq[24];
		snprintf(seq, sizeof seq, "%lld", (long long)r->seq);
		const char *p[10] = {r->node, seq, r->time, r->kind, r->session_id, r->user_name, r->database,
				     r->body, r->prev_tag, r->tag};
		if (!PQsendQueryPrepared(c, INSERT_NAME, 10, p, NULL, NULL, 0))
			break;
	}
	if (sent < n || !PQpipelineSync(c))
		return fail(c, "insert", err, errlen);
	/* Each insert's result and a NULL after it, then the sync's; the first error is the batch's. */
	bool ok = true;
	char later[200]; /* errors after the first */
	for (size_t nulls = 0; nulls <= sent;) {
		if (!await_result(pg, "insert", ok ? err : later, ok ? errlen : sizeof later))
			return false;
		PGresult *r = PQgetResult(c);
		if (!r) {
			nulls++;
			continue;
		}
		ExecStatusType status = PQresultStatus(r);
		if (status == PGRES_PIPELINE_SYNC) {
			PQclear(r);
			break;
		}
		if (status != PGRES_COMMAND_OK && ok) {
			ok = false;
			char line[256];
			pg_conn_first_line(PQresultErrorMessage(r), line, sizeof line);
			snprintf(err, errlen, "audit store: insert: %s", line);
		}
		PQclear(r);
	}
	if (!PQexitPipelineMode(c))
		return ok ? fail(c, "insert", err, errlen) : false;
	return ok;
}

static bool pg_head(AuditStore *st, const char *node, const char *before, int64_t *seq, char *tag, char *err,
		    size_t errlen)
{
	const char *p[2] = {node, before};
	PGresult *r = NULL;
	if (!reconnect_if_broken(pg_of(st), err, errlen))
		return false;
	if (!run(pg_of(st),
		 before ? "SELECT seq, tag FROM audit_records WHERE node = $1 AND time < $2 ORDER BY seq DESC LIMIT 1"
			: "SELECT seq, tag FROM audit_records WHERE node = $1 ORDER BY seq DESC LIMIT 1",
		 before ? 2 : 1, p, &r, "head", err, errlen))
		return false;
	*seq = 0;
	tag[0] = 0;
	if (PQntuples(r) == 1) {
		*seq = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
		snprintf(tag, AUDIT_TAG_HEX, "%s", PQgetvalue(r, 0, 1));
	}
	PQclear(r);
	return true;
}

static bool pg_in_doubt(AuditStore *st) { return pg_of(st)->doubt_pid != 0; }

/*
 * A COMMIT in doubt has ended once its server process is gone: the connection it came on
 * was closed (reconnecting closes it), so the process exits when its transaction is over.
 * One still running the COMMIT may yet carry it out: it is waited for, not stopped (a commit
 * that is only slow must be able to finish). One not running anything never received the
 * COMMIT, or finished it and missed the close (a partition that lost both): it is
 * terminated rather than left to hold the writer until its TCP keepalive gives up.
 */
static bool pg_settle(AuditStore *st, const char *node, int64_t *seq, char *tag, char *err, size_t errlen)
{
	PgStore *pg = pg_of(st);
	if (!reconnect_if_broken(pg, err, errlen))
		return false;
	if (pg->doubt_pid) {
		char pid[16];
		snprintf(pid, sizeof pid, "%d", pg->doubt_pid);
		const char *p[1] = {pid};
		PGresult *r = NULL;
		if (!run(pg,
			 "SELECT state = 'active', CASE WHEN state <> 'active' THEN pg_terminate_backend(pid) END"
			 " FROM pg_stat_activity WHERE pid = $1",
			 1, p, &r, "settle", err, errlen))
			return false;
		bool running = PQntuples(r) > 0;
		bool active = running && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
		PQclear(r);
		if (running) {
			snprintf(err, errlen, "audit store: the server process %d of an unanswered COMMIT is still %s",
				 pg->doubt_pid, active ? "running it" : "there (terminated)");
			return false;
		}
	}
	if (!pg_head(st, node, NULL, seq, tag, err, errlen))
		return false;
	pg->doubt_pid = 0;
	return true;
}

static bool pg_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	char s[24];
	snprintf(s, sizeof s, "%lld", (long long)seq);
	const char *p[2] = {node, s};
	return run(pg_of(st), "DELETE FROM audit_records WHERE node = $1 AND seq <= $2", 2, p, NULL, "prune", err, errlen);
}

/*
 * Hands the rows to cb one at a time (single-row mode): verify and export walk the whole
 * trail, which must not have to fit in memory. A visitor that stops early gives the
 * connection up rather than reading the rest: the next call connects again. (Not PQcancel,
 * which has no timeout: against a store that stopped answering it would never return.)
 */
static bool pg_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	PgStore *pg = pg_of(st);
	char sql[1024];
	const char *binds[STORE_SCAN_BINDS];
	int nb = audit__scan_sql(f, '$', sql, sizeof sql, binds);
	if (!reconnect_if_broken(pg, err, errlen)) /* never called inside a transaction */
		return false;
	if (!PQsendQueryParams(pg->conn, sql, nb, NULL, binds, NULL, NULL, 0))
		return fail(pg->conn, "read", err, errlen);
	if (!PQsetSingleRowMode(pg->conn)) {
		pg->given_up = true; /* the query is under way all the same */
		return fail_with("read", "cannot read row by row", err, errlen);
	}
	bool ok = true, wanted = true;
	for (;;) {
		if (!await_result(pg, "read", err, errlen))
			return false;
		PGresult *r = PQgetResult(pg->conn);
		if (!r)
			break;
		ExecStatusType s = PQresultStatus(r);
		if (s == PGRES_SINGLE_TUPLE && wanted && ok) {
			StoredRecord rec = {
				.node = PQgetvalue(r, 0, 0), .seq = strtoll(PQgetvalue(r, 0, 1), NULL, 10),
				.time = PQgetvalue(r, 0, 2), .kind = PQgetvalue(r, 0, 3), .session_id = PQgetvalue(r, 0, 4),
				.user_name = PQgetvalue(r, 0, 5), .database = PQgetvalue(r, 0, 6), .body = PQgetvalue(r, 0, 7),
				.prev_tag = PQgetvalue(r, 0, 8), .tag = PQgetvalue(r, 0, 9),
			};
			if (!cb(&rec, arg)) {
				wanted = false;
				pg->given_up = true; /* its other rows are left unread */
			}
		} else if (s != PGRES_SINGLE_TUPLE && s != PGRES_TUPLES_OK && wanted && ok) {
			ok = fail_with("read", PQresultErrorMessage(r), err, errlen);
		}
		PQclear(r);
		if (pg->given_up)
			break;
	}
	return ok;
}

/* One index probe per node (a loose index scan of the primary key), not a walk of the trail. */
static bool pg_nodes(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	PGresult *r = NULL;
	if (!reconnect_if_broken(pg_of(st), err, errlen)) /* after a scan that stopped early */
		return false;
	if (!run(pg_of(st),
		 "WITH RECURSIVE n(node) AS (SELECT min(node) FROM audit_records UNION ALL"
		 " SELECT (SELECT min(node) FROM audit_records WHERE node > n.node) FROM n WHERE n.node IS NOT NULL)"
		 " SELECT node FROM n WHERE node IS NOT NULL",
		 0, NULL, &r, "read", err, errlen))
		return false;
	for (int i = 0; i < PQntuples(r); i++) {
		StoredRecord rec = {.node = PQgetvalue(r, i, 0)};
		if (!cb(&rec, arg))
			break;
	}
	PQclear(r);
	return true;
}

static const StoreOps pg_ops = {
	.close = pg_close,
	.exec = pg_exec,
	.append = pg_append,
	.in_doubt = pg_in_doubt,
	.settle = pg_settle,
	.head = pg_head,
	.delete_through = pg_delete_through,
	.scan = pg_scan,
	.nodes = pg_nodes,
};

/*
 * Creates what is missing of the schema. When its last object is there, so is the rest, and
 * nothing is run: CREATE INDEX, even IF NOT EXISTS, takes a share lock on the table (and
 * needs its owner), so a reader opening the store would wait for the writer's open batch,
 * and the writer's next batch would wait behind that reader.
 */
static bool ensure_schema(PgStore *pg, char *err, size_t errlen)
{
	PGresult *r = NULL;
	if (!run(pg, "SELECT to_regclass('audit_records_session_starts') IS NOT NULL", 0, NULL, &r, "schema", err,
		 errlen))
		return false;
	bool present = PQntuples(r) == 1 && strcmp(PQgetvalue(r, 0, 0), "t") == 0;
	PQclear(r);
	return present || run(pg, SCHEMA, 0, NULL, NULL, "schema", err, errlen);
}

AuditStore *audit__pg_open(const char *url, bool strict, int timeout_ms, char *err, size_t errlen)
{
	/* A store that stops answering must not hold the writer while records pile up. */
	PgStore *pg = xcalloc(1, sizeof *pg);
	pg->conn = pg_conn_open(url, "pgcordon-audit");
	pg->strict = strict;
	pg->timeout_ms = timeout_ms;
	if (PQstatus(pg->conn) != CONNECTION_OK) {
		fail(pg->conn, "connect", err, errlen);
	} else if (set_up(pg, err, errlen) && ensure_schema(pg, err, errlen) &&
		   prepare_insert(pg, err, errlen)) {
		AuditStore *st = xcalloc(1, sizeof *st);
		st->ops = &pg_ops;
		st->db = pg;
		return st;
	}
	PQfinish(pg->conn);
	free(pg);
	return NULL;
}
