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
} PgStore;

static PGconn *conn_of(const AuditStore *st) { return ((PgStore *)st->db)->conn; }

static bool fail(PGconn *c, const char *what, char *err, size_t errlen)
{
	char msg[300];
	snprintf(msg, sizeof msg, "%s", c ? PQerrorMessage(c) : "out of memory");
	size_t n = strlen(msg);
	while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' '))
		msg[--n] = 0;
	snprintf(err, errlen, "audit store: %s: %s", what, msg);
	return false;
}

/* Runs a command; result rows (if any) go to *out when out is not NULL. */
static bool run(PGconn *c, const char *sql, int n, const char *const *params, PGresult **out, const char *what,
		char *err, size_t errlen)
{
	PGresult *r = n ? PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0) : PQexec(c, sql);
	ExecStatusType s = PQresultStatus(r);
	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK) {
		PQclear(r);
		return fail(c, what, err, errlen);
	}
	if (out)
		*out = r;
	else
		PQclear(r);
	return true;
}

/* What each connection to the store is set up with, at open and after a reconnect. */
static bool setup(PGconn *c, bool strict, char *err, size_t errlen)
{
	/* Default mode may lose the last commits if the store's host crashes; strict may not. */
	if (!run(c, strict ? "SET synchronous_commit = on" : "SET synchronous_commit = off", 0, NULL, NULL, "settings",
		 err, errlen))
		return false;
	/*
	 * A lock someone holds on the table must not hold the writer: waiting, it would let
	 * statements run on unrecorded while their records pile up. The batch fails instead, and
	 * audit.on_failure applies.
	 */
	if (!pg_conn_limit_lock_wait(c))
		return fail(c, "settings", err, errlen);
	PGresult *r = PQprepare(c, INSERT_NAME, INSERT_SQL, 10, NULL);
	bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
	PQclear(r);
	return ok || fail(c, "prepare", err, errlen);
}

static void pg_close(AuditStore *st)
{
	PQfinish(conn_of(st));
	free(st->db);
	free(st);
}

static bool pg_exec(AuditStore *st, const char *sql, char *err, size_t errlen)
{
	PGconn *c = conn_of(st);
	/* Lost, or left in a pipeline by a batch that failed half-way: the writer reconnects. */
	if (PQstatus(c) == CONNECTION_BAD || PQpipelineStatus(c) != PQ_PIPELINE_OFF) {
		PQreset(c);
		if (PQstatus(c) != CONNECTION_OK)
			return fail(c, "connect", err, errlen);
		if (!setup(c, ((PgStore *)st->db)->strict, err, errlen))
			return false;
	}
	return run(c, sql, 0, NULL, NULL, sql, err, errlen);
}

/*
 * The batch's inserts go out in one pipeline: one round trip for the batch rather than one
 * per record, which would cap the records per second at the store's latency. On failure
 * the connection may be left in pipeline mode; pg_exec then resets it.
 */
static bool pg_append(AuditStore *st, const StoredRecord *recs, size_t n, char *err, size_t errlen)
{
	PGconn *c = conn_of(st);
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
	for (size_t nulls = 0; nulls <= sent;) {
		PGresult *r = PQgetResult(c);
		if (!r) {
			nulls++;
			if (PQstatus(c) == CONNECTION_BAD)
				return ok ? fail(c, "insert", err, errlen) : false;
			continue;
		}
		ExecStatusType status = PQresultStatus(r);
		if (status == PGRES_PIPELINE_SYNC) {
			PQclear(r);
			break;
		}
		if (status != PGRES_COMMAND_OK && ok) {
			ok = false;
			const char *m = PQresultErrorMessage(r);
			snprintf(err, errlen, "audit store: insert: %.*s", (int)strcspn(m, "\n"), m);
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
	if (!run(conn_of(st),
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

static bool pg_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	char s[24];
	snprintf(s, sizeof s, "%lld", (long long)seq);
	const char *p[2] = {node, s};
	return run(conn_of(st), "DELETE FROM audit_records WHERE node = $1 AND seq <= $2", 2, p, NULL, "prune", err, errlen);
}

static bool pg_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	char sql[1024];
	const char *binds[STORE_SCAN_BINDS];
	int nb = audit__scan_sql(f, '$', sql, sizeof sql, binds);
	PGresult *r = NULL;
	if (!run(conn_of(st), sql, nb, binds, &r, "read", err, errlen))
		return false;
	for (int i = 0; i < PQntuples(r); i++) {
		StoredRecord rec = {
			.node = PQgetvalue(r, i, 0), .seq = strtoll(PQgetvalue(r, i, 1), NULL, 10), .time = PQgetvalue(r, i, 2),
			.kind = PQgetvalue(r, i, 3), .session_id = PQgetvalue(r, i, 4), .user_name = PQgetvalue(r, i, 5),
			.database = PQgetvalue(r, i, 6), .body = PQgetvalue(r, i, 7), .prev_tag = PQgetvalue(r, i, 8),
			.tag = PQgetvalue(r, i, 9),
		};
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
	.head = pg_head,
	.delete_through = pg_delete_through,
	.scan = pg_scan,
};

AuditStore *audit__pg_open(const char *url, bool strict, char *err, size_t errlen)
{
	/* A store that stops answering must not hold the writer while records pile up. */
	PGconn *c = pg_conn_open(url, "pgcordon-audit");
	if (PQstatus(c) != CONNECTION_OK) {
		fail(c, "connect", err, errlen);
		PQfinish(c);
		return NULL;
	}
	if (!run(c, SCHEMA, 0, NULL, NULL, "schema", err, errlen) || !setup(c, strict, err, errlen)) {
		PQfinish(c);
		return NULL;
	}
	PgStore *pg = xcalloc(1, sizeof *pg);
	pg->conn = c;
	pg->strict = strict;
	AuditStore *st = xcalloc(1, sizeof *st);
	st->ops = &pg_ops;
	st->db = pg;
	return st;
}
