/* Approval requests and grants: the in-memory table, its rules, and its audit records. */
#include "approval/approval.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "approval/store.h"
#include "approval/webhook.h"
#include "audit/audit.h"
#include "core/log.h"
#include "core/util.h"

static const char *const status_names[] = {"pending", "approved", "denied", "expired", "cancelled"};

/*
 * Each request is its API representation plus what matching needs, kept in fields of the
 * same object ("digest", "*_us" times). The table is bounded: pending requests by count and
 * bytes, decided ones leave memory a day after their last use, or sooner when the table is
 * crowded (forget_old_locked). The store and the audit trail keep them all.
 */
static struct {
	pthread_mutex_t mu;
	json_t **reqs; /* oldest first */
	size_t *sizes; /* request_bytes of each */
	size_t n, cap;
	size_t bytes; /* their sum */
	char *node;
	ApprovalWakeFn wake;
	void *wake_arg;
	uint64_t grants_gen;   /* atomic */
	int64_t next_grant_change_us; /* atomic: the next expiry of an active grant */
	int64_t next_expiry_us; /* no pending request is due to expire before this */
	struct Claiming *claiming; /* this gateway's claims under way, with a shared store */
	bool started;
} T = {.mu = PTHREAD_MUTEX_INITIALIZER, .next_expiry_us = INT64_MAX};

/*
 * A claim under way: its news from the store can arrive before its answer (approval__merge).
 * id must outlive it and not be the table's own string (a merge replaces that).
 */
typedef struct Claiming {
	const char *id;
	int64_t decided_at_us; /* of the end it claims */
	struct Claiming *next;
} Claiming;

static void claiming_begin_locked(Claiming *c, const json_t *end)
{
	c->id = json_string_value(json_object_get(end, "id"));
	c->decided_at_us = (int64_t)json_integer_value(json_object_get(end, "decided_at_us"));
	c->next = T.claiming;
	T.claiming = c;
}

static void claiming_end_locked(Claiming *c)
{
	Claiming **p = &T.claiming;
	while (*p != c)
		p = &(*p)->next;
	*p = c->next;
}

/* Whether end (news from the store) is that of a claim of this gateway still under way. */
static bool claiming_locked(const json_t *end)
{
	const char *id = json_string_value(json_object_get(end, "id"));
	int64_t at = (int64_t)json_integer_value(json_object_get(end, "decided_at_us"));
	for (Claiming *c = T.claiming; c; c = c->next)
		if (id && c->id && strcmp(c->id, id) == 0 && c->decided_at_us == at)
			return true;
	return false;
}

/*
 * Claims end (a request as this gateway would end it) in the store, off the table's lock,
 * and takes what the store holds when the claim is lost. Called, and returns, with T.mu held;
 * the request may have changed meanwhile.
 */
static ApprovalClaim claim_locked(const json_t *end, int wait_ms, char *err, size_t errlen)
{
	Claiming claiming;
	claiming_begin_locked(&claiming, end);
	pthread_mutex_unlock(&T.mu);
	json_t *stored = NULL;
	ApprovalClaim claim = approval_store_claim(end, wait_ms, &stored, err, errlen);
	if (stored) {
		approval__merge(stored); /* decided elsewhere first: what the store says, now */
		json_decref(stored);
	}
	pthread_mutex_lock(&T.mu);
	claiming_end_locked(&claiming);
	return claim;
}

/* A wait-mode request still pending this long after its deadline has lost its session. */
#define ORPHAN_GRACE_US (5 * 1000000LL)

static int64_t now_us(void) { return audit_now_us(); }

static const char *str(const json_t *r, const char *key)
{
	const char *s = json_string_value(json_object_get(r, key));
	return s ? s : "";
}

static int64_t num(const json_t *r, const char *key) { return (int64_t)json_integer_value(json_object_get(r, key)); }

static ApprovalStatus status_of(const json_t *r)
{
	const char *s = str(r, "status");
	for (int i = 0; i < 5; i++)
		if (strcmp(s, status_names[i]) == 0)
			return (ApprovalStatus)i;
	return APR_UNKNOWN;
}

static void set_time(json_t *r, const char *key, int64_t us)
{
	char t[AUDIT_TIME_LEN];
	audit_format_time(us, t);
	json_object_set_new(r, key, json_string(t));
	char k[64];
	snprintf(k, sizeof k, "%s_us", key);
	json_object_set_new(r, k, json_integer(us));
}

static json_t *find_locked(const char *id)
{
	for (size_t i = T.n; i-- > 0;)
		if (strcmp(str(T.reqs[i], "id"), id) == 0)
			return T.reqs[i];
	return NULL;
}

/*
 * When a pending request r is due to end as expired, or 0 for never. A retry-mode statement
 * and a grant have nobody waiting on them: their deadline (approvals.pending_for) is kept
 * here. A wait-mode request is ended by its held session at its deadline; one still pending
 * well after that lost its session (its gateway was killed) and is ended here too.
 */
