/* Approval requests in the audit store's database (SQLite or PostgreSQL). */
#include "approval/store.h"

#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit/audit.h"
#include "audit/pg_conn.h"
#include "core/log.h"
#include "core/util.h"

#define CHANNEL "pgcordon_approvals"

/* A write is applied unless another gateway already ended the request in the store. */
#define UPSERT_TAIL                                                                                              \
	" ON CONFLICT (id) DO UPDATE SET status = excluded.status, updated = excluded.updated, body = excluded.body" \
	" WHERE approval_requests.status = 'pending' OR approval_requests.status = excluded.status"

/* What a gateway keeps in memory: pending requests, and those changed in the last day. */
#define RECENT_SQL "SELECT body FROM approval_requests WHERE status = 'pending' OR updated >= "

static void recent_since(char since[AUDIT_TIME_LEN]) { audit_format_time(audit_now_us() - 86400LL * 1000000, since); }

/* Adds a stored request to what load() returns (a row that is not JSON is skipped). */
static void keep(json_t ***loaded, size_t *n, size_t *cap, const char *text)
{
	json_t *j = json_loads(text, 0, NULL);
	if (!j)
		return;
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*loaded = xrealloc(*loaded, *cap * sizeof **loaded);
	}
	(*loaded)[(*n)++] = j;
}

static const char *const create_sql =
	"CREATE TABLE IF NOT EXISTS approval_requests (id text PRIMARY KEY, node text NOT NULL,"
	" status text NOT NULL, updated text NOT NULL, body text NOT NULL)";

typedef struct Write {
	char *id, *node, *status, *body;
	struct Write *next;
} Write;

static struct {
	bool running;
	bool pg;
	char *url;       /* PostgreSQL conninfo */
	char *path;      /* SQLite file */
	char *node;
	pthread_t writer, listener;
	bool has_listener;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	bool stopping;
	Write *head, *tail;
	pthread_mutex_t claim_mu; /* one connection for the admin API's claims */
	PGconn *claim_conn;
} S = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER, .claim_mu = PTHREAD_MUTEX_INITIALIZER};

static const char *str(const json_t *r, const char *key)
{
	const char *s = json_string_value(json_object_get(r, key));
	return s ? s : "";
}

/* ---- PostgreSQL ---- */

/* With timeouts: a silent server or a lock on the table must not hold the API or the writer. */
static PGconn *pg_connect(char *err, size_t errlen)
{
	PGconn *c = pg_conn_open(S.url, "pgcordon-approvals");
	if (PQstatus(c) != CONNECTION_OK || !pg_conn_limit_lock_wait(c)) {
		snprintf(err, errlen, "approvals store: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	return c;
}

static bool pg_ok(PGresult *r, char *err, size_t errlen, const char *what)
{
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok)
		snprintf(err, errlen, "approvals store: %s: %s", what, PQresultErrorMessage(r));
	return ok;
}

static bool pg_write(PGconn *c, const Write *w, char *err, size_t errlen)
{
	char now[AUDIT_TIME_LEN];
	audit_format_time(audit_now_us(), now);
	const char *p[5] = {w->id, w->node, w->status, now, w->body};
	PGresult *r = PQexecParams(c, "INSERT INTO approval_requests VALUES ($1, $2, $3, $4, $5)" UPSERT_TAIL, 5, NULL, p,
				   NULL, NULL, 0);
	bool ok = pg_ok(r, err, errlen, "write");
	PQclear(r);
	if (ok) {
		const char *n[1] = {w->id};
		r = PQexecParams(c, "SELECT pg_notify('" CHANNEL "', $1)", 1, NULL, n, NULL, NULL, 0);
		ok = pg_ok(r, err, errlen, "notify");
		PQclear(r);
	}
	return ok;
}

static json_t *pg_read(PGconn *c, const char *id)
{
	const char *p[1] = {id};
	PGresult *r = PQexecParams(c, "SELECT body FROM approval_requests WHERE id = $1", 1, NULL, p, NULL, NULL, 0);
	json_t *j = NULL;
	if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
		j = json_loads(PQgetvalue(r, 0, 0), 0, NULL);
	PQclear(r);
	return j;
}

static PGresult *pg_recent(PGconn *c)
{
	char since[AUDIT_TIME_LEN];
	recent_since(since);
	const char *p[1] = {since};
	return PQexecParams(c, RECENT_SQL "$1", 1, NULL, p, NULL, NULL, 0);
}

/* After (re)connecting: what changed while no notification could arrive. */
static void pg_merge_recent(PGconn *c)
{
	PGresult *r = pg_recent(c);
	for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++) {
		json_t *j = json_loads(PQgetvalue(r, i, 0), 0, NULL);
		if (j) {
			approval__merge(j);
			json_decref(j);
		}
	}
	PQclear(r);
}

