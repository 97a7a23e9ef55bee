/* The audit writer: per-worker queues, one thread, batched chained commits, retention. */
#include "audit/audit.h"

#include <errno.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "audit/chain.h"
#include "audit/head_file.h"
#include "audit/rungs.h"
#include "audit/store.h"
#include "core/log.h"
#include "core/util.h"

#define RETRY_INTERVAL_MS 500     /* after a failed commit */
#define BATCH_BYTES_MAX (16u << 20) /* of events per batch: a backlog is written in several */
#define BATCH_RECORDS_MAX 50000
#define LOST_RANGES 64              /* dropped ticket ranges a queue remembers for strict mode */
#define HEAD_LOG_INTERVAL_S 60
#define HEAD_FILE_INTERVAL_MS 1000 /* how often the head file follows the commits */
#define CHUNK_BYTES (64u << 10)   /* a queue's events are written one after another into chunks this size */
#define FREE_CHUNKS_MAX 32        /* empty chunks a queue keeps for reuse */

/*
 * An event in a chunk: this head, then its kind, session id, user, database and body, each
 * NUL-terminated (a NULL string is stored empty, as the store records it).
 */
typedef struct {
	size_t size; /* of the whole event, head included, a multiple of 8 */
	size_t body_len, kind_len, session_len, user_len, database_len;
	int64_t time_us;
	uint64_t ticket;
} EventHead;

/*
 * A queue is a list of chunks. Its producer appends events to the last chunk and publishes
 * them by moving `used` on; the writer reads them in place, in order, and hands a chunk back
 * once all its events are committed. The events are never copied or linked one by one: the
 * writer's reads walk memory in order, and no malloc, free or lock is paid per event.
 */
typedef struct Chunk {
	struct Chunk *next; /* atomic: set once the producer has moved on to it */
	size_t used;        /* atomic: bytes of published events */
	size_t cap;
	char data[];
} Chunk;

/* Tickets from..through of one queue were dropped unrecorded. */
typedef struct {
	uint64_t from, through;
} LostRange;

/* Where the writer stands in a queue. */
typedef struct {
	Chunk *chunk;
	size_t off;
} Pos;

typedef struct {
	/* The producer's side. Only the last queue has several producers: they take mu. */
	pthread_mutex_t mu;
	Chunk *tail;
	uint64_t published; /* atomic: the ticket of the last event published (its producer's count) */
	size_t bytes_in;    /* atomic: bytes of all events published so far */
	/* The writer's side, on another cache line. */
	_Alignas(64) Pos committed; /* the first event not yet committed */
	Pos scanned;                /* the first event not yet in the batch being written */
	uint64_t scanned_ticket;    /* the ticket of the last event in it */
	size_t committed_bytes;     /* atomic: bytes of the events before `committed` (bytes_in counts them too) */
	size_t scanned_bytes;       /* and before `scanned` */
	uint64_t scan_until;        /* the last event the scan under way takes */
	uint64_t durable;           /* atomic */
	/* Empty chunks, handed back by the writer. */
	_Alignas(64) pthread_mutex_t free_mu;
	Chunk *free;
	size_t nfree;
	/* Tickets dropped unrecorded: a strict session holding one must not be answered. */
	_Alignas(64) pthread_mutex_t lost_mu;
	LostRange lost[LOST_RANGES];
	int nlost;
	uint64_t lost_forgotten; /* tickets up to this one may have been dropped (the ranges overflowed) */
} Queue;

/* Events dropped unrecorded: how many, and the times of the first and last of them. */
typedef struct {
	uint64_t count;
	int64_t first_us, last_us;
} DropSpan;

static void span_add(DropSpan *s, uint64_t count, int64_t first_us, int64_t last_us)
{
	if (!s->count || first_us < s->first_us)
		s->first_us = first_us;
	if (!s->count || last_us > s->last_us)
		s->last_us = last_us;
	s->count += count;
}

/* What did not reach the database and was counted instead of recorded (audit_crowded). */
typedef struct {
	uint64_t n[AUDIT_UNREC_KINDS];
	int64_t first_us, last_us;
} Unrecorded;

/* Where the chain stands: the last record written and the key of the next. */
typedef struct {
	int64_t seq;
	char tag[AUDIT_TAG_HEX];
	uint8_t key[AUDIT_KEY_LEN];
} ChainState;

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
	int64_t head_seq; /* atomic: chain.seq, for other threads (audit_stats) */
	int64_t retention_s;
	int healthy; /* atomic */
	int store_timeout_ms; /* audit.store_timeout */
	int flush_interval_ms; /* audit.flush_interval: default mode's longest wait before a batch */
	int64_t call_since_ms; /* atomic: when the store call under way began (util_now_ms); 0 between calls */
	int64_t stall_noted;   /* atomic: the call_since_ms of the last call a producer found stalled */
	size_t max_pending; /* bytes of events held in memory; past it the oldest are dropped */
	int scan_first;     /* the queue a scan starts with, in turn: a backlog is taken fairly */
	bool more;          /* the last scan stopped at the batch limit */
	int any_lost;       /* atomic: some event was ever dropped */
	int counting;       /* atomic: audit_count_unrecorded has counted since the last commit (audit_crowded) */
	uint64_t dropped;   /* atomic: since start, for the log (the writer's drops and the producers') */
	DropSpan drops; /* dropped and not yet said so in the trail: an events_dropped record does */
	pthread_mutex_t unrec_mu; /* guards unrec and door_drops: the producers count, the writer takes */
	Unrecorded unrec;
	DropSpan door_drops; /* dropped by their producers instead of queued (drop_at_door); the writer takes them */
	Unrecorded unrec_taken;   /* taken by the writer, not yet in a committed batch */
	char *own_body[3];        /* the texts of the writer's own records in the batch (events_dropped, store_rewound) */
	char *head_path;          /* the head file (head_file.h) */
	int64_t head_file_seq;    /* the seq it says */
	int64_t head_file_us;     /* when it was last written */
	bool head_file_failing;   /* its last write failed (logged once) */
	KeyRungs rungs;           /* the chain's keys every KEY_RUNG records (rungs.h); writer thread */
	char *rungs_path;         /* their file */
	bool rungs_failing;       /* its last write failed (logged once) */
	struct {
		bool pending;     /* the next batch begins with a store_rewound record */
		int64_t at_us, written_seq;
		char written_tag[AUDIT_TAG_HEX];
	} rewound;
	AuditDurableFn cb;
	void *cb_arg;
} W = {.healthy = 1};

