/* Approval requests in the audit store's database (SQLite or PostgreSQL). */
#include "approval/store.h"

#include <errno.h>
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
	int silence_ms; /* audit.store_timeout: see pg_run */
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

/* Lost, or left with a command under way (its answer did not come): only good for PQfinish. */
static bool broken(PGconn *c) { return PQstatus(c) != CONNECTION_OK || PQtransactionStatus(c) == PQTRANS_ACTIVE; }

/* The SQLSTATE of this thread's last pg_run that the server refused ("" none). */
static __thread char pg_refused[6];

/*
 * Runs sql on c, waiting for the answer at most audit.store_timeout of silence; false (and
 * err) unless it succeeded. Its rows go to *out when out is not NULL.
 */
static bool pg_run(PGconn *c, const char *what, const char *sql, int n, const char *const *params, PGresult **out,
		   char *err, size_t errlen)
{
	char why[256];
	pg_refused[0] = 0;
	PGresult *r = pg_conn_exec(c, sql, n, params, S.silence_ms, why, sizeof why);
	if (!r) {
		snprintf(err, errlen, "approvals store: %s: %s", what, why);
		return false;
	}
	ExecStatusType st = PQresultStatus(r);
	bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
	if (!ok) {
		pg_conn_first_line(PQresultErrorMessage(r), why, sizeof why);
		snprintf(err, errlen, "approvals store: %s: %s", what, why);
		const char *code = PQresultErrorField(r, PG_DIAG_SQLSTATE);
		snprintf(pg_refused, sizeof pg_refused, "%s", code ? code : "");
	}
	if (ok && out)
		*out = r;
	else
		PQclear(r);
	return ok;
}

/*
 * With timeouts: a silent server or a lock on the table must not hold the API or the writer.
 * Nonblocking, for pg_run.
 */
static PGconn *pg_connect(char *err, size_t errlen)
{
	PGconn *c = pg_conn_open(S.url, "pgcordon-approvals");
	if (PQstatus(c) != CONNECTION_OK || PQsetnonblocking(c, 1) != 0) {
		snprintf(err, errlen, "approvals store: %s", PQerrorMessage(c));
		PQfinish(c);
		return NULL;
	}
	if (!pg_run(c, "settings", PG_CONN_LIMIT_LOCK_WAIT, 0, NULL, NULL, err, errlen)) {
		PQfinish(c);
		return NULL;
	}
	return c;
}

/*
 * Writes w. *hopeless: the store refused it for what it holds (a data exception or an
 * integrity constraint: SQLSTATE class 22 or 23), so the same write fails the same way.
 */
static bool pg_write(PGconn *c, const Write *w, bool *hopeless, char *err, size_t errlen)
{
	char now[AUDIT_TIME_LEN];
	audit_format_time(audit_now_us(), now);
	const char *p[5] = {w->id, w->node, w->status, now, w->body};
	const char *n[1] = {w->id};
	bool ok = pg_run(c, "write", "INSERT INTO approval_requests VALUES ($1, $2, $3, $4, $5)" UPSERT_TAIL, 5, p, NULL,
			 err, errlen) &&
		  pg_run(c, "notify", "SELECT pg_notify('" CHANNEL "', $1)", 1, n, NULL, err, errlen);
	*hopeless = !ok && (strncmp(pg_refused, "22", 2) == 0 || strncmp(pg_refused, "23", 2) == 0);
	return ok;
}

static json_t *pg_read(PGconn *c, const char *id, char *err, size_t errlen)
{
	const char *p[1] = {id};
	PGresult *r = NULL;
	if (!pg_run(c, "read", "SELECT body FROM approval_requests WHERE id = $1", 1, p, &r, err, errlen))
		return NULL;
	json_t *j = PQntuples(r) == 1 ? json_loads(PQgetvalue(r, 0, 0), 0, NULL) : NULL;
	PQclear(r);
	return j;
}

/* The requests worth keeping in memory, or NULL (err). */
static PGresult *pg_recent(PGconn *c, char *err, size_t errlen)
{
	char since[AUDIT_TIME_LEN];
	recent_since(since);
	const char *p[1] = {since};
	PGresult *r = NULL;
	return pg_run(c, "load", RECENT_SQL "$1", 1, p, &r, err, errlen) ? r : NULL;
}