/* Other gateways' changes: LISTEN, and read each request named by a notification. */
static void *listen_main(void *arg)
{
	(void)arg;
	char err[512];
	PGconn *c = NULL;
	while (!__atomic_load_n(&S.stopping, __ATOMIC_ACQUIRE)) {
		if (!c) {
			c = pg_connect(err, sizeof err);
			PGresult *r = c ? PQexec(c, "LISTEN " CHANNEL) : NULL;
			if (!c || !pg_ok(r, err, sizeof err, "listen")) {
				PQclear(r);
				PQfinish(c);
				c = NULL;
				log_event(LOG_WARN, "approvals_listen_failed", "error=\"%s\"", err);
				struct timespec pause = {1, 0};
				nanosleep(&pause, NULL);
				continue;
			}
			PQclear(r);
			pg_merge_recent(c);
		}
		struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
		if (poll(&pfd, 1, 200) < 0 || (pfd.revents && !PQconsumeInput(c))) {
			PQfinish(c);
			c = NULL;
			continue;
		}
		PGnotify *n;
		while ((n = PQnotifies(c)) != NULL) {
			json_t *j = pg_read(c, n->extra);
			if (j) {
				approval__merge(j);
				json_decref(j);
			}
			PQfreemem(n);
		}
	}
	PQfinish(c);
	return NULL;
}

/* ---- SQLite ---- */

static bool sq_write(sqlite3 *db, const Write *w, char *err, size_t errlen)
{
	sqlite3_stmt *st;
	char now[AUDIT_TIME_LEN];
	audit_format_time(audit_now_us(), now);
	if (sqlite3_prepare_v2(db, "INSERT INTO approval_requests VALUES (?1, ?2, ?3, ?4, ?5)" UPSERT_TAIL, -1, &st,
			       NULL) != SQLITE_OK) {
		snprintf(err, errlen, "approvals store: %s", sqlite3_errmsg(db));
		return false;
	}
	const char *v[5] = {w->id, w->node, w->status, now, w->body};
	for (int i = 0; i < 5; i++)
		sqlite3_bind_text(st, i + 1, v[i], -1, SQLITE_STATIC);
	bool ok = sqlite3_step(st) == SQLITE_DONE;
	if (!ok)
		snprintf(err, errlen, "approvals store: %s", sqlite3_errmsg(db));
	sqlite3_finalize(st);
	return ok;
}

static sqlite3 *sq_open(char *err, size_t errlen)
{
	sqlite3 *db = NULL;
	if (sqlite3_open_v2(S.path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL) !=
	    SQLITE_OK) {
		snprintf(err, errlen, "approvals store %s: %s", S.path, db ? sqlite3_errmsg(db) : "cannot open");
		sqlite3_close(db);
		return NULL;
	}
	sqlite3_busy_timeout(db, 5000);
	return db;
}

/* ---- the writer ---- */

static void free_write(Write *w)
{
	free(w->id);
	free(w->node);
	free(w->status);
	free(w->body);
	free(w);
}

static void *write_main(void *arg)
{
	(void)arg;
	char err[512];
	PGconn *pc = NULL;
	sqlite3 *db = NULL;
	for (;;) {
		pthread_mutex_lock(&S.mu);
		while (!S.head && !S.stopping)
			pthread_cond_wait(&S.cond, &S.mu);
		Write *w = S.head;
		if (w) {
			S.head = w->next;
			if (!S.head)
				S.tail = NULL;
		}
		pthread_mutex_unlock(&S.mu);
		if (!w)
			break; /* stopping, and everything is written */
		bool ok = false;
		for (int attempt = 0; attempt < 3 && !ok; attempt++) {
			if (S.pg) {
				if (!pc)
					pc = pg_connect(err, sizeof err);
				ok = pc && pg_write(pc, w, err, sizeof err);
				if (!ok && pc && PQstatus(pc) != CONNECTION_OK) {
					PQfinish(pc);
					pc = NULL;
				}
			} else {
				if (!db)
					db = sq_open(err, sizeof err);
				ok = db && sq_write(db, w, err, sizeof err);
			}
			if (!ok) {
				struct timespec pause = {0, 200 * 1000000L};
				nanosleep(&pause, NULL);
			}
		}
		if (!ok)
			log_event(LOG_ERROR, "approvals_store_failed", "request=%s error=\"%s\"", w->id, err);
		free_write(w);
	}
	PQfinish(pc);
	sqlite3_close(db);
	return NULL;
}