bool audit_enabled(void) { return W.started; }
bool audit_is_strict(void) { return W.strict; }

/*
 * A store call that hangs (a frozen disk, a database that stopped answering) holds the
 * writer, and the store would still look healthy: statements would run on unrecorded while
 * memory fills. Past audit.store_timeout it counts as failing, whatever the call says later.
 */
bool audit_store_healthy(void)
{
	if (!__atomic_load_n(&W.healthy, __ATOMIC_ACQUIRE))
		return false;
	int64_t since = __atomic_load_n(&W.call_since_ms, __ATOMIC_ACQUIRE);
	if (!since || (int64_t)util_now_ms() - since <= W.store_timeout_ms)
		return true;
	/* Logged once per call: the first producer to see it stalled marks it with its start. */
	int64_t noted = __atomic_load_n(&W.stall_noted, __ATOMIC_RELAXED);
	if (noted != since &&
	    __atomic_compare_exchange_n(&W.stall_noted, &noted, since, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		log_event(LOG_ERROR, "audit_store_stalled",
			  "node=%s timeout_ms=%d note=\"a write to the audit store has not returned: it counts as failing\"",
			  W.node, W.store_timeout_ms);
	return false;
}
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

static Chunk *chunk_new(size_t need)
{
	size_t cap = need > CHUNK_BYTES ? need : CHUNK_BYTES;
	Chunk *c = xmalloc(sizeof *c + cap);
	c->next = NULL;
	c->used = 0;
	c->cap = cap;
	return c;
}

static void chunks_free(Chunk *c)
{
	while (c) {
		Chunk *next = c->next;
		free(c);
		c = next;
	}
}

/* An empty chunk with room for need bytes: a reused one when it is large enough. */
static Chunk *chunk_take(Queue *qu, size_t need)
{
	Chunk *c = NULL;
	if (need <= CHUNK_BYTES) {
		pthread_mutex_lock(&qu->free_mu);
		if ((c = qu->free)) {
			qu->free = c->next;
			qu->nfree--;
		}
		pthread_mutex_unlock(&qu->free_mu);
	}
	if (!c)
		return chunk_new(need);
	c->next = NULL;
	c->used = 0;
	return c;
}

/* The writer hands back a chunk all of whose events are committed. */
static void chunk_give_back(Queue *qu, Chunk *c)
{
	if (c->cap == CHUNK_BYTES) {
		pthread_mutex_lock(&qu->free_mu);
		bool keep = qu->nfree < FREE_CHUNKS_MAX;
		if (keep) {
			c->next = qu->free;
			qu->free = c;
			qu->nfree++;
		}
		pthread_mutex_unlock(&qu->free_mu);
		if (keep)
			return;
	}
	free(c); /* after a burst, or an event larger than a chunk: keep memory bounded */
}

static size_t round8(size_t n) { return (n + 7) & ~(size_t)7; }

static char *put_string(char *p, const char *s, size_t len)
{
	memcpy(p, s, len);
	p[len] = 0;
	return p + len + 1;
}

static bool drop_at_door(size_t size, int64_t time_us);

/* may_drop: nobody waits for the event's ticket, so it may be dropped at the door. */
static uint64_t submit(int q, int64_t time_us, const char *kind, const char *session_id, const char *user,
		       const char *database, const char *body, size_t body_len, bool may_drop)
{
	if (!W.started)
		return 0;
	size_t lk = strlen(kind), ls = session_id ? strlen(session_id) : 0, lu = user ? strlen(user) : 0,
	       ld = database ? strlen(database) : 0;
	size_t size = round8(sizeof(EventHead) + lk + ls + lu + ld + body_len + 5);
	if (may_drop && drop_at_door(size, time_us))
		return 0;
	Queue *qu = &W.queues[q];
	bool shared = q == W.nqueues - 1;
	if (shared)
		pthread_mutex_lock(&qu->mu);
	Chunk *c = qu->tail;
	size_t used = c->used; /* only this producer moves it */
	if (used + size > c->cap) {
		Chunk *n = chunk_take(qu, size);
		__atomic_store_n(&c->next, n, __ATOMIC_RELEASE);
		qu->tail = c = n;
		used = 0;
	}
	uint64_t ticket = qu->published + 1; /* only this producer moves it */
	EventHead *h = (EventHead *)(c->data + used);
	*h = (EventHead){.size = size, .body_len = body_len, .kind_len = lk, .session_len = ls, .user_len = lu,
			 .database_len = ld, .time_us = time_us, .ticket = ticket};
	char *p = (char *)(h + 1);
	p = put_string(p, kind, lk);
	p = put_string(p, session_id ? session_id : "", ls);
	p = put_string(p, user ? user : "", lu);
	p = put_string(p, database ? database : "", ld);
	put_string(p, body, body_len);
	__atomic_store_n(&c->used, used + size, __ATOMIC_RELEASE); /* the writer may read it now */
	__atomic_store_n(&qu->bytes_in, qu->bytes_in + size, __ATOMIC_RELAXED); /* only this producer moves it */
	__atomic_store_n(&qu->published, ticket, __ATOMIC_RELEASE);
	if (shared)
		pthread_mutex_unlock(&qu->mu);
	if (W.strict) {
		/* Group commit: the writer starts the next batch as soon as it is free. */
		pthread_mutex_lock(&W.mu);
		W.wake = true;
		pthread_cond_signal(&W.cond);
		pthread_mutex_unlock(&W.mu);
	}
	return ticket;
}

uint64_t audit_submit(int q, const char *kind, const char *session_id, const char *user, const char *database,
		      char *body)
{
	uint64_t ticket = submit(q, audit_now_us(), kind, session_id, user, database, body ? body : "",
				 body ? strlen(body) : 0, true);
	free(body);
	return ticket;
}

uint64_t audit_submit_at(int q, int64_t time_us, const char *kind, const char *session_id, const char *user,
			 const char *database, const char *body, size_t body_len)
{
	/* In strict mode the session waits for this ticket: never dropped unseen by it. */
	return submit(q, time_us, kind, session_id, user, database, body, body_len, !W.strict);
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
	size_t had = S.cap;
	S.recs = xrealloc(S.recs, cap * sizeof *S.recs);
	S.times = xrealloc(S.times, cap * sizeof *S.times);
	S.tags = xrealloc(S.tags, cap * sizeof *S.tags);
	S.cap = cap;
	/* The records chained so far point into the arrays that just moved: point them again. */
	for (size_t i = 0; i < had; i++) {
		S.recs[i].time = S.times[i];
		S.recs[i].tag = S.tags[i];
		S.recs[i].prev_tag = i ? S.tags[i - 1] : S.prev;
	}
}

/* Keeps the rungs file up with the rungs the writer passed; a failure is logged once. */
static void rungs_follow(void)
{
	char err[512], q[600];
	if (rungs_save(&W.rungs, W.rungs_path, err, sizeof err)) {
		W.rungs_failing = false;
	} else if (!W.rungs_failing) {
		W.rungs_failing = true;
		log_event(LOG_WARN, "audit_rungs_file_failed", "error=%s note=\"the next start derives the keys past its"
			  " last rung from those before\"", log_quote(q, sizeof q, err));
	}
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
	int64_t had = W.rungs.n;
	rungs_note(&W.rungs, c->seq + 1, c->key);
	if (W.rungs.n > had)
		rungs_follow(); /* after a failed write, tried again at the next rung only */
}

/* The chain after the last record chained into the scratch (its tag is in the scratch). */
static void chain_settle(ChainState *c, size_t n)
{
	if (n)
		memcpy(c->tag, S.tags[n - 1], AUDIT_TAG_HEX);
}

/*
 * The next event published after p, moving p on past it (and on to the next chunk when this
 * one is done); NULL when the producer has published nothing more up to ticket `until`.
 */
static const EventHead *next_event(Pos *p, uint64_t until)
{
	for (;;) {
		if (p->off < __atomic_load_n(&p->chunk->used, __ATOMIC_ACQUIRE)) {
			const EventHead *h = (const EventHead *)(p->chunk->data + p->off);
			if (h->ticket > until)
				return NULL;
			p->off += h->size;
			return h;
		}
		Chunk *next = __atomic_load_n(&p->chunk->next, __ATOMIC_ACQUIRE);
		if (!next)
			return NULL;
		/* The producer publishes nothing more here once it has moved on: a last look first. */
		if (p->off < __atomic_load_n(&p->chunk->used, __ATOMIC_ACQUIRE))
			continue;
		p->chunk = next;
		p->off = 0;
	}
}

/*
 * A record of the writer's own (events_dropped, prune), chained at scratch index i. Takes
 * body; its text is kept in *text (freeing the one before) for the store to read.
 */
static void chain_own_record(ChainState *c, size_t i, const char *kind, int64_t time_us, json_t *body, char **text)
{
	free(*text);
	*text = json_dumps(body, JSON_COMPACT);
	json_decref(body);
	scratch_reserve(i + 1);
	chain_record(c, i, kind, NULL, NULL, NULL, time_us, *text, strlen(*text));
}

/* The record that says events were dropped unrecorded (W.drops), at scratch index i. */
static void chain_drop_record(ChainState *c, size_t i)
{
	char first[AUDIT_TIME_LEN], last[AUDIT_TIME_LEN];
	audit_format_time(W.drops.first_us, first);
	audit_format_time(W.drops.last_us, last);
	json_t *body = json_pack("{sI ss ss ss}", "count", (json_int_t)W.drops.count, "first_time", first, "last_time",
				 last, "reason", "the audit store lagged and the events waiting exceeded audit.max_pending");
	chain_own_record(c, i, "events_dropped", W.drops.last_us, body, &W.own_body[0]);
}

static uint64_t unrecorded_total(const Unrecorded *u)
{
	uint64_t n = 0;
	for (int k = 0; k < AUDIT_UNREC_KINDS; k++)
		n += u->n[k];
	return n;
}

/*
 * Moves what the producers counted to what the next batch must say: the refusals
 * (W.unrec to W.unrec_taken) and the events they dropped (to W.drops).
 */
static void take_unrecorded(void)
{
	pthread_mutex_lock(&W.unrec_mu);
	if (W.door_drops.count) {
		span_add(&W.drops, W.door_drops.count, W.door_drops.first_us, W.door_drops.last_us);
		W.door_drops = (DropSpan){0};
	}
	Unrecorded *u = &W.unrec, *t = &W.unrec_taken;
	bool had = unrecorded_total(t) != 0;
	if (unrecorded_total(u)) {
		if (!had || u->first_us < t->first_us)
			t->first_us = u->first_us;
		if (!had || u->last_us > t->last_us)
			t->last_us = u->last_us;
		for (int k = 0; k < AUDIT_UNREC_KINDS; k++)
			t->n[k] += u->n[k];
		*u = (Unrecorded){0};
	}
	pthread_mutex_unlock(&W.unrec_mu);
}

/* The record of what was counted instead of recorded (W.unrec_taken), at scratch index i. */
static void chain_unrecorded_record(ChainState *c, size_t i)
{
	const Unrecorded *u = &W.unrec_taken;
	char first[AUDIT_TIME_LEN], last[AUDIT_TIME_LEN];
	audit_format_time(u->first_us, first);
	audit_format_time(u->last_us, last);
	json_t *body = json_pack(
		"{sI sI sI sI ss ss ss}", "count", (json_int_t)unrecorded_total(u), "refused_statements",
		(json_int_t)u->n[AUDIT_UNREC_STATEMENT], "refused_sessions", (json_int_t)u->n[AUDIT_UNREC_SESSION],
		"failed_logins", (json_int_t)u->n[AUDIT_UNREC_LOGIN], "first_time", first, "last_time", last, "reason",
		"the audit store was failing with over half of audit.max_pending waiting: what did not reach the database"
		" was counted, not recorded one by one");
	chain_own_record(c, i, "events_dropped", u->last_us, body, &W.own_body[1]);
}

/*
 * The record that says the store had lost records this gateway committed when it started
 * (W.rewound), at scratch index i: it follows the store's last record, as any other.
 */
static void chain_rewound_record(ChainState *c, size_t i)
{
	json_t *body = json_pack("{sI ss sI ss ss}", "store_seq", (json_int_t)c->seq, "store_tag", c->tag, "written_seq",
				 (json_int_t)W.rewound.written_seq, "written_tag", W.rewound.written_tag, "reason",
				 "when the gateway started, the store ended before the last record it had committed (its head"
				 " file says so): the records after store_seq through written_seq are lost");
	chain_own_record(c, i, "store_rewound", W.rewound.at_us, body, &W.own_body[2]);
}

/*
 * Chains the events published since the last batch into the scratch; returns how many.
 * Only those published when the scan starts: a busy queue does not keep the writer from
 * the others. A batch stops at BATCH_BYTES_MAX or BATCH_RECORDS_MAX (W.more says so), so a
 * backlog is written in pieces; the queues take turns at being read first.
 */
static size_t scan(ChainState *c)
{
	for (int q = 0; q < W.nqueues; q++)
		W.queues[q].scan_until = __atomic_load_n(&W.queues[q].published, __ATOMIC_ACQUIRE);
	size_t n = 0, bytes = 0;
	take_unrecorded();
	if (W.rewound.pending)
		chain_rewound_record(c, n++);
	if (W.drops.count)
		chain_drop_record(c, n++);
	if (unrecorded_total(&W.unrec_taken))
		chain_unrecorded_record(c, n++);
	W.more = false;
	for (int k = 0; k < W.nqueues; k++) {
		Queue *qu = &W.queues[(W.scan_first + k) % W.nqueues];
		const EventHead *h;
		for (;;) {
			if (n >= BATCH_RECORDS_MAX || bytes >= BATCH_BYTES_MAX) {
				W.more = true;
				break;
			}
			if (!(h = next_event(&qu->scanned, qu->scan_until)))
				break;
			const char *kind = (const char *)(h + 1), *session_id = kind + h->kind_len + 1,
				   *user = session_id + h->session_len + 1, *database = user + h->user_len + 1,
				   *body = database + h->database_len + 1;
			scratch_reserve(n + 1);
			chain_record(c, n++, kind, session_id, user, database, h->time_us, body, h->body_len);
			qu->scanned_ticket = h->ticket;
			qu->scanned_bytes += h->size;
			bytes += h->size;
		}
	}
	W.scan_first = (W.scan_first + 1) % W.nqueues;
	chain_settle(c, n);
	return n;
}

/* Moves a queue's committed position on to `to`, handing back the chunks it leaves. */
static void commit_to(Queue *qu, Pos to)
{
	Chunk *c = qu->committed.chunk;
	while (c != to.chunk) {
		Chunk *next = c->next;
		chunk_give_back(qu, c);
		c = next;
	}
	qu->committed = to;
}

/* The batch is committed: its events are durable and their chunks free. */
static void batch_committed(void)
{
	W.drops = (DropSpan){0}; /* the batch began with the records of them */
	W.unrec_taken = (Unrecorded){0};
	W.rewound.pending = false;
	__atomic_store_n(&W.counting, 0, __ATOMIC_RELAXED); /* the next outage is logged again */
	for (int q = 0; q < W.nqueues; q++) {
		Queue *qu = &W.queues[q];
		__atomic_store_n(&qu->durable, qu->scanned_ticket, __ATOMIC_RELEASE);
		commit_to(qu, qu->scanned);
		__atomic_store_n(&qu->committed_bytes, qu->scanned_bytes, __ATOMIC_RELAXED);
	}
}

/* The next scan of qu starts at its first event not committed. */
static void rewind_scan(Queue *qu)
{
	qu->scanned = qu->committed;
	qu->scanned_ticket = __atomic_load_n(&qu->durable, __ATOMIC_RELAXED);
	qu->scanned_bytes = qu->committed_bytes;
}

/* The batch failed: the next one starts again at the first event not committed. */
static void batch_failed(void)
{
	for (int q = 0; q < W.nqueues; q++)
		rewind_scan(&W.queues[q]);
}

/* Bytes of the events published and not yet committed (nor dropped), across the queues. */
static size_t held_bytes(void)
{
	size_t n = 0;
	for (int q = 0; q < W.nqueues; q++) {
		/* Read by a producer, a commit may fall between the two loads: never below zero. */
		size_t in = __atomic_load_n(&W.queues[q].bytes_in, __ATOMIC_RELAXED),
		       done = __atomic_load_n(&W.queues[q].committed_bytes, __ATOMIC_RELAXED);
		n += in > done ? in - done : 0;
	}
	return n;
}

void audit_stats(AuditStats *out)
{
	*out = (AuditStats){.enabled = W.started, .strict = W.strict};
	if (!W.started)
		return;
	out->healthy = audit_store_healthy();
	out->dropped = __atomic_load_n(&W.dropped, __ATOMIC_RELAXED);
	out->pending_bytes = held_bytes();
	out->head_seq = __atomic_load_n(&W.head_seq, __ATOMIC_RELAXED);
}

/* At the first drop and every 10,000th. */
static void log_dropped(const char *reason)
{
	uint64_t n = __atomic_add_fetch(&W.dropped, 1, __ATOMIC_RELAXED);
	if (n % 10000 == 1)
		log_event(LOG_ERROR, "audit_events_dropped", "dropped=%llu reason=\"%s\"", (unsigned long long)n, reason);
}

/*
 * The writer keeps memory within max_pending by dropping the oldest events, but only between
 * its store calls: not while one hangs (a frozen disk) or a COMMIT is in doubt. So while the
 * store fails, an event that would take what waits past max_pending is dropped by its
 * producer instead of queued, and counted like the writer's drops (the events_dropped record
 * of the next batch). A strict session's statement is not (submit's may_drop): the session
 * waits for its record before it goes on, so it cannot run ahead of the store.
 */
static bool drop_at_door(size_t size, int64_t time_us)
{
	if (audit_store_healthy() || held_bytes() + size <= W.max_pending)
		return false;
	pthread_mutex_lock(&W.unrec_mu);
	span_add(&W.door_drops, 1, time_us, time_us);
	pthread_mutex_unlock(&W.unrec_mu);
	log_dropped("store failing, audit.max_pending reached");
	return true;
}

bool audit_crowded(size_t adding)
{
	/* Half the bound: the other half stays for the records of what ran (drop_oldest). Once
	 * counting has begun it goes on until the store is back, so the door stays shut. */
	return W.started && !audit_store_healthy() &&
	       (__atomic_load_n(&W.counting, __ATOMIC_RELAXED) || held_bytes() + adding > W.max_pending / 2);
}

void audit_count_unrecorded(AuditUnrecorded what)
{
	pthread_mutex_lock(&W.unrec_mu);
	int64_t now = audit_now_us(); /* under the lock: first_us and last_us stay in order */
	if (!unrecorded_total(&W.unrec))
		W.unrec.first_us = now;
	W.unrec.last_us = now;
	W.unrec.n[what]++;
	pthread_mutex_unlock(&W.unrec_mu);
	if (!__atomic_exchange_n(&W.counting, 1, __ATOMIC_RELAXED))
		log_event(LOG_WARN, "audit_refusals_counted",
			  "node=%s note=\"the store is failing and over half of audit.max_pending waits: refused statements,"
			  " refused sessions and failed logins are counted, not recorded one by one\"", W.node);
}

/* Remembers that ticket of queue qu was dropped (ranges of consecutive tickets). */
static void note_lost(Queue *qu, uint64_t ticket)
{
	pthread_mutex_lock(&qu->lost_mu);
	LostRange *last = qu->nlost ? &qu->lost[qu->nlost - 1] : NULL;
	if (last && last->through + 1 == ticket) {
		last->through = ticket;
	} else {
		if (qu->nlost == LOST_RANGES) {
			qu->lost_forgotten = qu->lost[0].through; /* from now on, older ones count as lost */
			memmove(qu->lost, qu->lost + 1, (LOST_RANGES - 1) * sizeof qu->lost[0]);
			qu->nlost--;
		}
		qu->lost[qu->nlost++] = (LostRange){ticket, ticket};
	}
	pthread_mutex_unlock(&qu->lost_mu);
	__atomic_store_n(&W.any_lost, 1, __ATOMIC_RELEASE);
}

bool audit_lost(int q, uint64_t ticket)
{
	if (!__atomic_load_n(&W.any_lost, __ATOMIC_ACQUIRE))
		return false;
	Queue *qu = &W.queues[q];
	pthread_mutex_lock(&qu->lost_mu);
	bool lost = ticket <= qu->lost_forgotten;
	for (int i = 0; i < qu->nlost && !lost; i++)
		lost = ticket >= qu->lost[i].from && ticket <= qu->lost[i].through;
	pthread_mutex_unlock(&qu->lost_mu);
	return lost;
}

/*
 * The store lags so far behind that memory must win: the oldest events go, by time across
 * the queues, until at most `target` bytes of them wait. Loudly: in the log, and in
 * the trail by the events_dropped record the next batch begins with. Returns how many.
 */
static size_t drop_oldest(size_t target)
{
	size_t dropped = 0;
	while (held_bytes() > target) {
		Queue *oldest = NULL;
		const EventHead *first = NULL;
		Pos after; /* where oldest's committed position goes once first is dropped */
		for (int q = 0; q < W.nqueues; q++) {
			Pos p = W.queues[q].committed;
			const EventHead *h = next_event(&p, UINT64_MAX);
			if (h && (!first || h->time_us < first->time_us)) {
				oldest = &W.queues[q];
				first = h;
				after = p;
			}
		}
		if (!oldest)
			break;
		span_add(&W.drops, 1, first->time_us, first->time_us);
		note_lost(oldest, first->ticket); /* before its waiter can see it "durable" */
		__atomic_store_n(&oldest->durable, first->ticket, __ATOMIC_RELEASE); /* wakes its waiter, to be refused */
		/* Read before commit_to may free first's chunk. */
		__atomic_store_n(&oldest->committed_bytes, oldest->committed_bytes + first->size, __ATOMIC_RELAXED);
		commit_to(oldest, after);
		rewind_scan(oldest);
		log_dropped("store lagging, audit.max_pending exceeded");
		dropped++;
	}
	return dropped;
}

/* The writer marks its store calls, so that producers can see one hang (audit_store_healthy). */
static void store_call_begins(void) { __atomic_store_n(&W.call_since_ms, (int64_t)util_now_ms(), __ATOMIC_RELEASE); }

/* Returns whether a producer found this call stalled. */
static bool store_call_ends(void)
{
	int64_t since = __atomic_load_n(&W.call_since_ms, __ATOMIC_RELAXED); /* the writer's own */
	__atomic_store_n(&W.call_since_ms, 0, __ATOMIC_RELEASE);
	return __atomic_load_n(&W.stall_noted, __ATOMIC_RELAXED) == since;
}

/* The batch chained into c is in the store. */
static void batch_written(const ChainState *c)
{
	W.chain = *c;
	__atomic_store_n(&W.head_seq, W.chain.seq, __ATOMIC_RELAXED);
	batch_committed();
	__atomic_store_n(&W.healthy, 1, __ATOMIC_RELEASE);
	if (W.cb && W.strict) /* only strict mode holds sessions back until their ticket */
		W.cb(W.cb_arg);
}

/* Writes the scratch's n records in one transaction. On failure nothing of it counts. */
static bool write_batch(size_t n, char *err, size_t errlen)
{
	if (!store_begin(W.st, err, errlen))
		return false;
	if (!store_append(W.st, S.recs, n, err, errlen) || !store_commit(W.st, err, errlen)) {
		store_rollback(W.st);
		return false;
	}
	return true;
}

typedef struct {
	int64_t seq;
	const char *tag, *cutoff;
	bool seen, genuine;
} Cut;

static bool check_cut(const StoredRecord *r, void *arg)
{
	Cut *c = arg;
	uint8_t key[AUDIT_KEY_LEN];
	char tag[AUDIT_TAG_HEX];
	c->seen = true;
	if (r->seq != c->seq || r->seq < 1)
		return false;
	rungs_key_at(&W.rungs, r->seq, key);
	chain_tag(key, r, tag);
	OPENSSL_cleanse(key, sizeof key);
	c->genuine = strcmp(tag, r->tag) == 0 && strcmp(tag, c->tag) == 0 && strcmp(r->time, c->cutoff) < 0;
	return false;
}

/*
 * Whether the record a prune would cut at is older than the cutoff by its chained time, and
 * is the record its tag says. store_last_before picks it by a column outside the chain (a
 * batch's max_time, a row's time): backdated by someone who can write the store, it would
 * have the writer delete recent records under a prune record of its own.
 */
static bool cut_is_genuine(int64_t through, const char *through_tag, const char *cutoff, char *err, size_t errlen)
{
	Cut c = {.seq = through, .tag = through_tag, .cutoff = cutoff};
	StoreFilter f = {.node = W.node, .from_seq = through, .limit = 1};
	if (!store_scan(W.st, &f, check_cut, &c, err, errlen))
		return false;
	if (!c.genuine)
		snprintf(err, errlen, "record seq=%lld, the last the store dates before %s, is %s; run pgcordon audit"
			 " verify", (long long)through, cutoff, c.seen ? "not that old by its chained time, or altered"
			 : "missing");
	return c.genuine;
}

/*
 * Deletes records older than the retention and chains a "prune" record saying so. False:
 * the store failed; *tried is then the chain had the prune record been written.
 */
static bool prune(ChainState *tried)
{
	char err[300], cutoff[AUDIT_TIME_LEN], q[300];
	int64_t through;
	char through_tag[AUDIT_TAG_HEX];
	audit_format_time(audit_now_us() - W.retention_s * 1000000, cutoff);
	if (!store_last_before(W.st, W.node, cutoff, &through, through_tag, err, sizeof err)) {
		log_event(LOG_ERROR, "audit_prune_failed", "error=%s", log_quote(q, sizeof q, err));
		return false;
	}
	if (through == 0 || through >= W.chain.seq)
		return true; /* nothing old enough, or it would remove the head itself */
	if (!cut_is_genuine(through, through_tag, cutoff, err, sizeof err)) {
		log_event(LOG_ERROR, "audit_prune_refused", "node=%s through_seq=%lld error=%s", W.node, (long long)through,
			  log_quote(q, sizeof q, err));
		return true; /* nothing the store can do about it: the next check looks again */
	}
	json_t *body = json_pack("{sI sI ss ss}", "through_seq", (json_int_t)through, "first_seq", (json_int_t)through + 1,
				 "through_tag", through_tag, "cutoff", cutoff);
	ChainState c = W.chain;
	char *text = NULL;
	chain_own_record(&c, 0, "prune", audit_now_us(), body, &text);
	chain_settle(&c, 1);
	*tried = c;
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
		return false;
	}
	W.chain = c;
	__atomic_store_n(&W.head_seq, W.chain.seq, __ATOMIC_RELAXED);
	log_event(LOG_INFO, "audit_pruned", "node=%s through_seq=%lld cutoff=%s", W.node, (long long)through, cutoff);
	return true;
}

static void log_head(const char *why)
{
	log_event(LOG_INFO, "audit_head", "node=%s seq=%lld tag=%s reason=%s", W.node, (long long)W.chain.seq,
		  W.chain.tag[0] ? W.chain.tag : "-", why);
}

/* Events queued and not committed (dropped ones are counted in W.drops). */
static uint64_t pending_events(void)
{
	uint64_t n = 0;
	for (int q = 0; q < W.nqueues; q++)
		n += __atomic_load_n(&W.queues[q].published, __ATOMIC_ACQUIRE) -
		     __atomic_load_n(&W.queues[q].durable, __ATOMIC_RELAXED);
	return n;
}

/* A COMMIT that went unanswered: until it is settled, nothing more is written. */
typedef struct {
	bool on;
	ChainState after; /* the chain had it been carried out */
	int waits;        /* turns it has not been settled (the first is logged) */
} Doubt;

static void doubt_begin(Doubt *d, const ChainState *after, const char *what, const char *err)
{
	char q[400];
	*d = (Doubt){.on = true, .after = *after};
	log_event(LOG_ERROR, "audit_commit_in_doubt", "node=%s seq=%lld what=%s error=%s", W.node, (long long)after->seq,
		  what, log_quote(q, sizeof q, err));
}

/* The store failed (once logged): statements are refused under on_failure: refuse. */
static void store_failing(bool *failing, const char *err)
{
	if (*failing)
		return;
	char q[400];
	log_event(LOG_ERROR, "audit_store_failed", "node=%s pending=%llu error=%s", W.node,
		  (unsigned long long)pending_events(), log_quote(q, sizeof q, err));
	*failing = true;
	__atomic_store_n(&W.healthy, 0, __ATOMIC_RELEASE);
}

/* After a failure or a stall: the store took a write again. */
static void log_store_recovered(void)
{
	log_event(LOG_WARN, "audit_store_recovered", "node=%s seq=%lld", W.node, (long long)W.chain.seq);
}

/* The head file follows the chain (head_file.h); a failure is logged once, and tried again. */
static void head_file_update(int64_t now)
{
	char err[300], q[400];
	W.head_file_us = now;
	if (!head_file_write(W.head_path, W.node, W.chain.seq, W.chain.tag, err, sizeof err)) {
		if (!W.head_file_failing)
			log_event(LOG_ERROR, "audit_head_file_failed", "error=%s", log_quote(q, sizeof q, err));
		W.head_file_failing = true;
		return;
	}
	if (W.head_file_failing)
		log_event(LOG_WARN, "audit_head_file_recovered", "path=%s", W.head_path);
	W.head_file_failing = false;
	W.head_file_seq = W.chain.seq;
}

/* Not before a store_rewound record is in: until then the file keeps what was lost. */
static bool head_file_behind(void) { return W.chain.seq != W.head_file_seq && !W.rewound.pending; }

static void *writer_main(void *arg)
{
	(void)arg;
	bool failing = false;
	int stop_tries = 0;
	int64_t next_prune = 0, last_head_log = audit_now_us(), logged_seq = W.chain.seq;
	bool more = false;     /* the last batch was full: the next one follows at once */
	bool was_over = false; /* the last turn found more than max_pending waiting */
	Doubt doubt = {0};
	for (;;) {
		pthread_mutex_lock(&W.mu);
		if ((!W.wake || doubt.on) && !W.stopping && !more) { /* a doubt is asked about at the retry pace */
			struct timespec until = util_deadline(CLOCK_REALTIME, failing ? RETRY_INTERVAL_MS : W.flush_interval_ms);
			pthread_cond_timedwait(&W.cond, &W.mu, &until);
		}
		bool stopping = W.stopping;
		W.wake = false;
		pthread_mutex_unlock(&W.mu);

		bool behind = false;
		bool written = false, stalled = false;
		char err[300], q[400];
		more = false;
		if (doubt.on) {
			/*
			 * The last batch's COMMIT went unanswered. Nothing is dropped, scanned or written
			 * until the store says whether it is in (then it counts as written) or not (then
			 * it is written again): either guess could lose records or chain them twice.
			 */
			int64_t seq;
			char tag[AUDIT_TAG_HEX];
			store_call_begins();
			bool settled = store_settle(W.st, W.node, &seq, tag, err, sizeof err);
			stalled = store_call_ends();
			behind = true;
			if (!settled && doubt.waits++ == 0)
				log_event(LOG_WARN, "audit_commit_unsettled", "node=%s seq=%lld reason=%s", W.node,
					  (long long)doubt.after.seq, log_quote(q, sizeof q, err));
			if (settled) {
				doubt.on = false;
				written = seq == doubt.after.seq && strcmp(tag, doubt.after.tag) == 0;
				log_event(LOG_WARN, "audit_commit_settled", "node=%s seq=%lld written=%s", W.node,
					  (long long)doubt.after.seq, written ? "yes" : "no");
				if (written) {
					batch_written(&doubt.after);
				} else {
					batch_failed();
					if (seq != W.chain.seq || strcmp(tag, W.chain.tag) != 0)
						log_event(LOG_ERROR, "audit_chain_head_unexpected",
							  "node=%s seq=%lld expected_seq=%lld note=\"the store's last record of this"
							  " node is neither the chain's nor the batch's: another writer, or an edit\"",
							  W.node, (long long)seq, (long long)W.chain.seq);
				}
				behind = !written;
				more = true; /* at once: what was published meanwhile, or the batch again */
			}
		} else {
			/*
			 * Between batches nothing is scanned and not committed: dropping can start there. Only
			 * when the store fails or a batch did not catch up: a single burst (or one record
			 * larger than the bound) that a healthy store takes at once is written, not dropped.
			 */
			bool over = held_bytes() > W.max_pending;
			if (over && (failing || was_over)) {
				/* Down to three quarters, so that dropping is not done again at every turn. */
				size_t dropped = drop_oldest(W.max_pending / 4 * 3);
				if (dropped && W.cb && W.strict)
					W.cb(W.cb_arg); /* the sessions holding a dropped record's answer are refused now */
			}
			was_over = over;
			ChainState c = W.chain;
			size_t n = scan(&c);
			if (n) {
				store_call_begins();
				written = write_batch(n, err, sizeof err);
				stalled = store_call_ends();
				if (written) {
					batch_written(&c);
				} else if (store_commit_in_doubt(W.st)) {
					doubt_begin(&doubt, &c, "batch", err);
				} else {
					batch_failed();
				}
				behind = !written;
				more = written && W.more;
			}
		}
		if (written) {
			if (failing || stalled)
				log_store_recovered();
			failing = false;
		} else if (behind) {
			store_failing(&failing, err);
		}
		int64_t now = audit_now_us();
		if (W.retention_s && !failing && now >= next_prune) {
			ChainState tried;
			store_call_begins();
			bool pruned = prune(&tried);
			bool prune_stalled = store_call_ends();
			if (pruned && prune_stalled)
				log_store_recovered();
			if (!pruned && store_commit_in_doubt(W.st)) { /* settled at the next turn, as a batch's */
				doubt_begin(&doubt, &tried, "prune", "its COMMIT went unanswered (see audit_prune_failed)");
				store_failing(&failing, "a prune's COMMIT is in doubt");
			}
			int64_t every = W.retention_s / 4 < 1 ? 1 : W.retention_s / 4 > 3600 ? 3600 : W.retention_s / 4;
			next_prune = now + every * 1000000;
		}
		if (head_file_behind() && (stopping || now - W.head_file_us >= HEAD_FILE_INTERVAL_MS * 1000LL))
			head_file_update(now);
		if (now - last_head_log > HEAD_LOG_INTERVAL_S * 1000000LL && W.chain.seq != logged_seq) {
			log_head("periodic");
			last_head_log = now;
			logged_seq = W.chain.seq;
		}
		if (stopping) {
			if (!behind && !more)
				break;
			if (!behind)
				continue; /* the rest of a backlog, batch after batch */
			/* The store is down at shutdown: give it a few more tries, then report the loss. */
			if (++stop_tries > 6) {
				take_unrecorded();
				log_event(LOG_ERROR, "audit_events_lost",
					  "count=%llu refusals_counted=%llu reason=\"store unavailable at shutdown\"",
					  (unsigned long long)(pending_events() + W.drops.count),
					  (unsigned long long)unrecorded_total(&W.unrec_taken));
				break;
			}
			struct timespec pause = {0, RETRY_INTERVAL_MS * 1000000L};
			nanosleep(&pause, NULL);
		}
	}
	if (head_file_behind())
		head_file_update(audit_now_us());
	log_head("stop");
	chain_release_thread();
	free(S.recs);
	free(S.times);
	free(S.tags);
	S = (Scratch){0};
	return NULL;
}

/*
 * The store's head (W.chain) against the head file. A store that ends before the last record
 * this gateway committed lost records while it was stopped: rolled back, restored from an
 * older copy or wiped, or a power failure under durability: default. The chain goes on from
 * the store's head, and its next batch begins with a store_rewound record saying what is lost.
 */
static bool head_check(const char *key_file, bool key_created, char *err, size_t errlen)
{
	HeadFile h;
	char q[400];
	free(W.head_path);
	W.head_path = head_file_path(key_file);
	int r = head_file_read(W.head_path, &h, err, errlen);
	if (r < 0) {
		snprintf(err + strlen(err), errlen - strlen(err),
			 "; the gateway keeps its last committed record there to find a store that lost records while it"
			 " was stopped: remove the file to start without that check");
		return false;
	}
	bool same = r == 1 && !key_created && strcmp(h.node, W.node) == 0;
	if (same && (h.seq > W.chain.seq || (h.seq == W.chain.seq && strcmp(h.tag, W.chain.tag) != 0))) {
		W.rewound.pending = true;
		W.rewound.at_us = audit_now_us();
		W.rewound.written_seq = h.seq;
		memcpy(W.rewound.written_tag, h.tag, AUDIT_TAG_HEX);
		W.head_file_seq = -1; /* rewritten at the first commit after the record, whatever seq it ends at */
		log_event(LOG_ERROR, "audit_store_rewound",
			  "node=%s store_seq=%lld head_file_seq=%lld head_file=%s note=\"the store lost records this gateway"
			  " had committed (rolled back, restored from an older copy or wiped; or a power failure under"
			  " durability: default): the trail records it, and audit verify reports it\"",
			  W.node, (long long)W.chain.seq, (long long)h.seq, log_quote(q, sizeof q, W.head_path));
		return true;
	}
	if (r == 1 && !same) {
		log_event(LOG_WARN, "audit_head_file_replaced", "path=%s node=%s reason=%s", log_quote(q, sizeof q, W.head_path),
			  h.node, key_created ? "a new key" : "another node");
		/* Gone at once: left until a first commit, it would be taken for this chain's at the next start. */
		if (W.chain.seq == 0 && unlink(W.head_path) != 0) {
			snprintf(err, errlen, "audit head file %s: cannot remove: %s", W.head_path, strerror(errno));
			return false;
		}
	}
	W.head_file_seq = 0;
	if (W.chain.seq == 0)
		return true; /* the first commit writes it */
	/* At once, so that a file the gateway cannot write stops it here rather than later. */
	if (!head_file_write(W.head_path, W.node, W.chain.seq, W.chain.tag, err, errlen))
		return false;
	W.head_file_seq = W.chain.seq;
	return true;
}

bool audit_start(const Config *c, int nqueues, AuditDurableFn cb, void *arg, char *err, size_t errlen)
{
	if (!c->audit_store || W.started)
		return true;
	W.st = store_open(c->audit_store, c->audit_strict, c->audit_store_timeout_ms, err, errlen);
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
	if (W.chain.seq < 0 || W.chain.seq >= AUDIT_SEQ_MAX) {
		snprintf(err, errlen, "audit store: the head of node %s says seq=%lld, which no chain reaches (the store was"
			 " altered; run pgcordon audit verify)", W.node, (long long)W.chain.seq);
		store_close(W.st);
		return false;
	}
	if (!head_check(c->audit_key_file, created, err, errlen)) {
		store_close(W.st);
		return false;
	}
	/* The next record's key, from the nearest rung the rungs file holds. */
	rungs_init(&W.rungs, W.first_key);
	W.rungs_path = rungs_path(c->audit_key_file);
	char rerr[512], q[600];
	if (rungs_load(&W.rungs, W.rungs_path, rerr, sizeof rerr) < 0)
		log_event(LOG_WARN, "audit_rungs_file_ignored", "error=%s note=\"%s\"", log_quote(q, sizeof q, rerr),
			  W.rungs.file_failed ? "the keys are derived from the key file" : "the rest is derived and rewritten");
	int64_t key_steps = rungs_walk_to(&W.rungs, W.chain.seq + 1, W.chain.key);
	rungs_follow();
	if (created)
		log_event(LOG_WARN, "audit_key_created", "path=%s note=\"keep a copy elsewhere: verification needs it\"",
			  c->audit_key_file);
	W.head_seq = W.chain.seq;
	W.strict = c->audit_strict;
	W.retention_s = c->audit_retention_s;
	W.max_pending = c->audit_max_pending;
	W.store_timeout_ms = c->audit_store_timeout_ms;
	W.flush_interval_ms = c->audit_flush_interval_ms;
	W.cb = cb;
	W.cb_arg = arg;
	W.nqueues = nqueues;
	/* Aligned: each queue's producer and writer fields keep to their own cache lines. */
	W.queues = aligned_alloc(_Alignof(Queue), (size_t)nqueues * sizeof *W.queues);
	if (!W.queues)
		abort();
	memset(W.queues, 0, (size_t)nqueues * sizeof *W.queues);
	for (int i = 0; i < nqueues; i++) {
		Queue *qu = &W.queues[i];
		pthread_mutex_init(&qu->mu, NULL);
		pthread_mutex_init(&qu->free_mu, NULL);
		pthread_mutex_init(&qu->lost_mu, NULL);
		qu->tail = chunk_new(0);
		qu->committed = qu->scanned = (Pos){qu->tail, 0};
	}
	pthread_mutex_init(&W.mu, NULL);
	pthread_cond_init(&W.cond, NULL);
	pthread_mutex_init(&W.unrec_mu, NULL);
	W.started = true;
	if (pthread_create(&W.thread, NULL, writer_main, NULL) == 0) {
		pthread_setname_np(W.thread, "pgc-audit");
	} else {
		W.started = false;
		snprintf(err, errlen, "cannot start the audit writer thread");
		store_close(W.st);
		rungs_free(&W.rungs);
		return false;
	}
	const char *safe_url = strncmp(c->audit_store, "sqlite:", 7) == 0 ? c->audit_store : "postgresql";
	log_event(LOG_INFO, "audit_started", "store=%s node=%s durability=%s head_seq=%lld key_steps=%lld", safe_url,
		  W.node, W.strict ? "strict" : "default", (long long)W.chain.seq, (long long)key_steps);
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
	W.started = false; /* the sessions and the API are gone: nothing submits any more */
	for (int i = 0; i < W.nqueues; i++) {
		Queue *qu = &W.queues[i];
		chunks_free(qu->committed.chunk); /* every chunk not handed back, linked up to the tail */
		chunks_free(qu->free);
		pthread_mutex_destroy(&qu->mu);
		pthread_mutex_destroy(&qu->free_mu);
		pthread_mutex_destroy(&qu->lost_mu);
	}
	for (size_t i = 0; i < sizeof W.own_body / sizeof *W.own_body; i++) {
		free(W.own_body[i]);
		W.own_body[i] = NULL;
	}
	free(W.head_path);
	W.head_path = NULL;
	rungs_free(&W.rungs);
	free(W.rungs_path);
	W.rungs_path = NULL;
	pthread_mutex_destroy(&W.unrec_mu);
	W.unrec = W.unrec_taken = (Unrecorded){0};
	free(W.queues);
	W.queues = NULL;
	store_close(W.st);
	W.st = NULL;
}