static int64_t deadline_of(const json_t *r)
{
	int64_t deadline = num(r, "deadline_us");
	if (!deadline && strcmp(str(r, "mode"), "wait") != 0) /* opened by an earlier version: none */
		deadline = num(r, "created_us") + (int64_t)APPROVAL_PENDING_FOR_DEFAULT_MS * 1000;
	return deadline;
}

static int64_t due_at(const json_t *r)
{
	int64_t deadline = status_of(r) == APR_PENDING ? deadline_of(r) : 0;
	return deadline && strcmp(str(r, "mode"), "wait") == 0 ? deadline + ORPHAN_GRACE_US : deadline;
}

static bool overdue(const json_t *r, int64_t now)
{
	int64_t at = due_at(r);
	return at && now >= at;
}

static void note_expiry_locked(const json_t *r)
{
	int64_t at = due_at(r);
	if (at && at < T.next_expiry_us)
		T.next_expiry_us = at;
}

/* The bytes r counts against the table's budget: its texts and a fixed overhead. */
static size_t request_bytes(const json_t *r)
{
	json_t *params = json_object_get(r, "parameters");
	return APPROVAL_REQUEST_OVERHEAD + strlen(str(r, "statement")) +
	       (params ? json_dumpb(params, NULL, 0, JSON_COMPACT) : 0);
}

static void add_locked(json_t *r)
{
	if (T.n == T.cap) {
		T.cap = T.cap ? T.cap * 2 : 64;
		T.reqs = xrealloc(T.reqs, T.cap * sizeof *T.reqs);
		T.sizes = xrealloc(T.sizes, T.cap * sizeof *T.sizes);
	}
	T.sizes[T.n] = request_bytes(r);
	T.bytes += T.sizes[T.n];
	T.reqs[T.n++] = r;
	note_expiry_locked(r);
}

#define FORGET_AFTER_US (86400LL * 1000000) /* a decided request's time in memory after its last use */
#define CROWDED_GRACE_US (60 * 1000000LL)  /* ... when the table is crowded: see forget_old_locked */

/*
 * Drops decided requests a day after their last use (a decision, or the end of an
 * approval's validity). When `room` more bytes would not fit in APPROVAL_TABLE_BYTES, it
 * drops ended requests sooner, oldest first, until they fit. Never one still usable, nor
 * one that people approved or denied in the last minute, which its held session may not
 * have read yet. A cancelled or expired one may go at once: its session ended it, or has
 * left, so a loop of cancelled requests cannot crowd out everyone else's.
 */
static void forget_old_locked(int64_t now, size_t room)
{
	size_t o = 0;
	for (size_t i = 0; i < T.n; i++) {
		json_t *r = T.reqs[i];
		int64_t last = num(r, "decided_at_us") > num(r, "valid_until_us") ? num(r, "decided_at_us")
										    : num(r, "valid_until_us");
		ApprovalStatus st = status_of(r);
		bool ended = st != APR_PENDING && last <= now;
		bool by_people = st == APR_APPROVED || st == APR_DENIED;
		bool crowded = T.bytes + room > APPROVAL_TABLE_BYTES && (!by_people || now - last > CROWDED_GRACE_US);
		if (ended && last && (now - last > FORGET_AFTER_US || crowded)) {
			T.bytes -= T.sizes[i];
			json_decref(r);
		} else {
			T.sizes[o] = T.sizes[i];
			T.reqs[o++] = r;
		}
	}
	T.n = o;
}

size_t approval_table_bytes(size_t *count)
{
	pthread_mutex_lock(&T.mu);
	size_t bytes = T.bytes;
	if (count)
		*count = T.n;
	pthread_mutex_unlock(&T.mu);
	return bytes;
}

static void wake(void)
{
	if (T.wake)
		T.wake(T.wake_arg);
}

static void grants_changed_locked(void)
{
	int64_t now = now_us(), next = INT64_MAX;
	for (size_t i = 0; i < T.n; i++) {
		json_t *r = T.reqs[i];
		int64_t until = num(r, "valid_until_us");
		if (strcmp(str(r, "kind"), "grant") == 0 && status_of(r) == APR_APPROVED && until > now && until < next)
			next = until;
	}
	__atomic_store_n(&T.next_grant_change_us, next, __ATOMIC_RELEASE);
	__atomic_add_fetch(&T.grants_gen, 1, __ATOMIC_ACQ_REL);
}