void approval_store_put(const json_t *r)
{
	if (!S.running)
		return;
	char *body = json_dumps(r, JSON_COMPACT);
	if (!body)
		return;
	Write *w = xcalloc(1, sizeof *w);
	w->id = xstrdup(str(r, "id"));
	w->node = xstrdup(str(r, "node"));
	w->status = xstrdup(str(r, "status"));
	w->body = body;
	pthread_mutex_lock(&S.mu);
	if (S.tail)
		S.tail->next = w;
	else
		S.head = w;
	S.tail = w;
	pthread_cond_signal(&S.cond);
	pthread_mutex_unlock(&S.mu);
}

bool approval_store_shared(void) { return S.running && S.pg; }

ApprovalClaim approval_store_claim(const json_t *decided, int wait_ms, json_t **stored, char *err, size_t errlen)
{
	*stored = NULL;
	if (!S.running || !S.pg)
		return CLAIM_TAKEN; /* one gateway: its memory is the truth */
	const char *id = str(decided, "id");
	struct timespec until = util_deadline(CLOCK_MONOTONIC, wait_ms);
	ApprovalClaim out = CLAIM_FAILED;
	if ((wait_ms > 0 ? pthread_mutex_clocklock(&S.claim_mu, CLOCK_MONOTONIC, &until)
			 : pthread_mutex_trylock(&S.claim_mu)) != 0) {
		if (wait_ms > 0)
			snprintf(err, errlen, "approvals store: the claim before this one has waited on it for over %d ms",
				 wait_ms);
		else
			snprintf(err, errlen, "approvals store: another claim is under way");
		goto failed;
	}
	if (S.claim_conn && PQstatus(S.claim_conn) != CONNECTION_OK) {
		PQfinish(S.claim_conn);
		S.claim_conn = NULL;
	}
	if (!S.claim_conn)
		S.claim_conn = pg_connect(err, errlen);
	char *body = S.claim_conn ? json_dumps(decided, JSON_COMPACT) : NULL;
	if (body) {
		/*
		 * The whole decision, announced in the same transaction: if the answer is lost on the
		 * way back, the decision is made all the same and every gateway hears of it, this one
		 * included. The third column is what the store holds when the claim is lost.
		 */
		char now[AUDIT_TIME_LEN];
		audit_format_time(audit_now_us(), now);
		const char *p[4] = {id, str(decided, "status"), now, body};
		PGresult *res = PQexecParams(
			S.claim_conn,
			"WITH u AS (UPDATE approval_requests SET status = $2, updated = $3, body = $4 WHERE id = $1 AND"
			" status = 'pending' RETURNING id), n AS (SELECT pg_notify('" CHANNEL "', id) FROM u)"
			" SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n),"
			" (SELECT body FROM approval_requests WHERE id = $1)",
			4, NULL, p, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
			/* Claimed, or not written yet (a request this gateway has just opened). */
			if (strcmp(PQgetvalue(res, 0, 0), "1") == 0 || PQgetisnull(res, 0, 2)) {
				out = CLAIM_TAKEN;
			} else {
				out = CLAIM_LOST;
				*stored = json_loads(PQgetvalue(res, 0, 2), 0, NULL);
			}
		} else {
			const char *e = res ? PQresultErrorMessage(res) : PQerrorMessage(S.claim_conn);
			snprintf(err, errlen, "approvals store: %s%.*s",
				 PQstatus(S.claim_conn) == CONNECTION_OK ? "" : "no answer, the claim may have been made: ",
				 (int)strcspn(e, "\n"), e);
		}
		PQclear(res);
		free(body);
	} else if (S.claim_conn) {
		snprintf(err, errlen, "approvals store: the request %s cannot be written as JSON", id);
	}
	pthread_mutex_unlock(&S.claim_mu);
	if (out != CLAIM_FAILED)
		return out;
failed:;
	char q[400];
	log_event(LOG_WARN, "approvals_claim_failed", "request=%s error=%s", id, log_quote(q, sizeof q, err));
	return CLAIM_FAILED;
}

