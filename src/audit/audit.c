/* The audit writer: per-worker queues, one thread, batched chained commits, retention. */
#include "audit/audit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "audit/chain.h"
#include "audit/store.h"
#include "core/log.h"
#include "core/util.h"

#define FLUSH_INTERVAL_MS 20      /* default mode: how long an event may wait to be written */
#define RETRY_INTERVAL_MS 500     /* after a failed commit */
#define PENDING_MAX 200000        /* events held while the store is down; older ones are dropped */
#define HEAD_LOG_INTERVAL_S 60
#define EVENT_KIND 24
#define EVENT_STRINGS 256         /* room for session id, user and database in a reusable event */
#define POOL_MAX 8192             /* reusable events kept per worker queue */
#define POOL_BYTES_MAX (8u << 20) /* and their bodies' bytes */
#define POOL_BODY_MAX 16384       /* an event with a larger body is freed, not reused */

typedef struct Event {
	char kind[EVENT_KIND];
	const char *session_id, *user, *database; /* in strings, or NULL */
	int64_t time_us;
	char *body; /* JSON text */
	size_t body_len;
	int q;
	uint64_t ticket;
	struct Event *next;
	size_t body_cap; /* body's allocated size when it may be reused (audit_buffer), else 0 */
	bool standard;   /* strings has EVENT_STRINGS bytes */
	char strings[];  /* one allocation per event */
} Event;

/* Where the chain stands: the last record written and the key of the next. */
typedef struct {
	int64_t seq;
	char tag[AUDIT_TAG_HEX];
	uint8_t key[AUDIT_KEY_LEN];
} ChainState;

typedef struct {
	pthread_mutex_t mu;
	Event *head, *tail;
	uint64_t submitted;
	size_t count; /* queued now */
	/*
	 * Events the writer is done with, handed back so that the thread that allocated them
	 * frees them: glibc frees memory of another thread's arena under that arena's lock,
	 * and the writer freeing every event contended with the workers' own mallocs.
	 */
	Event *garbage;
	uint64_t durable; /* atomic */
	/*
	 * A worker's queue gets its committed events back for reuse, with their bodies: one
	 * list, spliced in without walking it (its events are cold in the worker's cache), and
	 * no malloc or free per record. Freeing a batch of several hundred events at once had
	 * also overflowed malloc's per-thread cache, sending every malloc down its slow path.
	 */
	Event *reuse, *reuse_tail; /* handed back by the writer, under mu */
	size_t nreuse, reuse_bytes;
	Event *pool;     /* the worker's own (no lock): ready for the next records */
	size_t npool, pool_bytes;
	Event *reserved; /* taken by audit_buffer for the record being built */
} Queue;

static struct {
	bool started;
	bool strict;
	pthread_t thread;
	pthread_mutex_t mu; /* guards stopping and wake with cond */
	pthread_cond_t cond;
	bool stopping;
	bool wake;
	Queue *queues;
	int nqueues;
	AuditStore *st;
	char *node;
	uint8_t first_key[AUDIT_KEY_LEN];
	ChainState chain; /* advanced only by committed transactions */
	int64_t retention_s;
	int healthy; /* atomic */
	uint64_t dropped;
	AuditDurableFn cb;
	void *cb_arg;
} W = {.healthy = 1};

bool audit_enabled(void) { return W.started; }
bool audit_is_strict(void) { return W.strict; }
bool audit_store_healthy(void) { return __atomic_load_n(&W.healthy, __ATOMIC_ACQUIRE) != 0; }
int audit_other_queue(void) { return W.nqueues - 1; }
uint64_t audit_durable(int q) { return __atomic_load_n(&W.queues[q].durable, __ATOMIC_ACQUIRE); }