/* A change: persisted (and announced to other gateways), audited, notified. */
static void changed(json_t *r, const char *event)
{
	approval_store_put(r);
	char *text = json_dumps(r, JSON_COMPACT);
	if (text) {
		/* The record is the request as it now stands, under its event name. */
		size_t n = strlen(text);
		char *body = xasprintf("{\"event\":\"%s\",\"request\":%.*s}", event, (int)n, text);
		audit_submit(audit_other_queue(), "approval", str(r, "session_id")[0] ? str(r, "session_id") : NULL,
			     str(r, "requester"), str(r, "database"), body);
	}
	const char *hook = str(r, "webhook");
	if (hook[0] && text) {
		char line[600];
		const char *who = str(r, "decided_by");
		if (strcmp(event, "opened") == 0 && strcmp(str(r, "kind"), "grant") == 0)
			snprintf(line, sizeof line, "pgcordon: grant request %s by %s is waiting for approval: %s", str(r, "id"),
				 str(r, "requester"), str(r, "why"));
		else if (strcmp(event, "opened") == 0)
			snprintf(line, sizeof line, "pgcordon: %s request %s by %s on %s is waiting for approval: %s (%.200s)",
				 str(r, "kind"), str(r, "id"), str(r, "requester"), str(r, "database"), str(r, "why"),
				 str(r, "statement"));
		else
			snprintf(line, sizeof line, "pgcordon: request %s by %s was %s%s%s", str(r, "id"), str(r, "requester"),
				 str(r, "status"), who[0] ? " by " : "", who);
		json_t *msg = json_pack("{ss sO}", "text", line, "pgcordon", r);
		char *m = msg ? json_dumps(msg, JSON_COMPACT) : NULL;
		json_decref(msg);
		if (m)
			webhook_send(hook, m);
	}
	free(text);
}

static int by_creation(const void *a, const void *b)
{
	json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "created_us")),
		   y = json_integer_value(json_object_get(*(json_t *const *)b, "created_us"));
	return (x > y) - (x < y);
}

bool approval_start(const Config *c, ApprovalWakeFn wake_fn, void *arg, char *err, size_t errlen)
{
	T.wake = wake_fn;
	T.wake_arg = arg;
	free(T.node);
	T.node = xstrdup(c->audit_node);
	T.started = true;
	if (!webhook_start(err, errlen))
		return false;
	json_t **loaded = NULL;
	size_t nloaded = 0;
	if (!approval_store_start(c, &loaded, &nloaded, err, errlen))
		return false;
	if (nloaded) /* lists and their cursor go by this order */
		qsort(loaded, nloaded, sizeof *loaded, by_creation);
	pthread_mutex_lock(&T.mu);
	for (size_t i = 0; i < nloaded; i++)
		add_locked(loaded[i]);
	grants_changed_locked();
	pthread_mutex_unlock(&T.mu);
	free(loaded);
	return true;
}

void approval_stop(void)
{
	approval_store_stop();
	webhook_stop();
	pthread_mutex_lock(&T.mu);
	for (size_t i = 0; i < T.n; i++)
		json_decref(T.reqs[i]);
	free(T.reqs);
	free(T.sizes);
	T.reqs = NULL;
	T.sizes = NULL;
	T.n = T.cap = T.bytes = 0;
	T.next_expiry_us = INT64_MAX;
	T.started = false;
	pthread_mutex_unlock(&T.mu);
}

/*
 * A change read from the shared store: made by another gateway, or by this one in a claim
 * whose answer was lost (approval_store_claim writes the whole decision). The second is
 * this gateway's to announce, once: here, or in approval_decide if the claim's answer came.
 */
void approval__merge(json_t *r)
{
	pthread_mutex_lock(&T.mu);
	json_t *mine = find_locked(str(r, "id"));
	bool grant = strcmp(str(r, "kind"), "grant") == 0;
	if (!mine) {
		add_locked(json_incref(r));
	} else if (status_of(mine) == APR_PENDING && status_of(r) != APR_PENDING) {
		/* Decisions flow in; a request this gateway already ended stays ended here. */
		json_object_update(mine, r);
		if (strcmp(str(r, "decided_on"), T.node) == 0) {
			changed(mine, str(mine, "status"));
			char qs[40];
			if (!claiming_locked(r)) /* else its claimer logs it */
				log_event(LOG_INFO, "approval_decision_from_store", "id=%s status=%s", str(mine, "id"),
					  log_quote(qs, sizeof qs, str(mine, "status")));
		}
	} else {
		grant = false;
	}
	if (grant)
		grants_changed_locked();
	pthread_mutex_unlock(&T.mu);
	wake();
}

void approval_digest(const char *statement, const char *parameters, char out[APPROVAL_DIGEST_LEN])
{
	unsigned char md[32];
	unsigned len = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	EVP_DigestUpdate(ctx, statement, strlen(statement) + 1);
	if (parameters)
		EVP_DigestUpdate(ctx, parameters, strlen(parameters));
	EVP_DigestFinal_ex(ctx, md, &len);
	EVP_MD_CTX_free(ctx);
	util_hex_encode(md, 32, out);
}

/* The decision's fields of a new request: shown as null until it is decided. */
static void set_undecided(json_t *r)
{
	json_object_set_new(r, "decided_by", json_null());
	json_object_set_new(r, "decided_at", json_null());
	json_object_set_new(r, "decision_reason", json_null());
	json_object_set_new(r, "valid_until", json_null());
	json_object_set_new(r, "decided_on", json_null());
}

/* Whether r stands ended as end has it (the same end, made here), not by something else. */
static bool ended_as(const json_t *r, const json_t *end)
{
	return status_of(r) == status_of(end) && num(r, "decided_at_us") == num(end, "decided_at_us") &&
	       strcmp(str(r, "decided_on"), str(end, "decided_on")) == 0;
}