/* ---- start and stop ---- */

/* Loads what is worth keeping; this gateway's waits died with its previous run. */
static bool load(json_t ***loaded, size_t *n, char *err, size_t errlen)
{
	size_t cap = 0;
	*loaded = NULL;
	*n = 0;
	if (S.pg) {
		PGconn *c = pg_connect(err, errlen);
		if (!c)
			return false;
		PGresult *r = PQexec(c, create_sql);
		bool ok = pg_ok(r, err, errlen, "create");
		PQclear(r);
		r = ok ? pg_recent(c) : NULL;
		ok = ok && pg_ok(r, err, errlen, "load");
		for (int i = 0; ok && i < PQntuples(r); i++)
			keep(loaded, n, &cap, PQgetvalue(r, i, 0));
		PQclear(r);
		PQfinish(c);
		return ok;
	}
	sqlite3 *db = sq_open(err, errlen);
	if (!db)
		return false;
	char *e = NULL;
	if (sqlite3_exec(db, create_sql, NULL, NULL, &e) != SQLITE_OK) {
		snprintf(err, errlen, "approvals store %s: %s", S.path, e ? e : "cannot create the table");
		sqlite3_free(e);
		sqlite3_close(db);
		return false;
	}
	sqlite3_stmt *st;
	bool ok = sqlite3_prepare_v2(db, RECENT_SQL "?1", -1, &st, NULL) == SQLITE_OK;
	if (ok) {
		char since[AUDIT_TIME_LEN];
		recent_since(since);
		sqlite3_bind_text(st, 1, since, -1, SQLITE_STATIC);
		while (sqlite3_step(st) == SQLITE_ROW)
			keep(loaded, n, &cap, (const char *)sqlite3_column_text(st, 0));
		sqlite3_finalize(st);
	} else {
		snprintf(err, errlen, "approvals store %s: %s", S.path, sqlite3_errmsg(db));
	}
	sqlite3_close(db);
	return ok;
}

bool approval_store_start(const Config *c, json_t ***loaded, size_t *n, char *err, size_t errlen)
{
	*loaded = NULL;
	*n = 0;
	if (!c->audit_store)
		return true;
	S.pg = strncmp(c->audit_store, "sqlite:", 7) != 0;
	free(S.url);
	free(S.path);
	free(S.node);
	S.url = S.pg ? xstrdup(c->audit_store) : NULL;
	S.path = S.pg ? NULL : xstrdup(c->audit_store + 7);
	S.node = xstrdup(c->audit_node);
	if (!load(loaded, n, err, errlen))
		return false;
	S.stopping = false;
	S.running = true;
	if (pthread_create(&S.writer, NULL, write_main, NULL) != 0) {
		snprintf(err, errlen, "approvals store: cannot start its writer thread");
		S.running = false;
		return false;
	}
	pthread_setname_np(S.writer, "pgc-approvals");
	S.has_listener = S.pg && pthread_create(&S.listener, NULL, listen_main, NULL) == 0;
	if (S.has_listener)
		pthread_setname_np(S.listener, "pgc-approval-ln");
	/* A wait-mode request of this gateway still pending has lost its client with the restart. */
	for (size_t i = 0; i < *n; i++) {
		json_t *r = (*loaded)[i];
		if (strcmp(str(r, "status"), "pending") == 0 && strcmp(str(r, "mode"), "wait") == 0 &&
		    strcmp(str(r, "node"), S.node) == 0) {
			json_object_set_new(r, "status", json_string("cancelled"));
			json_object_set_new(r, "decision_reason", json_string("the gateway restarted"));
			approval_store_put(r);
		}
	}
	return true;
}

void approval_store_stop(void)
{
	if (!S.running)
		return;
	pthread_mutex_lock(&S.mu);
	__atomic_store_n(&S.stopping, true, __ATOMIC_RELEASE);
	pthread_cond_signal(&S.cond);
	pthread_mutex_unlock(&S.mu);
	pthread_join(S.writer, NULL);
	if (S.has_listener)
		pthread_join(S.listener, NULL);
	S.has_listener = false;
	pthread_mutex_lock(&S.claim_mu);
	PQfinish(S.claim_conn);
	S.claim_conn = NULL;
	pthread_mutex_unlock(&S.claim_mu);
	S.running = false;
}