int64_t audit_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void audit_format_time(int64_t us, char out[AUDIT_TIME_LEN])
{
	/* The writer formats one time per record: keep the date of the last second. */
	static __thread int64_t cached_s = INT64_MIN;
	static __thread char cached[64];
	int64_t sec = us / 1000000, frac = us % 1000000;
	if (frac < 0) {
		sec--;
		frac += 1000000;
	}
	if (sec != cached_s) {
		time_t t = (time_t)sec;
		struct tm tm;
		gmtime_r(&t, &tm);
		snprintf(cached, sizeof cached, "%04d-%02d-%02dT%02d:%02d:%02d.", tm.tm_year + 1900, tm.tm_mon + 1,
			 tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
		cached_s = sec;
	}
	size_t n = strlen(cached);
	if (n > AUDIT_TIME_LEN - 8)
		n = AUDIT_TIME_LEN - 8; /* a year no clock will show; never overflow out */
	memcpy(out, cached, n);
	for (int i = 5; i >= 0; i--) {
		out[n + (size_t)i] = (char)('0' + frac % 10);
		frac /= 10;
	}
	out[n + 6] = 'Z';
	out[n + 7] = 0;
}

static void event_free(Event *e)
{
	free(e->body);
	free(e);
}

static void free_events(Event *e)
{
	while (e) {
		Event *next = e->next;
		event_free(e);
		e = next;
	}
}

/* Only a worker's own queue reuses events: the last queue is shared by other threads. */
static bool reuses(int q) { return q < W.nqueues - 1; }

static bool reusable(const Event *e) { return e->standard && e->body_cap && e->body_cap <= POOL_BODY_MAX; }

static Event *event_new_standard(void)
{
	Event *e = xmalloc(sizeof *e + EVENT_STRINGS);
	e->standard = true;
	e->body = NULL;
	e->body_cap = 0;
	return e;
}

char *audit_buffer(int q, size_t need, size_t *cap)
{
	if (!W.started || !reuses(q)) {
		*cap = need;
		return xmalloc(need);
	}
	Queue *qu = &W.queues[q];
	Event *e = qu->reserved;
	if (e) {
		/* The last buffer was never submitted: it is its taker's now, not the event's. */
		e->body = NULL;
		e->body_cap = 0;
	} else if (qu->pool) {
		e = qu->pool;
		qu->pool = e->next;
		qu->npool--;
		qu->pool_bytes -= e->body_cap;
	} else {
		e = event_new_standard();
	}
	if (e->body_cap < need) {
		e->body = xrealloc(e->body, need);
		e->body_cap = need;
	}
	qu->reserved = e;
	*cap = e->body_cap;
	return e->body;
}

/* Takes what the writer handed back: reusable events into the pool, the rest freed. */
static void take_back(int q, Event *garbage, Event *reuse, Event *reuse_tail, size_t nreuse, size_t bytes)
{
	free_events(garbage);
	if (!reuse)
		return;
	Queue *qu = &W.queues[q];
	if (qu->npool + nreuse > POOL_MAX || qu->pool_bytes + bytes > POOL_BYTES_MAX) {
		free_events(reuse); /* after a burst: keep the pool bounded */
		return;
	}
	reuse_tail->next = qu->pool;
	qu->pool = reuse;
	qu->npool += nreuse;
	qu->pool_bytes += bytes;
}

uint64_t audit_submit(int q, const char *kind, const char *session_id, const char *user, const char *database,
		      char *body)
{
	return audit_submit_at(q, audit_now_us(), kind, session_id, user, database, body, body ? strlen(body) : 0, 0);
}

uint64_t audit_submit_at(int q, int64_t time_us, const char *kind, const char *session_id, const char *user,
			 const char *database, char *body, size_t body_len, size_t body_cap)
{
	if (!W.started) {
		free(body);
		return 0;
	}
	size_t ls = session_id ? strlen(session_id) + 1 : 0, lu = user ? strlen(user) + 1 : 0,
	       ld = database ? strlen(database) + 1 : 0, lk = strnlen(kind, EVENT_KIND - 1);
	Queue *qu = &W.queues[q];
	Event *e = NULL, *reserved = reuses(q) ? qu->reserved : NULL;
	if (reserved) {
		qu->reserved = NULL;
		reserved->body = NULL; /* body (from audit_buffer, perhaps grown since) comes below */
		reserved->body_cap = 0;
	}
	if (ls + lu + ld > EVENT_STRINGS) {
		e = xmalloc(sizeof *e + ls + lu + ld);
		e->standard = false;
		if (reserved) {
			reserved->next = qu->pool;
			qu->pool = reserved;
			qu->npool++;
		}
	} else if (reserved) {
		e = reserved;
	} else if (reuses(q) && qu->pool) {
		e = qu->pool;
		qu->pool = e->next;
		qu->npool--;
		qu->pool_bytes -= e->body_cap;
		free(e->body); /* a body not built in it: this one brings its own */
	} else {
		e = event_new_standard();
	}
	memcpy(e->kind, kind, lk);
	e->kind[lk] = 0;
	char *p = e->strings;
	e->session_id = session_id ? memcpy(p, session_id, ls) : NULL;
	p += ls;
	e->user = user ? memcpy(p, user, lu) : NULL;
	p += lu;
	e->database = database ? memcpy(p, database, ld) : NULL;
	e->time_us = time_us;
	e->body = body;
	e->body_len = body_len;
	e->body_cap = body_cap;
	e->q = q;
	e->next = NULL;
	pthread_mutex_lock(&qu->mu);
	uint64_t ticket = e->ticket = ++qu->submitted; /* e belongs to the writer once unlocked */
	if (qu->tail)
		qu->tail->next = e;
	else
		qu->head = e;
	qu->tail = e;
	qu->count++;
	Event *garbage = qu->garbage, *reuse = qu->reuse, *reuse_tail = qu->reuse_tail;
	size_t nreuse = qu->nreuse, reuse_bytes = qu->reuse_bytes;
	qu->garbage = qu->reuse = qu->reuse_tail = NULL;
	qu->nreuse = qu->reuse_bytes = 0;
	pthread_mutex_unlock(&qu->mu);
	take_back(q, garbage, reuse, reuse_tail, nreuse, reuse_bytes);
	if (W.strict) {
		/* Group commit: the writer starts the next batch as soon as it is free. */
		pthread_mutex_lock(&W.mu);
		W.wake = true;
		pthread_cond_signal(&W.cond);
		pthread_mutex_unlock(&W.mu);
	}
	return ticket;
}


/* A batch's records as the store takes them; reused from batch to batch (writer thread only). */
typedef struct {
	StoredRecord *recs;
	char (*times)[AUDIT_TIME_LEN];
	char (*tags)[AUDIT_TAG_HEX];
	size_t cap;
	char prev[AUDIT_TAG_HEX]; /* the tag before the batch (the chain state moves on before the store sees it) */
} Scratch;

static Scratch S;

static void scratch_reserve(size_t n)
{
	if (n <= S.cap)
		return;
	size_t cap = S.cap ? S.cap : 256;
	while (cap < n)
		cap *= 2;
	S.recs = xrealloc(S.recs, cap * sizeof *S.recs);
	S.times = xrealloc(S.times, cap * sizeof *S.times);
	S.tags = xrealloc(S.tags, cap * sizeof *S.tags);
	S.cap = cap;
}

/* Chains record i of the scratch after the chain copy c and advances c. */
static void chain_record(ChainState *c, size_t i, const char *kind, const char *session_id, const char *user,
			 const char *database, int64_t time_us, const char *body, size_t body_len)
{
	audit_format_time(time_us, S.times[i]);
	if (i == 0)
		memcpy(S.prev, c->tag, AUDIT_TAG_HEX);
	StoredRecord *r = &S.recs[i];
	*r = (StoredRecord){
		.node = W.node, .seq = c->seq + 1, .time = S.times[i], .kind = kind,
		.session_id = session_id ? session_id : "", .user_name = user ? user : "",
		.database = database ? database : "", .body = body, .body_len = body_len,
		.prev_tag = i ? S.tags[i - 1] : S.prev, .tag = S.tags[i],
	};
	chain_tag(c->key, r, S.tags[i]);
	c->seq++;
	chain_next_key(c->key);
}

/* The chain after the last record chained into the scratch (its tag is in the scratch). */
static void chain_settle(ChainState *c, size_t n)
{
	if (n)
		memcpy(c->tag, S.tags[n - 1], AUDIT_TAG_HEX);
}

/* Writes the batch in one transaction. On failure nothing of it counts. */
static bool write_batch(Event *batch, size_t n, char *err, size_t errlen)
{
	ChainState c = W.chain;
	scratch_reserve(n);
	size_t i = 0;
	for (Event *e = batch; e && i < n; e = e->next, i++)
		chain_record(&c, i, e->kind, e->session_id, e->user, e->database, e->time_us, e->body, e->body_len);
	chain_settle(&c, i);
	if (!store_begin(W.st, err, errlen))
		return false;
	if (!store_append(W.st, S.recs, i, err, errlen) || !store_commit(W.st, err, errlen)) {
		store_rollback(W.st);
		return false;
	}
	W.chain = c;
	return true;
}

/* Deletes records older than the retention and chains a "prune" record saying so. */
static void prune(void)
{
	char err[300], cutoff[AUDIT_TIME_LEN], q[300];
	int64_t through;
	char through_tag[AUDIT_TAG_HEX];
	audit_format_time(audit_now_us() - W.retention_s * 1000000, cutoff);
	if (!store_last_before(W.st, W.node, cutoff, &through, through_tag, err, sizeof err)) {
		log_event(LOG_ERROR, "audit_prune_failed", "error=%s", log_quote(q, sizeof q, err));
		return;
	}
	if (through == 0 || through >= W.chain.seq)
		return; /* nothing old enough, or it would remove the head itself */
	json_t *body = json_pack("{sI sI ss ss}", "through_seq", (json_int_t)through, "first_seq", (json_int_t)through + 1,
				 "through_tag", through_tag, "cutoff", cutoff);
	char *text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	ChainState c = W.chain;
	scratch_reserve(1);
	chain_record(&c, 0, "prune", NULL, NULL, NULL, audit_now_us(), text, strlen(text));
	chain_settle(&c, 1);
	bool ok = store_begin(W.st, err, sizeof err);
	if (ok) {
		ok = store_delete_through(W.st, W.node, through, err, sizeof err) &&
		     store_append(W.st, S.recs, 1, err, sizeof err) && store_commit(W.st, err, sizeof err);
		if (!ok)
			store_rollback(W.st);
	}
	free(text);
	if (!ok) {
		log_event(LOG_ERROR, "audit_prune_failed", "error=%s", log_quote(q, sizeof q, err));
		return;
	}
	W.chain = c;
	log_event(LOG_INFO, "audit_pruned", "node=%s through_seq=%lld cutoff=%s", W.node, (long long)through, cutoff);
}

/* Takes everything queued, queue by queue (each queue keeps its order). */
static Event *drain(Event **tail, size_t *count)
{
	Event *head = NULL;
	for (int i = 0; i < W.nqueues; i++) {
		Queue *qu = &W.queues[i];
		pthread_mutex_lock(&qu->mu);
		Event *h = qu->head, *t = qu->tail;
		size_t n = qu->count;
		qu->head = qu->tail = NULL;
		qu->count = 0;
		pthread_mutex_unlock(&qu->mu);
		if (!h)
			continue;
		if (*tail)
			(*tail)->next = h;
		else
			head = h;
		*tail = t;
		*count += n; /* not by walking the list: its events are cold in this thread's cache */
	}
	return head;
}

static void log_head(const char *why)
{
	log_event(LOG_INFO, "audit_head", "node=%s seq=%lld tag=%s reason=%s", W.node, (long long)W.chain.seq,
		  W.chain.tag[0] ? W.chain.tag : "-", why);
}

/*
 * Marks a committed batch durable and hands its events back to their queues (the batch is
 * queue after queue, so each run of one queue is handed back under one lock).
 */
static void give_back(Event *batch)
{
	while (batch) {
		int q = batch->q;
		Queue *qu = &W.queues[q];
		Event *keep = NULL, *keep_tail = NULL, *drop = NULL, *drop_tail = NULL;
		size_t nkeep = 0, keep_bytes = 0;
		uint64_t ticket = 0;
		/* Split the queue's run into events to reuse and events to free, keeping order. */
		while (batch && batch->q == q) {
			Event *e = batch;
			batch = e->next;
			ticket = e->ticket;
			Event **head = &drop, **tail = &drop_tail;
			if (reuses(q) && reusable(e)) {
				head = &keep;
				tail = &keep_tail;
				nkeep++;
				keep_bytes += e->body_cap;
			}
			if (*tail) {
				if ((*tail)->next != e)
					(*tail)->next = e; /* most runs are already linked: no write */
			} else {
				*head = e;
			}
			*tail = e;
		}
		if (keep_tail)
			keep_tail->next = NULL;
		if (drop_tail)
			drop_tail->next = NULL;
		__atomic_store_n(&qu->durable, ticket, __ATOMIC_RELEASE);
		pthread_mutex_lock(&qu->mu);
		if (drop) {
			drop_tail->next = qu->garbage;
			qu->garbage = drop;
		}
		if (keep) {
			keep_tail->next = qu->reuse;
			if (!qu->reuse)
				qu->reuse_tail = keep_tail;
			qu->reuse = keep;
			qu->nreuse += nkeep;
			qu->reuse_bytes += keep_bytes;
		}
		pthread_mutex_unlock(&qu->mu);
	}
}

static void *writer_main(void *arg)
{
	(void)arg;
	Event *pending = NULL, *pending_tail = NULL;
	size_t npending = 0;
	bool failing = false;
	int stop_tries = 0;
	int64_t next_prune = 0, last_head_log = audit_now_us(), logged_seq = W.chain.seq;
	for (;;) {
		pthread_mutex_lock(&W.mu);
		if (!W.wake && !W.stopping) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			long ms = failing ? RETRY_INTERVAL_MS : FLUSH_INTERVAL_MS;
			ts.tv_nsec += ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&W.cond, &W.mu, &ts);
		}
		bool stopping = W.stopping;
		W.wake = false;
		pthread_mutex_unlock(&W.mu);

		Event *more = drain(&pending_tail, &npending);
		if (!pending)
			pending = more;
		while (npending > PENDING_MAX) {
			/* The store has been down long enough that memory must win: say so loudly. */
			Event *e = pending;
			pending = e->next;
			if (!pending)
				pending_tail = NULL;
			__atomic_store_n(&W.queues[e->q].durable, e->ticket, __ATOMIC_RELEASE);
			event_free(e);
			npending--;
			if (W.dropped++ % 10000 == 0)
				log_event(LOG_ERROR, "audit_events_dropped", "dropped=%llu reason=\"store unavailable\"",
					  (unsigned long long)W.dropped);
		}
		if (pending) {
			char err[300], q[400];
			if (write_batch(pending, npending, err, sizeof err)) {
				give_back(pending);
				pending = pending_tail = NULL;
				npending = 0;
				if (failing)
					log_event(LOG_WARN, "audit_store_recovered", "node=%s seq=%lld", W.node, (long long)W.chain.seq);
				failing = false;
				__atomic_store_n(&W.healthy, 1, __ATOMIC_RELEASE);
				if (W.cb && W.strict) /* only strict mode holds sessions back until their ticket */
					W.cb(W.cb_arg);
			} else {
				if (!failing)
					log_event(LOG_ERROR, "audit_store_failed", "node=%s pending=%zu error=%s", W.node, npending,
						  log_quote(q, sizeof q, err));
				failing = true;
				__atomic_store_n(&W.healthy, 0, __ATOMIC_RELEASE);
			}
		}
		int64_t now = audit_now_us();
		if (W.retention_s && !failing && now >= next_prune) {
			prune();
			int64_t every = W.retention_s / 4 < 1 ? 1 : W.retention_s / 4 > 3600 ? 3600 : W.retention_s / 4;
			next_prune = now + every * 1000000;
		}
		if (now - last_head_log > HEAD_LOG_INTERVAL_S * 1000000LL && W.chain.seq != logged_seq) {
			log_head("periodic");
			last_head_log = now;
			logged_seq = W.chain.seq;
		}
		if (stopping) {
			if (!pending)
				break;
			/* The store is down at shutdown: give it a few more tries, then report the loss. */
			if (++stop_tries > 6) {
				log_event(LOG_ERROR, "audit_events_lost", "count=%zu reason=\"store unavailable at shutdown\"",
					  npending);
				break;
			}
			struct timespec pause = {0, RETRY_INTERVAL_MS * 1000000L};
			nanosleep(&pause, NULL);
		}
	}
	while (pending) {
		Event *next = pending->next;
		event_free(pending);
		pending = next;
	}
	log_head("stop");
	chain_release_thread();
	free(S.recs);
	free(S.times);
	free(S.tags);
	S = (Scratch){0};
	return NULL;
}