/* Ends r as status st at time at: by whom (NULL: nobody), why, and on which gateway. */
static void set_decided(json_t *r, ApprovalStatus st, const char *by, int64_t at, const char *why)
{
	json_object_set_new(r, "status", json_string(status_names[st]));
	json_object_set_new(r, "decided_by", by ? json_string(by) : json_null());
	set_time(r, "decided_at", at);
	json_object_set_new(r, "decision_reason", why ? json_string(why) : json_null());
	json_object_set_new(r, "decided_on", json_string(T.node));
}

static json_t *string_array(char *const *items, int n)
{
	json_t *a = json_array();
	for (int i = 0; i < n; i++)
		json_array_append_new(a, json_string(items[i]));
	return a;
}

static void new_id(char id[APPROVAL_ID_LEN])
{
	unsigned char b[8];
	util_random(b, sizeof b);
	util_hex_encode(b, sizeof b, id);
}

/*
 * Whether a new request of requester, of `bytes` (request_bytes), may join the table, after
 * making room for it among decided requests if need be.
 */
static ApprovalOpen room_for_locked(const char *requester, size_t bytes, int64_t now)
{
	forget_old_locked(now, bytes);
	size_t pending = 0, theirs = 0, their_bytes = 0;
	for (size_t i = 0; i < T.n; i++) {
		json_t *r = T.reqs[i];
		if (status_of(r) != APR_PENDING || overdue(r, now)) /* not yet marked expired: see below */
			continue;
		pending++;
		if (strcmp(str(r, "requester"), requester) == 0) {
			theirs++;
			their_bytes += T.sizes[i];
		}
	}
	if (theirs >= APPROVAL_PENDING_PER_REQUESTER)
		return APPROVAL_FULL_MINE;
	if (their_bytes + bytes > APPROVAL_BYTES_PER_REQUESTER)
		return APPROVAL_FULL_MINE_BYTES;
	if (pending >= APPROVAL_PENDING_MAX || T.bytes + bytes > APPROVAL_TABLE_BYTES)
		return APPROVAL_FULL;
	return APPROVAL_OPENED;
}

_Static_assert(APPROVAL_TEXT_MAX == 1u << 20 && APPROVAL_BYTES_PER_REQUESTER == 32u << 20,
	       "approval_refusal names these limits");

const char *approval_refusal(ApprovalOpen why)
{
	switch (why) {
	case APPROVAL_TOO_LARGE:
		return "the statement and its parameters are too large to hold for approval (at most 1 MiB)";
	case APPROVAL_FULL_MINE:
		return "you have " UTIL_TEXT(APPROVAL_PENDING_PER_REQUESTER) " approval requests pending; wait for a"
		       " decision on one before asking again";
	case APPROVAL_FULL_MINE_BYTES:
		return "your pending approval requests hold 32 MiB of statements and parameters; wait for a decision"
		       " on one before asking again";
	default:
		return "too many approval requests are pending; try again later";
	}
}

/*
 * Ends the pending requests that are overdue, as expired: at the first call of an entry
 * point after their time (the API's, or a held statement's). With a shared store each end is
 * claimed there first, like a decision, so that one gateway records it and an approval given
 * elsewhere at the same moment wins or loses as a whole. A claim is a round trip: on a worker
 * (may_block false) a shared store's expiries are left to the API's threads, and overdue
 * requests count as ended meanwhile (queue_full_locked, approval_open).
 */
#define EXPIRY_RETRY_US (10 * 1000000LL) /* after the shared store failed an expiry's claim */

static void expire_overdue(bool may_block)
{
	if (!may_block && approval_store_shared())
		return;
	int64_t now = now_us();
	typedef struct {
		json_t *r;
		json_t *ended; /* r as expired, to claim off the lock */
	} Due;
	Due *due = NULL;
	size_t ndue = 0;
	pthread_mutex_lock(&T.mu);
	if (now >= T.next_expiry_us) {
		T.next_expiry_us = INT64_MAX;
		due = xmalloc((T.n ? T.n : 1) * sizeof *due); /* at most every request */
		for (size_t i = 0; i < T.n; i++) {
			json_t *r = T.reqs[i];
			if (!overdue(r, now)) {
				note_expiry_locked(r);
				continue;
			}
			due[ndue].r = json_incref(r);
			due[ndue].ended = json_deep_copy(r);
			set_decided(due[ndue++].ended, APR_EXPIRED, NULL, deadline_of(r), "not decided in time");
		}
	}
	pthread_mutex_unlock(&T.mu);
	int ended = 0;
	bool store_failed = false; /* then the rest are not claimed now, nor again for a while */
	for (size_t i = 0; i < ndue; i++) {
		json_t *r = due[i].r, *overrule = NULL;
		char serr[300];
		pthread_mutex_lock(&T.mu);
		/* Not queued behind another claim: an expiry can wait for a later call. */
		ApprovalClaim claim = store_failed ? CLAIM_FAILED : claim_locked(due[i].ended, 0, serr, sizeof serr);
		store_failed = claim == CLAIM_FAILED;
		bool pending = status_of(r) == APR_PENDING;
		if (store_failed) {
			if (now + EXPIRY_RETRY_US < T.next_expiry_us)
				T.next_expiry_us = now + EXPIRY_RETRY_US;
		} else if (claim == CLAIM_TAKEN && (pending || ended_as(r, due[i].ended))) {
			if (pending) { /* else its news from the store came first, and was announced */
				json_object_update(r, due[i].ended);
				changed(r, status_names[APR_EXPIRED]);
			}
			char qu[80];
			log_event(LOG_INFO, "approval_expired", "id=%s requester=%s", str(r, "id"),
				  log_quote(qu, sizeof qu, str(r, "requester")));
			ended++;
		} else if (claim == CLAIM_TAKEN) {
			overrule = json_deep_copy(r); /* ended here meanwhile, without a claim */
		} else {
			note_expiry_locked(r); /* decided elsewhere: its news is on the way */
		}
		pthread_mutex_unlock(&T.mu);
		if (overrule) {
			approval_store_overrule(overrule, due[i].ended);
			json_decref(overrule);
		}
		json_decref(r);
		json_decref(due[i].ended);
	}
	free(due);
	if (ended)
		wake();
}