/* After (re)connecting: what changed while no notification could arrive. */
static void pg_merge_recent(PGconn *c)
{
	char err[512];
	PGresult *r = pg_recent(c, err, sizeof err);
	for (int i = 0; r && i < PQntuples(r); i++) {
		json_t *j = json_loads(PQgetvalue(r, i, 0), 0, NULL);
		if (j) {
			approval__merge(j);
			json_decref(j);
		}
	}
	if (!r)
		log_event(LOG_WARN, "approvals_listen_failed", "error=\"%s\"", err);
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
			if (!c || !pg_run(c, "listen", "LISTEN " CHANNEL, 0, NULL, NULL, err, sizeof err)) {
				PQfinish(c);
				c = NULL;
				log_event(LOG_WARN, "approvals_listen_failed", "error=\"%s\"", err);
				struct timespec pause = {1, 0};
				nanosleep(&pause, NULL);
				continue;
			}
			pg_merge_recent(c);
		}
		struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
		if (broken(c) || poll(&pfd, 1, 200) < 0 || (pfd.revents && !PQconsumeInput(c))) {
			PQfinish(c); /* connected again above, and what was missed merged */
			c = NULL;
			continue;
		}
		PGnotify *n;
		while ((n = PQnotifies(c)) != NULL) {
			json_t *j = broken(c) ? NULL : pg_read(c, n->extra, err, sizeof err);
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

/* Writes w; *hopeless as for pg_write (a constraint, a type mismatch, too big). */
static bool sq_write(sqlite3 *db, const Write *w, bool *hopeless, char *err, size_t errlen)
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
	int rc = sqlite3_step(st);
	bool ok = rc == SQLITE_DONE;
	if (!ok)
		snprintf(err, errlen, "approvals store: %s", sqlite3_errmsg(db));
	rc &= 0xff; /* the primary code */
	*hopeless = !ok && (rc == SQLITE_CONSTRAINT || rc == SQLITE_MISMATCH || rc == SQLITE_TOOBIG);
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

/*
 * One try at writing w, (re)opening the store's connection as needed. *hopeless: the store
 * refused this write for what it holds, so trying again would only hold the writes behind it.
 */
static bool write_once(const Write *w, PGconn **pc, sqlite3 **db, bool *hopeless, char *err, size_t errlen)
{
	*hopeless = false;
	if (!S.pg) {
		if (!*db)
			*db = sq_open(err, errlen);
		return *db && sq_write(*db, w, hopeless, err, errlen);
	}
	if (!*pc)
		*pc = pg_connect(err, errlen);
	bool ok = *pc && pg_write(*pc, w, hopeless, err, errlen);
	if (!ok && *pc && broken(*pc)) {
		PQfinish(*pc);
		*pc = NULL;
	}
	return ok;
}

/* Waits ms, less if the store is stopping; returns whether it is. */
static bool pause_unless_stopping(int ms)
{
	struct timespec until = util_deadline(CLOCK_MONOTONIC, ms); /* a wall-clock step does not stretch it */
	pthread_mutex_lock(&S.mu);
	while (!S.stopping && pthread_cond_clockwait(&S.cond, &S.mu, CLOCK_MONOTONIC, &until) != ETIMEDOUT)
		;
	bool stopping = S.stopping;
	pthread_mutex_unlock(&S.mu);
	return stopping;
}

#define WRITE_TRIES_LOGGED 3  /* a write still failing after this many tries is logged */
#define WRITE_PAUSE_MAX_MS 5000

static void *write_main(void *arg)
{
	(void)arg;
	char err[512], q[600];
	PGconn *pc = NULL;
	sqlite3 *db = NULL;
	bool stop_given_up = false;
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
		/*
		 * A write is tried until it lands, in order, with growing pauses: given up, the
		 * request would be missing from the store for the other gateways, and for this one
		 * after a restart. Given up only when the store refuses it for its content, or when
		 * the gateway stops: after the logged number of tries, and once one write has been
		 * given up that way, one try each for the rest (a stop must not wait on a dead
		 * store for every write queued during the outage).
		 */
		int tries = 0, pause_ms = 200;
		bool ok = false, hopeless = false;
		while (!(ok = write_once(w, &pc, &db, &hopeless, err, sizeof err)) && !hopeless && !stop_given_up) {
			if (++tries == WRITE_TRIES_LOGGED)
				log_event(LOG_ERROR, "approvals_store_failed", "request=%s error=%s retrying=true", w->id,
					  log_quote(q, sizeof q, err));
			if (pause_unless_stopping(pause_ms) && tries >= WRITE_TRIES_LOGGED) {
				stop_given_up = true;
				break;
			}
			pause_ms = pause_ms * 2 < WRITE_PAUSE_MAX_MS ? pause_ms * 2 : WRITE_PAUSE_MAX_MS;
		}
		if (!ok)
			log_event(LOG_ERROR, "approvals_store_failed", "request=%s error=%s given_up=%s", w->id,
				  log_quote(q, sizeof q, err),
				  hopeless ? "\"the store refuses it\"" : "\"the gateway is stopping\"");
		else if (tries >= WRITE_TRIES_LOGGED)
			log_event(LOG_INFO, "approvals_store_recovered", "request=%s tries=%d", w->id, tries + 1);
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

/* The claims' connection (claim_mu held), connected again if it was lost or left busy; NULL: err. */
static PGconn *claims_connection(char *err, size_t errlen)
{
	if (S.claim_conn && broken(S.claim_conn)) {
		PQfinish(S.claim_conn);
		S.claim_conn = NULL;
	}
	if (!S.claim_conn)
		S.claim_conn = pg_connect(err, errlen);
	return S.claim_conn;
}

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
	char *body = claims_connection(err, errlen) ? json_dumps(decided, JSON_COMPACT) : NULL;
	if (body) {
		/*
		 * The whole decision, announced in the same transaction: if the answer is lost on the
		 * way back, the decision is made all the same and every gateway hears of it, this one
		 * included.
		 */
		char now[AUDIT_TIME_LEN];
		audit_format_time(audit_now_us(), now);
		const char *p[4] = {id, str(decided, "status"), now, body};
		PGresult *res = NULL;
		if (pg_run(S.claim_conn, "claim",
			   "WITH u AS (UPDATE approval_requests SET status = $2, updated = $3, body = $4 WHERE id = $1 AND"
			   " status = 'pending' RETURNING id), n AS (SELECT pg_notify('" CHANNEL "', id) FROM u)"
			   " SELECT (SELECT count(*) FROM u), (SELECT count(*) FROM n),"
			   " (SELECT count(*) FROM approval_requests WHERE id = $1)",
			   4, p, &res, err, errlen)) {
			/* Claimed, or not written yet (a request this gateway has just opened). */
			if (PQntuples(res) == 1 &&
			    (strcmp(PQgetvalue(res, 0, 0), "1") == 0 || strcmp(PQgetvalue(res, 0, 2), "0") == 0)) {
				out = CLAIM_TAKEN;
			} else if (PQntuples(res) == 1) {
				/*
				 * What the store holds, read anew: the statement's snapshot may predate the
				 * decision that beat this claim (its UPDATE waited on that row, then saw it).
				 */
				out = CLAIM_LOST;
				char rerr[300];
				*stored = pg_read(S.claim_conn, id, rerr, sizeof rerr);
			}
		} else if (broken(S.claim_conn)) {
			size_t n = strlen(err);
			snprintf(err + n, errlen - n, "; it may have been made"); /* sent, and no answer came */
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

void approval_store_overrule(const json_t *r, const json_t *claimed)
{
	if (!S.running || !S.pg)
		return;
	char *body = json_dumps(r, JSON_COMPACT), at[24], now[AUDIT_TIME_LEN], err[400] = "";
	snprintf(at, sizeof at, "%lld", (long long)json_integer_value(json_object_get(claimed, "decided_at_us")));
	audit_format_time(audit_now_us(), now);
	const char *p[6] = {str(r, "id"), str(r, "status"), now, body ? body : "", str(claimed, "status"), at};
	struct timespec until = util_deadline(CLOCK_MONOTONIC, CLAIM_QUEUE_WAIT_MS);
	bool ok = false;
	if (body && pthread_mutex_clocklock(&S.claim_mu, CLOCK_MONOTONIC, &until) == 0) {
		ok = claims_connection(err, sizeof err) &&
		     pg_run(S.claim_conn, "overrule",
			    "WITH u AS (UPDATE approval_requests SET status = $2, updated = $3, body = $4 WHERE id = $1 AND"
			    " status = $5 AND body::json ->> 'decided_at_us' = $6 RETURNING id)"
			    " SELECT pg_notify('" CHANNEL "', id) FROM u",
			    6, p, NULL, err, sizeof err);
		pthread_mutex_unlock(&S.claim_mu);
	}
	if (!ok) {
		char q[400];
		log_event(LOG_ERROR, "approvals_store_failed", "request=%s error=%s", str(r, "id"),
			  log_quote(q, sizeof q, err[0] ? err : "approvals store: the claims' connection stayed busy"));
	}
	free(body);
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
		PGresult *r = pg_run(c, "create", create_sql, 0, NULL, NULL, err, errlen) ? pg_recent(c, err, errlen) : NULL;
		bool ok = r != NULL;
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
	S.silence_ms = c->audit_store_timeout_ms;
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
