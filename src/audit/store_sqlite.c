/* The audit store in SQLite: a WAL-mode file outside the database, readable while written. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "audit/store.h"
#include "core/util.h"

/*
 * A SQLite store serves one gateway (one node; several share a PostgreSQL store), so seq
 * is the rowid: one B-tree fewer to update per record than a (node, seq) key. Files made
 * by earlier versions, keyed (node, seq), are read and written unchanged.
 */
static const char *const SCHEMA =
	"CREATE TABLE IF NOT EXISTS audit_records ("
	" seq INTEGER PRIMARY KEY, node TEXT NOT NULL, time TEXT NOT NULL, kind TEXT NOT NULL,"
	" session_id TEXT NOT NULL, user_name TEXT NOT NULL, database TEXT NOT NULL,"
	" body TEXT NOT NULL, prev_tag TEXT NOT NULL, tag TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS audit_records_session ON audit_records (session_id);"
	/* Partial: the session list reads session starts by time; statements do not pay for it. */
	"CREATE INDEX IF NOT EXISTS audit_records_session_starts ON audit_records (time) WHERE kind = 'session_start';";

typedef struct {
	sqlite3 *db;
	sqlite3_stmt *insert;
} Lite;

static bool fail(sqlite3 *db, const char *what, char *err, size_t errlen)
{
	snprintf(err, errlen, "audit store: %s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
	return false;
}

static void lite_close(AuditStore *st)
{
	Lite *l = st->db;
	sqlite3_finalize(l->insert);
	sqlite3_close(l->db);
	free(l);
	free(st);
}

static bool lite_exec(AuditStore *st, const char *sql, char *err, size_t errlen)
{
	Lite *l = st->db;
	if (sqlite3_exec(l->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		return fail(l->db, sql, err, errlen);
	return true;
}

static bool lite_insert(AuditStore *st, const StoredRecord *r, char *err, size_t errlen)
{
	Lite *l = st->db;
	sqlite3_stmt *q = l->insert;
	sqlite3_reset(q);
	sqlite3_bind_text(q, 1, r->node, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, r->seq);
	sqlite3_bind_text(q, 3, r->time, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 4, r->kind, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, r->session_id, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 6, r->user_name, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 7, r->database, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 8, r->body, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 9, r->prev_tag, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 10, r->tag, -1, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_reset(q);
	if (rc != SQLITE_DONE)
		return fail(l->db, "insert", err, errlen);
	return true;
}

/*
 * False (with err) when the newest record is another node's: a second gateway pointed at
 * the same SQLite file. (The newest only: the check must not read the whole file.)
 */
static bool only_node(sqlite3 *db, const char *node, char *err, size_t errlen)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "SELECT node FROM (SELECT node FROM audit_records ORDER BY rowid DESC LIMIT 1) WHERE node <> ?1",
			       -1, &q, NULL) != SQLITE_OK)
		return fail(db, "head", err, errlen);
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	bool found = sqlite3_step(q) == SQLITE_ROW;
	if (found)
		snprintf(err, errlen,
			 "audit store: this SQLite file holds the records of node '%s', not '%s': a SQLite store"
			 " serves one gateway (give each its own file, or share a PostgreSQL store)",
			 (const char *)sqlite3_column_text(q, 0), node);
	sqlite3_finalize(q);
	return !found;
}

static bool lite_head(AuditStore *st, const char *node, const char *before, int64_t *seq, char *tag, char *err,
		      size_t errlen)
{
	Lite *l = st->db;
	if (!before && !only_node(l->db, node, err, errlen))
		return false;
	sqlite3_stmt *q;
	const char *sql = before ? "SELECT seq, tag FROM audit_records WHERE node = ?1 AND time < ?2 ORDER BY seq DESC LIMIT 1"
				 : "SELECT seq, tag FROM audit_records WHERE node = ?1 ORDER BY seq DESC LIMIT 1";
	if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(l->db, "head", err, errlen);
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	if (before)
		sqlite3_bind_text(q, 2, before, -1, SQLITE_STATIC);
	*seq = 0;
	tag[0] = 0;
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		*seq = sqlite3_column_int64(q, 0);
		const char *t = (const char *)sqlite3_column_text(q, 1);
		snprintf(tag, AUDIT_TAG_HEX, "%s", t ? t : "");
	}
	sqlite3_finalize(q);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return fail(l->db, "head", err, errlen);
	return true;
}

static bool lite_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	Lite *l = st->db;
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(l->db, "DELETE FROM audit_records WHERE node = ?1 AND seq <= ?2", -1, &q, NULL) != SQLITE_OK)
		return fail(l->db, "prune", err, errlen);
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, 2, seq);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return fail(l->db, "prune", err, errlen);
	return true;
}

static const char *col(sqlite3_stmt *q, int i)
{
	const char *t = (const char *)sqlite3_column_text(q, i);
	return t ? t : "";
}

static bool lite_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	Lite *l = st->db;
	char sql[1024];
	const char *binds[STORE_SCAN_BINDS];
	int nb = audit__scan_sql(f, '?', sql, sizeof sql, binds);
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(l->db, "read", err, errlen);
	for (int i = 0; i < nb; i++)
		sqlite3_bind_text(q, i + 1, binds[i], -1, SQLITE_STATIC);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		StoredRecord r = {
			.node = col(q, 0), .seq = sqlite3_column_int64(q, 1), .time = col(q, 2), .kind = col(q, 3),
			.session_id = col(q, 4), .user_name = col(q, 5), .database = col(q, 6), .body = col(q, 7),
			.prev_tag = col(q, 8), .tag = col(q, 9),
		};
		if (!cb(&r, arg)) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return fail(l->db, "read", err, errlen);
	return true;
}

static const StoreOps lite_ops = {
	.close = lite_close,
	.exec = lite_exec,
	.insert = lite_insert,
	.head = lite_head,
	.delete_through = lite_delete_through,
	.scan = lite_scan,
};

AuditStore *audit__sqlite_open(const char *path, bool strict, char *err, size_t errlen)
{
	Lite *l = xcalloc(1, sizeof *l);
	if (sqlite3_open_v2(path, &l->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		fail(l->db, path, err, errlen);
		goto fail;
	}
	chmod(path, 0600); /* the trail holds statements and result rows */
	sqlite3_busy_timeout(l->db, 2000);
	/*
	 * A checkpoint copies the WAL into the file and, at synchronous=NORMAL, is the only
	 * fsync: one every ~40 MB instead of every 4 MB, and pages rewritten by several batches
	 * in between are copied once.
	 */
	if (sqlite3_exec(l->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, "PRAGMA wal_autocheckpoint=10000", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, strict ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK) {
		fail(l->db, path, err, errlen);
		goto fail;
	}
	if (sqlite3_prepare_v2(l->db,
			       "INSERT INTO audit_records (node, seq, time, kind, session_id, user_name, database, body,"
			       " prev_tag, tag) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
			       -1, &l->insert, NULL) != SQLITE_OK) {
		fail(l->db, path, err, errlen);
		goto fail;
	}
	AuditStore *st = xcalloc(1, sizeof *st);
	st->ops = &lite_ops;
	st->db = l;
	return st;
fail:
	sqlite3_close(l->db);
	free(l);
	return NULL;
}