ApprovalOpen approval_open(const ApprovalAsk *a, char id[APPROVAL_ID_LEN], bool *created)
{
	*created = false;
	size_t text = strlen(a->statement) + (a->parameters ? strlen(a->parameters) : 0);
	if (text > APPROVAL_TEXT_MAX)
		return APPROVAL_TOO_LARGE;
	int64_t now = now_us();
	bool retry = a->settings->mode == APPROVAL_RETRY;
	expire_overdue(false);
	pthread_mutex_lock(&T.mu);
	for (size_t i = 0; retry && i < T.n; i++) {
		json_t *r = T.reqs[i];
		if (status_of(r) == APR_PENDING && !overdue(r, now) && strcmp(str(r, "mode"), "retry") == 0 &&
		    strcmp(str(r, "digest"), a->digest) == 0 && strcmp(str(r, "requester"), a->requester) == 0 &&
		    strcmp(str(r, "database"), a->database) == 0) {
			snprintf(id, APPROVAL_ID_LEN, "%s", str(r, "id"));
			pthread_mutex_unlock(&T.mu);
			return APPROVAL_OPENED;
		}
	}
	/* As request_bytes will count it: the parameters are stored as the same compact JSON, none as []. */
	ApprovalOpen room = room_for_locked(a->requester, APPROVAL_REQUEST_OVERHEAD + text + !a->parameters * 2, now);
	if (room != APPROVAL_OPENED) {
		pthread_mutex_unlock(&T.mu);
		return room;
	}
	new_id(id);
	json_t *params = a->parameters ? json_loads(a->parameters, 0, NULL) : NULL;
	json_t *r = json_pack("{ss ss ss ss so ss ss ss ss so ss ss ss ss ss so ss}", "id", id, "kind", "statement",
			      "status", "pending", "requester", a->requester, "groups", string_array(a->groups, a->ngroups),
			      "database", a->database, "node", T.node, "session_id", a->session_id, "statement",
			      a->statement, "parameters", params ? params : json_array(), "policy", a->why->policy,
			      "rule", a->why->rule, "why", a->why->why, "mode", retry ? "retry" : "wait", "digest",
			      a->digest, "approvers",
			      string_array(a->settings->approvers.items, a->settings->approvers.n), "webhook",
			      a->settings->webhook ? a->settings->webhook : "");
	set_time(r, "created", now);
	/* wait: the client's wait; retry: how long the request waits for a decision */
	set_time(r, "deadline", now + (int64_t)(retry ? a->settings->pending_for_ms : a->settings->wait_ms) * 1000);
	json_object_set_new(r, "valid_for_ms", json_integer(a->settings->valid_for_ms));
	set_undecided(r);
	add_locked(r);
	changed(r, "opened");
	pthread_mutex_unlock(&T.mu);
	*created = true;
	return APPROVAL_OPENED;
}

bool approval_find_usable(const char *requester, const char *database, const char *digest, char id[APPROVAL_ID_LEN])
{
	int64_t now = now_us();
	bool found = false;
	pthread_mutex_lock(&T.mu);
	for (size_t i = T.n; i-- > 0 && !found;) {
		json_t *r = T.reqs[i];
		if (status_of(r) == APR_APPROVED && strcmp(str(r, "kind"), "statement") == 0 &&
		    strcmp(str(r, "mode"), "retry") == 0 && num(r, "valid_until_us") > now &&
		    strcmp(str(r, "digest"), digest) == 0 && strcmp(str(r, "requester"), requester) == 0 &&
		    strcmp(str(r, "database"), database) == 0) {
			snprintf(id, APPROVAL_ID_LEN, "%s", str(r, "id"));
			found = true;
		}
	}
	pthread_mutex_unlock(&T.mu);
	return found;
}

ApprovalStatus approval_status(const char *id, char *by, size_t bylen, char *reason, size_t reasonlen)
{
	pthread_mutex_lock(&T.mu);
	json_t *r = find_locked(id);
	ApprovalStatus st = r ? status_of(r) : APR_UNKNOWN;
	if (r && by)
		snprintf(by, bylen, "%s", str(r, "decided_by"));
	if (r && reason)
		snprintf(reason, reasonlen, "%s", str(r, "decision_reason"));
	pthread_mutex_unlock(&T.mu);
	return st;
}