bool audit_start(const Config *c, int nqueues, AuditDurableFn cb, void *arg, char *err, size_t errlen)
{
	if (!c->audit_store || W.started)
		return true;
	W.st = store_open(c->audit_store, c->audit_strict, err, errlen);
	if (!W.st)
		return false;
	W.node = xstrdup(c->audit_node);
	if (!store_upgrade(W.st, err, errlen) || !store_head(W.st, W.node, &W.chain.seq, W.chain.tag, err, errlen)) {
		store_close(W.st);
		return false;
	}
	/* A key is made only for an empty chain: a new key would silently break an existing one. */
	bool created;
	if (!chain_load_key(c->audit_key_file, W.chain.seq == 0, W.first_key, &created, err, errlen)) {
		if (W.chain.seq > 0)
			snprintf(err + strlen(err), errlen - strlen(err),
				 "; the store already holds %lld records of node %s: restore the key file"
				 " (a new key would break the chain)", (long long)W.chain.seq, W.node);
		store_close(W.st);
		return false;
	}
	chain_key_at(W.first_key, W.chain.seq + 1, W.chain.key);
	if (created)
		log_event(LOG_WARN, "audit_key_created", "path=%s note=\"keep a copy elsewhere: verification needs it\"",
			  c->audit_key_file);
	W.strict = c->audit_strict;
	W.retention_s = c->audit_retention_s;
	W.cb = cb;
	W.cb_arg = arg;
	W.nqueues = nqueues;
	W.queues = xcalloc(nqueues, sizeof *W.queues);
	for (int i = 0; i < nqueues; i++)
		pthread_mutex_init(&W.queues[i].mu, NULL);
	pthread_mutex_init(&W.mu, NULL);
	pthread_cond_init(&W.cond, NULL);
	W.started = true;
	if (pthread_create(&W.thread, NULL, writer_main, NULL) == 0) {
		pthread_setname_np(W.thread, "pgc-audit");
	} else {
		W.started = false;
		snprintf(err, errlen, "cannot start the audit writer thread");
		store_close(W.st);
		return false;
	}
	const char *safe_url = strncmp(c->audit_store, "sqlite:", 7) == 0 ? c->audit_store : "postgresql";
	log_event(LOG_INFO, "audit_started", "store=%s node=%s durability=%s head_seq=%lld", safe_url, W.node,
		  W.strict ? "strict" : "default", (long long)W.chain.seq);
	return true;
}

void audit_stop(void)
{
	if (!W.started)
		return;
	pthread_mutex_lock(&W.mu);
	W.stopping = true;
	pthread_cond_signal(&W.cond);
	pthread_mutex_unlock(&W.mu);
	pthread_join(W.thread, NULL);
	for (int i = 0; i < W.nqueues; i++) {
		pthread_mutex_lock(&W.queues[i].mu);
		Event *g = W.queues[i].garbage;
		W.queues[i].garbage = NULL;
		pthread_mutex_unlock(&W.queues[i].mu);
		free_events(g);
		Queue *qu = &W.queues[i];
		free_events(qu->reuse);
		free_events(qu->pool);
		free(qu->reserved); /* its body, if any, is its taker's */
		qu->reuse = qu->reuse_tail = qu->pool = qu->reserved = NULL;
		qu->nreuse = qu->npool = qu->reuse_bytes = qu->pool_bytes = 0;
	}
	store_close(W.st);
	W.st = NULL;
	W.started = false;
}