static ApprovalStatus end_pending(const char *id, ApprovalStatus to, const char *why)
{
	pthread_mutex_lock(&T.mu);
	json_t *r = find_locked(id);
	ApprovalStatus st = r ? status_of(r) : APR_UNKNOWN;
	if (st == APR_PENDING) {
		set_decided(r, to, NULL, now_us(), why);
		changed(r, status_names[to]);
		st = to;
	}
	pthread_mutex_unlock(&T.mu);
	if (st == to)
		wake(); /* a cancel comes from another session: the held one must look */
	return st;
}

ApprovalStatus approval_cancel(const char *id, const char *why) { return end_pending(id, APR_CANCELLED, why); }

ApprovalStatus approval_expire(const char *id)
{
	return end_pending(id, APR_EXPIRED, "not decided in time");
}

/* ---- grants ---- */

uint64_t approval_grants_generation(void)
{
	int64_t next = __atomic_load_n(&T.next_grant_change_us, __ATOMIC_ACQUIRE);
	if (next != INT64_MAX && next != 0 && now_us() >= next) {
		pthread_mutex_lock(&T.mu);
		if (now_us() >= T.next_grant_change_us)
			grants_changed_locked(); /* a grant expired */
		pthread_mutex_unlock(&T.mu);
	}
	return __atomic_load_n(&T.grants_gen, __ATOMIC_ACQUIRE);
}

static bool has_group(char *const *groups, int n, const char *g)
{
	for (int i = 0; i < n; i++)
		if (strcmp(groups[i], g) == 0)
			return true;
	return false;
}

void approval_apply_grants(EffectivePolicy *ep, const char *user, char *const *groups, int ngroups)
{
	int64_t now = now_us();
	pthread_mutex_lock(&T.mu);
	for (size_t i = 0; i < T.n; i++) {
		json_t *r = T.reqs[i];
		if (strcmp(str(r, "kind"), "grant") != 0 || status_of(r) != APR_APPROVED || num(r, "valid_until_us") <= now)
			continue;
		json_t *g = json_object_get(r, "grant");
		const char *gu = str(g, "user"), *gg = str(g, "group");
		if (!(gu[0] && strcmp(gu, user) == 0) && !(gg[0] && has_group(groups, ngroups, gg)))
			continue;
		bool write = strcmp(str(g, "access"), "write") == 0;
		size_t k;
		json_t *t;
		json_array_foreach(json_object_get(g, "tables"), k, t)
			if (json_is_string(t))
				policy_add_grant(ep, str(r, "id"), json_string_value(t), write);
	}
	pthread_mutex_unlock(&T.mu);
}

/* ---- the admin API ---- */

static bool in_groups(const ApprovalCaller *who, const json_t *groups)
{
	size_t i;
	json_t *g;
	json_array_foreach(groups, i, g)
		if (json_is_string(g) && has_group(who->groups, who->ngroups, json_string_value(g)))
			return true;
	return false;
}

/* What the API shows: the request without the fields kept for matching. */
static json_t *public_view(const json_t *r)
{
	json_t *v = json_deep_copy(r);
	const char *k;
	void *tmp;
	json_t *x;
	json_object_foreach_safe(v, tmp, k, x)
	{
		size_t n = strlen(k);
		if (strcmp(k, "digest") == 0 || strcmp(k, "webhook") == 0 || (n > 3 && strcmp(k + n - 3, "_us") == 0))
			json_object_del(v, k);
	}
	return v;
}

static bool may_see(const ApprovalCaller *who, const json_t *r)
{
	return who->auditor || in_groups(who, json_object_get(r, "approvers")) || strcmp(str(r, "requester"), who->name) == 0;
}

json_t *approval_list(const ApprovalCaller *who, const char *status, int limit, const char *before, const char **bad)
{
	int want = -1;
	if (status && strcmp(status, "all") != 0) {
		for (int i = 0; i < 5; i++)
			if (strcmp(status, status_names[i]) == 0)
				want = i;
		if (want < 0) {
			*bad = "status must be pending, approved, denied, expired, cancelled or all";
			return NULL;
		}
	} else if (!status) {
		want = APR_PENDING;
	}
	approval_grants_generation(); /* expiries first */
	expire_overdue(true);
	pthread_mutex_lock(&T.mu);
	size_t start = T.n;
	if (before) {
		/* A request the caller may not see is no cursor: it must not learn that it exists. */
		for (start = T.n; start-- > 0;)
			if (strcmp(str(T.reqs[start], "id"), before) == 0 && may_see(who, T.reqs[start]))
				break;
		if (start == (size_t)-1) {
			pthread_mutex_unlock(&T.mu);
			*bad = "before must be the id of a request this gateway lists to you (see \"next\")";
			return NULL;
		}
	}
	json_t *list = json_array(), *next = json_null();
	for (size_t i = start; i-- > 0;) {
		json_t *r = T.reqs[i];
		if ((want < 0 || status_of(r) == (ApprovalStatus)want) && may_see(who, r)) {
			if (json_array_size(list) == (size_t)limit) {
				next = json_string(str(json_array_get(list, (size_t)limit - 1), "id"));
				break;
			}
			json_array_append_new(list, public_view(r));
		}
	}
	pthread_mutex_unlock(&T.mu);
	return json_pack("{so so}", "approvals", list, "next", next);
}

json_t *approval_get(const ApprovalCaller *who, const char *id)
{
	expire_overdue(true);
	pthread_mutex_lock(&T.mu);
	json_t *r = find_locked(id);
	json_t *v = r && may_see(who, r) ? public_view(r) : NULL;
	pthread_mutex_unlock(&T.mu);
	return v;
}

static json_t *api_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static json_t *api_error(const char *fmt, ...)
{
	char m[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(m, sizeof m, fmt, ap);
	va_end(ap);
	return json_pack("{ss}", "error", m);
}

unsigned approval_decide(const ApprovalCaller *who, const char *id, bool approve, const char *reason, json_t **out)
{
	expire_overdue(true);
	pthread_mutex_lock(&T.mu);
	json_t *r = find_locked(id);
	unsigned code = 200;
	if (!r) {
		code = 404;
		*out = api_error("no approval request %s", id);
	} else if (!in_groups(who, json_object_get(r, "approvers"))) {
		code = 403;
		*out = api_error("%s is in none of this request's approver groups", who->name);
	} else if (strcmp(str(r, "requester"), who->name) == 0) {
		code = 403;
		*out = api_error("%s cannot decide their own request", who->name);
	} else if (status_of(r) != APR_PENDING) {
		code = 409;
		*out = api_error("the request is already %s", str(r, "status"));
	}
	if (code != 200) {
		pthread_mutex_unlock(&T.mu);
		return code;
	}
	/*
	 * With a shared store another gateway may decide it at the same moment: the store picks
	 * one. That is a round trip, made without holding the table (workers use it), and with the
	 * whole decision, so that one whose answer is lost still comes true (approval__merge).
	 */
	json_t *d = json_deep_copy(r);
	bool grant = strcmp(str(r, "kind"), "grant") == 0;
	int64_t now = now_us();
	set_decided(d, approve ? APR_APPROVED : APR_DENIED, who->name, now, reason);
	if (approve) {
		int64_t span = grant ? num(json_object_get(r, "grant"), "duration_s") * 1000000
				     : num(r, "valid_for_ms") * 1000;
		if (grant || strcmp(str(r, "mode"), "retry") == 0)
			set_time(d, "valid_until", now + span);
	}
	char serr[300];
	ApprovalClaim claim = claim_locked(d, CLAIM_QUEUE_WAIT_MS, serr, sizeof serr);
	if (claim == CLAIM_FAILED) {
		pthread_mutex_unlock(&T.mu);
		json_decref(d);
		*out = api_error("the decision on %s is not confirmed, try again: %s", id, serr);
		return 503;
	}
	r = find_locked(id);
	/* Pending still, or ended by this very decision: its news can come back before its answer. */
	if (claim != CLAIM_TAKEN || !r || (status_of(r) != APR_PENDING && !ended_as(r, d))) {
		/* Decided or ended elsewhere, or here (by its deadline, its session) meanwhile. */
		json_t *overrule = claim == CLAIM_TAKEN && r ? json_deep_copy(r) : NULL;
		*out = api_error("the request %s is already %s", id, r ? str(r, "status") : "gone");
		pthread_mutex_unlock(&T.mu);
		if (overrule) { /* it ended here without a claim: the store must not keep this one */
			approval_store_overrule(overrule, d);
			json_decref(overrule);
		}
		json_decref(d);
		return 409;
	}
	if (status_of(r) == APR_PENDING) {
		json_object_update(r, d);
		changed(r, status_names[status_of(d)]);
		if (grant)
			grants_changed_locked();
	}
	json_decref(d);
	*out = public_view(r);
	pthread_mutex_unlock(&T.mu);
	char qu[80], qb[80];
	log_event(LOG_INFO, approve ? "approval_approved" : "approval_denied", "id=%s requester=%s by=%s", id,
		  log_quote(qu, sizeof qu, str(*out, "requester")), log_quote(qb, sizeof qb, who->name));
	wake();
	return 200;
}

static bool valid_table(const char *t)
{
	size_t n = strlen(t);
	if (n == 0 || n > 127 || t[0] == '.' || t[n - 1] == '.' || strstr(t, ".."))
		return false;
	int dots = 0;
	for (const char *p = t; *p; p++) {
		if (*p == '.')
			dots++;
		else if (!(*p == '_' || *p == '*' || *p == '$' || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
			return false;
	}
	/* A star only as a whole table part: "schema.*". */
	const char *star = strchr(t, '*');
	return dots <= 1 && (!star || (dots == 1 && star == t + n - 1 && star[-1] == '.'));
}

unsigned approval_request_grant(const Config *c, const ApprovalCaller *who, json_t *body, json_t **out)
{
	static const char *const known[] = {"user", "group", "tables", "access", "duration", "reason", NULL};
	const char *k;
	json_t *v;
	json_object_foreach(body, k, v)
	{
		bool ok = false;
		for (const char *const *q = known; *q && !ok; q++)
			ok = strcmp(*q, k) == 0;
		if (!ok) {
			*out = api_error("unknown field \"%.60s\" (user, group, tables, access, duration, reason)", k);
			return 400;
		}
	}
	json_t *u = json_object_get(body, "user"), *g = json_object_get(body, "group"),
	       *tables = json_object_get(body, "tables"), *access = json_object_get(body, "access"),
	       *duration = json_object_get(body, "duration"), *reason = json_object_get(body, "reason");
	if ((u != NULL) == (g != NULL) || (u && !json_is_string(u)) || (g && !json_is_string(g)) ||
	    json_string_length(u ? u : g) == 0 || json_string_length(u ? u : g) > 63) {
		*out = api_error("%s", "give exactly one of \"user\" or \"group\", a name");
		return 400;
	}
	if (!json_is_array(tables) || json_array_size(tables) == 0 || json_array_size(tables) > 100) {
		*out = api_error("%s", "\"tables\" must be a list of 1 to 100 table patterns");
		return 400;
	}
	size_t i;
	json_array_foreach(tables, i, v)
		if (!json_is_string(v) || !valid_table(json_string_value(v)) || strcmp(json_string_value(v), "*") == 0) {
			*out = api_error("%s", "each table must be schema.table, schema.* or table (lower case)");
			return 400;
		}
	const char *acc = access ? json_string_value(access) : "read";
	if (!acc || (strcmp(acc, "read") != 0 && strcmp(acc, "write") != 0)) {
		*out = api_error("%s", "\"access\" must be read or write");
		return 400;
	}
	int64_t secs;
	if (!json_is_string(duration) || !config_parse_period_s(json_string_value(duration), &secs) || secs < 1 ||
	    secs > 7 * 86400) {
		*out = api_error("%s", "\"duration\" must be a period like 30m, 2h (at most 7d)");
		return 400;
	}
	if (!json_is_string(reason) || json_string_length(reason) == 0 || json_string_length(reason) > 1000) {
		*out = api_error("%s", "\"reason\" is required (a string of at most 1000 characters)");
		return 400;
	}
	ApprovalSettings a;
	config_approval_settings(c, NULL, &a);
	if (!a.approvers.n) {
		*out = api_error("%s", "no approvals.approvers are configured: grants cannot be decided");
		return 400;
	}
	char id[APPROVAL_ID_LEN];
	new_id(id);
	int64_t now = now_us();
	char why[200];
	snprintf(why, sizeof why, "%s access for %s %s for %s", acc, u ? "user" : "group",
		 json_string_value(u ? u : g), json_string_value(duration));
	json_t *grant = json_pack("{sO sO sO ss sI}", "user", u ? u : json_null(), "group", g ? g : json_null(), "tables",
				  tables, "access", acc, "duration_s", (json_int_t)secs);
	json_t *r = json_pack("{ss ss ss ss so ss ss ss ss so ss ss ss so ss ss}", "id", id, "kind", "grant", "status",
			      "pending", "requester", who->name, "groups", string_array(who->groups, who->ngroups),
			      "database", "", "node", T.node, "session_id", "", "statement", "", "grant", grant,
			      "policy", "", "rule", "grant", "why", why, "approvers",
			      string_array(a.approvers.items, a.approvers.n), "mode", "", "webhook",
			      a.webhook ? a.webhook : "");
	json_object_set(r, "request_reason", reason);
	json_object_set_new(r, "parameters", json_array());
	set_time(r, "created", now);
	set_time(r, "deadline", now + (int64_t)a.pending_for_ms * 1000);
	set_undecided(r);
	expire_overdue(true);
	pthread_mutex_lock(&T.mu);
	ApprovalOpen room = room_for_locked(who->name, request_bytes(r), now);
	if (room != APPROVAL_OPENED) {
		pthread_mutex_unlock(&T.mu);
		json_decref(r);
		*out = api_error("%s", approval_refusal(room));
		return 429;
	}
	add_locked(r);
	changed(r, "opened");
	*out = public_view(r);
	pthread_mutex_unlock(&T.mu);
	return 201;
}

json_t *approval_list_grants(const ApprovalCaller *who, bool all)
{
	int64_t now = now_us();
	json_t *list = json_array();
	expire_overdue(true);
	pthread_mutex_lock(&T.mu);
	for (size_t i = T.n; i-- > 0;) {
		json_t *r = T.reqs[i];
		if (strcmp(str(r, "kind"), "grant") != 0 || !may_see(who, r))
			continue;
		bool active = status_of(r) == APR_APPROVED && num(r, "valid_until_us") > now;
		if (!all && !active)
			continue;
		json_t *v = public_view(r);
		json_object_set_new(v, "active", json_boolean(active));
		json_array_append_new(list, v);
	}
	pthread_mutex_unlock(&T.mu);
	return json_pack("{so}", "grants", list);
}
