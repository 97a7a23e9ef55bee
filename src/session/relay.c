/*
 * The relay of an established session: every message in both directions, with the policy
 * hooks. Bytes that need no attention are moved in bulk (one evbuffer move per wake-up);
 * only Query, Parse, Bind and FunctionCall are copied out whole, and only when a policy
 * restricts the identity.
 *
 * A refused message is never answered by the gateway directly: it is replaced by a
 * "poison" message that makes the upstream fail in the same place (a syntax error), and
 * that upstream ErrorResponse is replaced by the refusal. So the error reaches the client
 * in order, the server skips to Sync exactly as the client expects, and a transaction block
 * fails on both sides. See "Extended Query" in the PostgreSQL protocol docs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/sql_parse.h"
#include "core/util.h"
#include "policy/cache.h"
#include "session/cancel.h"
#include "session/hold.h"
#include "approval/approval.h"
#include "session/session_internal.h"
#include "session/audit_trail.h"
#include "audit/audit.h"
#include "mask/mask.h"
#include "session/rowplan.h"

#define POISON_SQL "pgcordon_refused"

/* A statement name no client knows, so a poisoned Bind fails upstream. */
static char poison_statement[40];

static void init_poison_name(void)
{
	if (!poison_statement[0]) {
		uint8_t r[8];
		util_random(r, sizeof r);
		snprintf(poison_statement, sizeof poison_statement, "pgcordon_refused_%02x%02x%02x%02x%02x%02x%02x%02x",
			 r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]);
	}
}

/* ---- prepared statements known to the session ---- */

typedef struct Prepared {
	char *name; /* 'P' + protocol name, or 'S' + SQL PREPARE name */
	CachedFacts *facts;
	RowPlan *rowplan; /* its rows are masked in the gateway (mask/rowmask.c) */
	char *sql;        /* its text: a Bind held for approval names it */
	struct Prepared *next;
} Prepared;

static unsigned prepared_bucket(const char *name)
{
	unsigned h = 5381;
	for (const char *p = name; *p; p++)
		h = h * 33 + (unsigned char)*p;
	return h % SESSION_PREPARED_BUCKETS;
}

static Prepared *prepared_find(Session *s, const char *name)
{
	if (!s->prepared)
		return NULL;
	for (Prepared *p = s->prepared[prepared_bucket(name)]; p; p = p->next)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

static void prepared_put(Session *s, char ns, const char *name, CachedFacts *facts, const char *sql)
{
	char key[300];
	snprintf(key, sizeof key, "%c%s", ns, name);
	Prepared *p = prepared_find(s, key);
	if (p) {
		cached_facts_release(p->facts);
	} else {
		if (!s->prepared)
			s->prepared = xcalloc(SESSION_PREPARED_BUCKETS, sizeof *s->prepared);
		if (s->nprepared >= SESSION_PREPARED_MAX)
			return; /* not remembered: a later Bind of it is refused (fail closed) */
		p = xcalloc(1, sizeof *p);
		p->name = xstrdup(key);
		unsigned b = prepared_bucket(key);
		p->next = s->prepared[b];
		s->prepared[b] = p;
		s->nprepared++;
	}
	cached_facts_ref(facts);
	p->facts = facts;
	free(p->sql);
	p->sql = ns == 'P' ? xstrdup(sql) : NULL;
}

void session__free_prepared(Session *s)
{
	if (!s->prepared)
		return;
	for (int b = 0; b < SESSION_PREPARED_BUCKETS; b++) {
		Prepared *p = s->prepared[b];
		while (p) {
			Prepared *next = p->next;
			cached_facts_release(p->facts);
			rowplan_release(p->rowplan);
			free(p->sql);
			free(p->name);
			free(p);
			p = next;
		}
	}
	free(s->prepared);
	s->prepared = NULL;
}

/* The protocol-level prepared statement of that name, or NULL. */
static Prepared *protocol_prepared(Session *s, const char *name)
{
	char key[300];
	if (!name || strlen(name) >= sizeof key - 2)
		return NULL;
	snprintf(key, sizeof key, "P%s", name);
	return prepared_find(s, key);
}

static const QueryFacts *lookup_sql_prepared(void *arg, const char *name)
{
	char key[300];
	snprintf(key, sizeof key, "S%s", name);
	Prepared *p = prepared_find(arg, key);
	return p ? cached_facts(p->facts) : NULL;
}

/* ---- policy refresh ---- */

/* Picks up a reloaded config before the next statement (policies apply to open sessions). */
static bool policy_stale(const Session *s)
{
	return s->policy_generation != config_live_generation() || s->grants_generation != approval_grants_generation();
}

static void refresh_policy(Session *s)
{
	if (!policy_stale(s))
		return;
	Config *c = config_current();
	if (!c)
		return;
	if (s->apikey_hash) {
		/* A key removed or replaced in the config is revoked for open sessions too. */
		const ApiKeyConfig *k = config_find_api_key(c, s->user_name);
		if (!k || strcmp(k->hash, s->apikey_hash) != 0) {
			config_release(c);
			char qu[80];
			log_event(LOG_INFO, "credential_revoked", "session=%llu user=%s method=apikey",
				  (unsigned long long)s->id, log_quote(qu, sizeof qu, s->user_name));
			session_close(s, "API key revoked", "28000", "pgcordon: the API key of this session was revoked");
			return;
		}
	}
	/* A local user's groups come from the new config; one removed from it keeps the groups it
	 * logged in with (removing a user stops new logins; policies decide what open sessions
	 * may do). Token and API key identities keep the groups they proved. */
	const UserConfig *u = s->user ? config_find_user(c, s->user_name) : NULL;
	session__policy_release(s);
	/* The role stays the one the upstream session started with. */
	EffectivePolicy *ep = u ? session__policy_acquire(s, c, u->groups, u->ngroups)
				: session__policy_acquire(s, c, s->groups, s->ngroups);
	config_release(c);
	/* The catalog was loaded for the old rules: the next statement waits for a new one. */
	mask_catalog_free(s->mask_cat);
	s->mask_cat = NULL;
	char q[300];
	log_event(LOG_INFO, "policy_refreshed", "session=%llu policies=%s", (unsigned long long)s->id,
		  log_quote(q, sizeof q, ep->names));
}

/* ---- helpers ---- */

/* Copies n bytes at offset off of buf (which holds at least off + n) without consuming them. */
static void peek_at(struct evbuffer *buf, size_t off, void *dst, size_t n)
{
	struct evbuffer_ptr p;
	evbuffer_ptr_set(buf, &p, off, EVBUFFER_PTR_SET);
	evbuffer_copyout_from(buf, &p, dst, n);
}

/* A message header and, when there is one, the first body byte: returns how many (5 or 6). */
static size_t peek_header(struct evbuffer *buf, size_t off, size_t avail, uint8_t hdr[6])
{
	size_t n = avail - off >= 6 ? 6 : 5;
	peek_at(buf, off, hdr, n);
	return n;
}

/* Copies bytes [off, off+n) of buf into the session's scratch space (NUL-terminated). */
static uint8_t *copy_out(Session *s, struct evbuffer *buf, size_t off, size_t n)
{
	if (s->scratch_cap < n + 1) {
		free(s->scratch);
		s->scratch_cap = n + 1 < 4096 ? 4096 : n + 1;
		s->scratch = xmalloc(s->scratch_cap);
	}
	peek_at(buf, off, s->scratch, n);
	s->scratch[n] = 0;
	return (uint8_t *)s->scratch;
}

/*
 * Bytes [off, off+n) of buf for a reader that stays within n bytes: in place when they lie
 * in its first segment (an answer read in one go), else copied out. Not NUL-terminated in
 * place. Valid until buf changes.
 */
static const uint8_t *view_at(Session *s, struct evbuffer *buf, size_t off, size_t n)
{
	if (off + n <= evbuffer_get_contiguous_space(buf))
		return evbuffer_pullup(buf, (ev_ssize_t)(off + n)) + off; /* within the first segment: no copy */
	return copy_out(s, buf, off, n);
}

static void log_decision(Session *s, const QueryFacts *q, const Decision *d)
{
	if (d->kind == DEC_ALLOW)
		metrics_inc(MET_DECISION_ALLOW); /* a refusal counts in refuse(), whatever refused it */
	if (d->kind == DEC_ALLOW && !s->config->log_all_decisions && !log_enabled(LOG_DEBUG))
		return;
	char qu[80], qd[80], qm[400];
	const char *first_kind = q->nstmts && q->stmts[0].kinds.n ? q->stmts[0].kinds.items[0] : "none";
	log_event(d->kind == DEC_ALLOW && !s->config->log_all_decisions ? LOG_DEBUG : LOG_INFO,
		  d->kind == DEC_ALLOW ? "statement_allowed" : "statement_blocked",
		  "session=%llu user=%s database=%s fingerprint=%016llx kind=%s policy=%s rule=%s%s%s",
		  (unsigned long long)s->id, log_quote(qu, sizeof qu, s->user_name),
		  log_quote(qd, sizeof qd, s->database_name), (unsigned long long)q->fingerprint, first_kind,
		  d->policy[0] ? d->policy : "-", d->rule[0] ? d->rule : "-", d->kind == DEC_BLOCK ? " reason=" : "",
		  d->kind == DEC_BLOCK ? log_quote(qm, sizeof qm, d->message) : "");
}

/* Appends a poison message to the upstream output in place of a refused one. */
static void send_poison(Session *s, char type)
{
	MsgBuilder b;
	msgb_init(&b);
	if (type == 'P') {
		msgb_begin(&b, 'P');
		msgb_str(&b, "");
		msgb_str(&b, POISON_SQL);
		msgb_u16(&b, 0);
		msgb_end(&b);
	} else if (type == 'B') {
		init_poison_name();
		msgb_begin(&b, 'B');
		msgb_str(&b, "");
		msgb_str(&b, poison_statement);
		msgb_u16(&b, 0);
		msgb_u16(&b, 0);
		msgb_u16(&b, 0);
		msgb_end(&b);
	} else {
		/* Query and FunctionCall both answer ErrorResponse then ReadyForQuery. */
		msgb_begin(&b, 'Q');
		msgb_str(&b, POISON_SQL);
		msgb_end(&b);
	}
	session__queue(s->server.out, &b);
}

/* ---- client → server ---- */

typedef enum {
	ACT_FORWARD,
	ACT_REPLACED,  /* refused: dropped, the refusal is queued */
	ACT_REWRITTEN, /* masked: dropped, the rewritten message is already queued upstream */
	ACT_HOLD,      /* held for approval: it stays in client.in (session/hold.c) */
	ACT_CLOSED
} Action;

/* Records the refusal on the message's pipeline entry and poisons the upstream. */
static Action refuse(Session *s, char type, const Decision *d)
{
	Expectation *e;
	metrics_inc(MET_DECISION_BLOCK);
	if (!pipeline_on_frontend(&s->pipeline, type, 0, &e) || !e) {
		session_close(s, "pipeline full", "54000", "too many pipelined messages without reading results");
		return ACT_CLOSED;
	}
	e->audit = s->audit_pending;
	s->audit_pending = NULL;
	e->refusal = xstrdup(d->message);
	e->refusal_sqlstate = d->sqlstate;
	send_poison(s, type);
	return ACT_REPLACED;
}

/* The audit record of the message being decided, created from its decision. */
static void audit_decided(Session *s, char type, const char *sql, const uint8_t *body, size_t blen, const Decision *d)
{
	if (!s->auditing)
		return;
	if (type == 'Q' || (type == 'P' && d && d->kind == DEC_BLOCK))
		s->audit_pending = session__audit_stmt(s, sql, d);
	else if (type == 'B')
		s->audit_pending = session__audit_bind(s, body, blen, d);
	else if (type == 'F')
		s->audit_pending = session__audit_stmt(s, "(FunctionCall)", d);
}

/* Logs, records and refuses a decision made without the statement's facts. */
static Action refuse_unread(Session *s, char type, const char *sql, const Decision *d)
{
	const QueryFacts none = {0};
	log_decision(s, &none, d);
	audit_decided(s, type, sql, NULL, 0, d);
	return refuse(s, type, d);
}

/* A refusal by masking (rule "mask"), as a decision. */
static Action refuse_mask(Session *s, char type, const char *sql, const char *why)
{
	Decision d = {.kind = DEC_BLOCK, .sqlstate = "42501", .policy = s->policy->mask_by, .rule = "mask"};
	snprintf(d.message, sizeof d.message, "pgcordon: blocked by policy %.100s: %s", s->policy->mask_by, why);
	return refuse_unread(s, type, sql, &d);
}

/*
 * Masking: the statement goes upstream rewritten so that it reads masked relations through
 * their masking subqueries (mask/rewrite.c), or is refused when that cannot be made sound.
 */
static Action mask_statement(Session *s, char type, const char *sql, const char *stmt_name, const uint8_t *rest,
			     size_t restlen, const QueryFacts *q)
{
	if (!s->mask_cat) {
		/* Without a catalog only transaction control may pass: it reads nothing (and ends an
		 * aborted transaction, in which the catalog cannot be loaded). */
		bool control = q->nstmts > 0 && !q->error;
		for (int i = 0; control && i < q->nstmts; i++)
			control = q->stmts[i].kinds.n == 1 && strcmp(q->stmts[i].kinds.items[0], "transaction") == 0;
		if (control) {
			s->rowplan_next = rowplan_new(); /* its (empty) results are masked by origin too */
			return ACT_FORWARD;
		}
		s->mask_gen = 0; /* load it again before the next statement */
		return refuse_mask(s, type, sql, s->mask_error ? s->mask_error : "the masking catalog is not loaded");
	}
	char reason[256], *out = NULL;
	RewriteOptions o = {.predicate_block = s->policy->mask_predicate_block, .rows_in_gateway = s->client_utf8};
	RewriteResult r = mask_rewrite(s->mask_cat, &o, sql, &out, reason, sizeof reason);
	if (r == REWRITE_REFUSE)
		return refuse_mask(s, type, sql, reason);
	/*
	 * Every statement's rows are masked by their fields' origins, not only plain reads
	 * (REWRITE_ROWS): EXECUTE and FETCH by SQL reach statements and portals prepared as
	 * written, and a Parse the server rejects leaves the earlier statement of that name.
	 * Rewritten columns carry no origin, so this never masks twice.
	 */
	/* The server reports a new client_encoding only at the next ReadyForQuery: from here on,
	 * until a ParameterStatus says UTF8 again, characters are not counted as UTF-8. */
	for (int i = 0; i < q->nstmts; i++)
		if (strset_has(&q->stmts[i].kinds, "set_client_encoding"))
			s->client_utf8 = false;
	s->rowplan_next = rowplan_new();
	if (r == REWRITE_PASS || r == REWRITE_ROWS)
		return ACT_FORWARD;
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, type);
	if (type == 'P')
		msgb_str(&b, stmt_name);
	msgb_str(&b, out);
	if (type == 'P')
		msgb_bytes(&b, rest, restlen);
	msgb_end(&b);
	free(out);
	if (b.failed) {
		msgb_free(&b);
		return refuse_mask(s, type, sql, "the masked statement is too large");
	}
	session__queue(s->server.out, &b);
	return ACT_REWRITTEN;
}

static Action estimate_gate(Session *s, const char *sql, int nstmts, bool has_params, const Decision **d,
			    Decision *resolved);

/*
 * The parse costs the worker (and every session on it) time and memory in proportion to
 * the text, up to about 1 KB a byte: a longer text is refused unread.
 */
static Action refuse_oversized(Session *s, char type, const char *sql, size_t len)
{
	Decision d = {.kind = DEC_BLOCK, .sqlstate = "54000", .policy = "", .rule = "size"};
	snprintf(d.message, sizeof d.message,
		 "pgcordon: statement too large to inspect (%zu bytes; limits.max_statement_size is %u)", len,
		 s->config->max_statement_size);
	return refuse_unread(s, type, sql, &d);
}

void session__inspect_forget(Session *s)
{
	if (s->inspect_job)
		inspect_job_abandon(s->inspect_job);
	s->inspect_job = NULL;
	if (s->inspect_facts)
		cached_facts_release(s->inspect_facts);
	s->inspect_facts = NULL;
}

/*
 * The facts of a text too long to parse while the worker's other sessions wait: a pool
 * thread inspects it (NULL until then; on_notify judges the message again). They are kept
 * until the message is settled: a review or an estimate may hold it again.
 */
static CachedFacts *long_facts(Session *s, const char *sql, size_t len)
{
	if (s->inspect_job && !inspect_job_is_for(s->inspect_job, sql, len))
		session__inspect_forget(s); /* not expected: the relay forgets it once the message is settled */
	if (!s->inspect_job) {
		s->inspect_job = inspect_job_start(s->worker, sql, len);
		if (!s->inspect_job)
			return facts_cache_get(s->sw_cache, sql, len); /* no thread for it: here, as before */
	}
	if (!s->inspect_facts) {
		if (!inspect_job_done(s->inspect_job))
			return NULL;
		s->inspect_facts = cached_facts_adopt(inspect_job_take(s->inspect_job));
	}
	cached_facts_ref(s->inspect_facts);
	return s->inspect_facts;
}

/* Decides a Query or Parse by its facts cf (a reference it releases). */
static Action judge_query(Session *s, CachedFacts *cf, const char *sql, char type, const char *stmt_name,
			  const uint8_t *rest, size_t restlen)
{
	Decision scratch, resolved;
	const Decision *d = cached_decide(cf, s->policy, lookup_sql_prepared, s, &scratch);
	const QueryFacts *q = cached_facts(cf);
	Action a = ACT_FORWARD;
	if (d->kind == DEC_REVIEW) {
		if (type == 'P') {
			/* A Parse runs nothing: its Bind is reviewed, with the parameters. */
			resolved = *d;
			resolved.kind = DEC_ALLOW;
		} else if (session__review(s, sql, NULL, d, &resolved) == HOLD_WAIT) {
			cached_facts_release(cf);
			return ACT_HOLD;
		}
		d = &resolved;
	}
	if (d->kind == DEC_ALLOW && d->estimate_over && !d->approval[0] && type != 'P' &&
	    estimate_gate(s, sql, q->nstmts, false, &d, &resolved) == ACT_HOLD) {
		cached_facts_release(cf);
		return ACT_HOLD;
	}
	/* A refusal by masking logs and records its own decision instead of the policy's. */
	if (d->kind == DEC_ALLOW && s->policy->masks_columns &&
	    (a = mask_statement(s, type, sql, stmt_name, rest, restlen, q)) == ACT_REPLACED) {
		cached_facts_release(cf);
		return a;
	}
	log_decision(s, q, d);
	audit_decided(s, type, sql, NULL, 0, d);
	if (d->kind == DEC_BLOCK) {
		a = refuse(s, type, d); /* d may live in cf: an uncached text's facts die with it */
		cached_facts_release(cf);
		return a;
	}
	if (type == 'P') {
		prepared_put(s, 'P', stmt_name, cf, sql);
		Prepared *p = protocol_prepared(s, stmt_name);
		if (p) {
			rowplan_release(p->rowplan);
			p->rowplan = s->rowplan_next;
			s->rowplan_next = NULL;
		}
	}
	for (int i = 0; i < q->nstmts; i++)
		if (q->stmts[i].prepare_name)
			prepared_put(s, 'S', q->stmts[i].prepare_name, cf, NULL);
	cached_facts_release(cf);
	return a;
}

static Action inspect_query(Session *s, const char *sql, size_t len, char type, const char *stmt_name,
			    const uint8_t *rest, size_t restlen)
{
	if (len > s->config->max_statement_size)
		return refuse_oversized(s, type, sql, len);
	if (len <= SQL_PARSE_INLINE_MAX)
		return judge_query(s, facts_cache_get(s->sw_cache, sql, len), sql, type, stmt_name, rest, restlen);
	CachedFacts *cf = long_facts(s, sql, len);
	return cf ? judge_query(s, cf, sql, type, stmt_name, rest, restlen) : ACT_HOLD;
}

static bool bind_has_params(const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	msgr_str(&r);
	msgr_str(&r);
	uint16_t nformats = msgr_u16(&r);
	msgr_bytes(&r, 2 * (size_t)nformats);
	return msgr_u16(&r) != 0 || r.failed;
}

/*
 * estimated_rows_over: the statement waits for the planner's estimate, then passes or is held
 * for review like any other (*d then points to resolved). Once held, its request decides.
 */
static Action estimate_gate(Session *s, const char *sql, int nstmts, bool has_params, const Decision **d,
			    Decision *resolved)
{
	Decision held;
	EstimateOutcome eo = session__estimate(s, sql, nstmts, has_params, *d, &held);
	if (eo == EST_WAIT)
		return ACT_HOLD;
	if (eo == EST_UNDER)
		return ACT_FORWARD;
	HoldOutcome h = session__review(s, sql, NULL, &held, resolved);
	if (h == HOLD_WAIT)
		return ACT_HOLD;
	*d = resolved;
	return ACT_FORWARD;
}

/* returned_rows_over: what the next Execute of this portal runs, for a request to run it again. */
static void remember_bind(Session *s, const char *sql, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	const char *portal = msgr_str(&r);
	free(s->rows_portal);
	free(s->rows_sql);
	free(s->rows_params);
	s->rows_portal = xstrdup(portal ? portal : "");
	s->rows_sql = xstrdup(sql ? sql : "");
	s->rows_params = session__bind_params(body, blen);
}

/* Sets the returned_rows_over cut-off of a Query or Execute, unless an approval lifts it. */
static void review_rows(Session *s, Expectation *e, char type, const uint8_t *body, size_t blen)
{
	const char *sql = NULL, *params = NULL;
	if (type == 'Q') {
		sql = (const char *)body;
	} else {
		MsgReader r;
		msgr_init(&r, body, blen);
		const char *portal = msgr_str(&r);
		if (!portal || !s->rows_portal || strcmp(portal, s->rows_portal) != 0)
			return; /* not a portal this session bound under the rule */
		sql = s->rows_sql;
		params = s->rows_params;
	}
	if (session__rows_approved(s, sql, params))
		return;
	e->review_rows = s->policy->returned_rows_over;
	e->review_sql = xstrdup(sql);
	e->review_params = params ? xstrdup(params) : NULL;
}

/* Decides one whole client message that may need inspection. */
static Action inspect_client_message(Session *s, char type, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	switch (type) {
	case 'Q': {
		const char *sql = msgr_str(&r);
		if (!sql || msgr_remaining(&r) != 0) {
			session_close(s, "invalid Query message", "08P01", "invalid Query message");
			return ACT_CLOSED;
		}
		return inspect_query(s, sql, strlen(sql), 'Q', NULL, NULL, 0);
	}
	case 'P': {
		const char *name = msgr_str(&r);
		const char *sql = msgr_str(&r);
		if (!sql) {
			session_close(s, "invalid Parse message", "08P01", "invalid Parse message");
			return ACT_CLOSED;
		}
		return inspect_query(s, sql, strlen(sql), 'P', name, body + r.pos, msgr_remaining(&r));
	}
	case 'B': {
		msgr_str(&r); /* portal */
		const char *stmt = msgr_str(&r);
		Prepared *p = protocol_prepared(s, stmt);
		Decision scratch;
		if (!p) {
			memset(&scratch, 0, sizeof scratch);
			scratch.kind = DEC_BLOCK;
			scratch.sqlstate = "26000";
			scratch.policy = "";
			scratch.rule = "unknown_statement";
			snprintf(scratch.message, sizeof scratch.message,
				 "pgcordon: prepared statement \"%.63s\" was not inspected by this session",
				 stmt ? stmt : "?");
			audit_decided(s, 'B', NULL, body, blen, &scratch);
			return refuse(s, 'B', &scratch);
		}
		if (s->policy->masks_columns && !p->rowplan) {
			/* Prepared before masking applied to this session (a reload): run as written. */
			memset(&scratch, 0, sizeof scratch);
			scratch.kind = DEC_BLOCK;
			scratch.sqlstate = "42501";
			scratch.policy = s->policy->mask_by;
			scratch.rule = "mask";
			snprintf(scratch.message, sizeof scratch.message,
				 "pgcordon: prepared statement \"%.63s\" was prepared before masking applied to this session;"
				 " prepare it again",
				 stmt);
			audit_decided(s, 'B', NULL, body, blen, &scratch);
			return refuse(s, 'B', &scratch);
		}
		/* Judged again at every Bind: cheap (memoized), and a reload applies at once. */
		const Decision *d = cached_decide(p->facts, s->policy, lookup_sql_prepared, s, &scratch);
		Decision resolved;
		if (d->kind == DEC_REVIEW) {
			char *params = session__bind_params(body, blen);
			HoldOutcome h = session__review(s, p->sql ? p->sql : "", params, d, &resolved);
			free(params);
			if (h == HOLD_WAIT)
				return ACT_HOLD;
			d = &resolved;
		}
		if (d->kind == DEC_ALLOW && d->estimate_over && !d->approval[0] &&
		    estimate_gate(s, p->sql ? p->sql : "", cached_facts(p->facts)->nstmts, bind_has_params(body, blen), &d,
				  &resolved) == ACT_HOLD)
			return ACT_HOLD;
		if (d->kind == DEC_ALLOW && s->policy->returned_rows_over)
			remember_bind(s, p->sql, body, blen);
		audit_decided(s, 'B', NULL, body, blen, d);
		if (d->kind == DEC_BLOCK) {
			log_decision(s, cached_facts(p->facts), d);
			return refuse(s, 'B', d);
		}
		metrics_inc(MET_DECISION_ALLOW); /* not logged: a Bind per execution would flood the log */
		return ACT_FORWARD;
	}
	case 'F': {
		/* FunctionCall names a function by OID, which no name-based rule can judge. */
		Decision d = {.kind = DEC_BLOCK, .sqlstate = "42501", .policy = s->policy->names, .rule = "function_call"};
		snprintf(d.message, sizeof d.message,
			 "pgcordon: blocked by policy %.100s: the FunctionCall protocol message is not allowed",
			 s->policy->names);
		audit_decided(s, 'F', NULL, NULL, 0, &d);
		return refuse(s, 'F', &d);
	}
	default:
		return ACT_FORWARD;
	}
}

/*
 * PostgreSQL keeps statement and portal names cut to NAMEDATALEN - 1 bytes: two longer
 * names with the same first 63 bytes are one object upstream and two here, and what the
 * gateway judged (or learned the result shape of) under one would run under the other.
 */
#define NAME_MAX_BYTES 63

static bool names_fit(char type, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	const char *a = NULL, *b = NULL;
	if (type == 'P' || type == 'E') {
		a = msgr_str(&r);
	} else if (type == 'B') {
		a = msgr_str(&r);
		b = msgr_str(&r);
	} else if (type == 'D' || type == 'C') {
		msgr_u8(&r);
		a = msgr_str(&r);
	}
	return (!a || strlen(a) <= NAME_MAX_BYTES) && (!b || strlen(b) <= NAME_MAX_BYTES);
}

static bool wants_whole(const Session *s, char type)
{
	return (s->inspecting && (type == 'Q' || type == 'P' || type == 'B' || type == 'F' ||
				  (type == 'E' && s->policy->returned_rows_over))) ||
	       (s->auditing && (type == 'Q' || type == 'P' || type == 'B' || type == 'E' || type == 'F' || type == 'C')) ||
	       (s->policy->masks_columns && (type == 'B' || type == 'D' || type == 'E' || type == 'C'));
}

/* A Describe of a portal the gateway asks for itself: its RowDescription fills the row plan. */
static void describe_for_plan(Session *s, const char *portal, RowPlan *plan)
{
	Expectation *e;
	if (!pipeline_on_frontend(&s->pipeline, 'D', 'P', &e) || !e)
		return;
	e->internal = true;
	e->rowplan = rowplan_ref(plan);
	plan->describing++;
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'D');
	msgb_u8(&b, 'P');
	msgb_str(&b, portal);
	msgb_end(&b);
	session__queue(s->server.out, &b);
}

/*
 * Row plans follow statements through the extended protocol: Bind gives a portal its
 * statement's plan, Describe and Execute answers carry it, Close forgets it. An Execute
 * whose plan has no RowDescription yet (and none coming) gets an internal Describe first.
 * Returns the plan the message's own answer carries (not a reference), or NULL.
 */
static RowPlan *rowplan_client_message(Session *s, char type, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	if (type == 'Q') {
		return s->rowplan_next;
	} else if (type == 'B') {
		const char *portal = msgr_str(&r), *stmt = msgr_str(&r);
		Prepared *p = protocol_prepared(s, stmt);
		if (portal)
			session__portal_set_plan(s, portal, p ? p->rowplan : NULL);
	} else if (type == 'D' || type == 'C') {
		uint8_t kind = msgr_u8(&r);
		const char *name = msgr_str(&r);
		if (!name)
			return NULL;
		Prepared *p = kind == 'S' ? protocol_prepared(s, name) : NULL;
		RowPlan *plan = kind == 'S' ? (p ? p->rowplan : NULL) : session__portal_plan(s, name);
		if (type == 'D') {
			if (plan)
				plan->describing++; /* popped with its Expectation (pipeline.c) */
			return plan;
		}
		if (kind == 'S' && p) {
			rowplan_release(p->rowplan);
			p->rowplan = NULL;
		} else if (kind == 'P') {
			session__portal_set_plan(s, name, NULL);
		}
	} else if (type == 'E') {
		const char *portal = msgr_str(&r);
		RowPlan *plan = portal ? session__portal_plan(s, portal) : NULL;
		if (plan && !plan->mask && !plan->describing)
			describe_for_plan(s, portal, plan);
		return plan;
	}
	return NULL;
}

/*
 * An Execute is taken whole only to be read (for the audit, or a returned-rows review) and
 * is never refused, held or rewritten, so it is read where it stands: a
 * Bind/Describe/Execute/Sync group leaves in one piece. A masked
 * session's Execute may be preceded by an internal Describe (rowplan_client_message), which
 * must follow the Bind before it upstream: there the bytes before it go first, as for any
 * message taken whole.
 */
static bool read_in_place(const Session *s, char type)
{
	return type == 'E' && !s->policy->masks_columns;
}

/*
 * A client's Query or Execute going upstream: its row limit, and when it left
 * (time_statement). False for any other message.
 */
static bool statement_sent(const Session *s, Expectation *e, char type)
{
	if (!e || (type != 'Q' && type != 'E'))
		return false;
	e->max_rows = s->policy->max_rows;
	e->sent_us = util_now_us();
	return true;
}

/* With the audit store down (on_failure: refuse) nothing new may run unrecorded. */
static bool audit_refuses(const Session *s, char type)
{
	return s->auditing && (type == 'Q' || type == 'B' || type == 'F') && !audit_store_healthy() &&
	       !s->config->audit_continue;
}

/* What the audit needs of a message the policy let through (or did not look at). */
static void audit_forwarded(Session *s, char type, const uint8_t *body, size_t blen)
{
	if (!s->auditing || s->audit_pending)
		return;
	MsgReader r;
	msgr_init(&r, body, blen);
	const char *a = msgr_str(&r);
	/* Inspected Query and Bind messages got their record from their decision. */
	if (type == 'Q' && !s->inspecting) {
		s->audit_pending = session__audit_stmt(s, a, NULL);
	} else if (type == 'F') {
		s->audit_pending = session__audit_stmt(s, "(FunctionCall)", NULL);
	} else if (type == 'P') {
		const char *sql = msgr_str(&r);
		if (a && sql)
			s->audit_undo = session__audit_parse(s, a, sql);
	} else if (type == 'B' && !s->inspecting) {
		s->audit_pending = session__audit_bind(s, body, blen, NULL);
	} else if (type == 'E' && a) {
		s->audit_pending = session__audit_execute(s, a);
	} else if (type == 'C' && blen >= 2 && body[0] == 'S') {
		msgr_init(&r, body + 1, blen - 1);
		const char *name = msgr_str(&r);
		if (name)
			session__audit_close(s, name);
	}
}

/*
 * Handles the client input: forwards what needs nothing, inspects what must be judged.
 * Returns bytes (from the front of client.in) still to move to the upstream.
 */
static size_t relay_client_messages(Session *s, bool *terminate)
{
	struct evbuffer *in = s->client.in;
	size_t avail = evbuffer_get_length(in);
	size_t fwd = 0;
	uint32_t max = s->config->max_message_size;

	/* The message at the front waits for its inspection (on_notify judges it again). */
	if (session__inspect_pending(s) && !inspect_job_done(s->inspect_job))
		return 0;

	if (s->client_remaining) {
		size_t take = avail < s->client_remaining ? avail : s->client_remaining;
		fwd = take;
		s->client_remaining -= take;
	}
	while (s->client_remaining == 0 && avail - fwd >= 5 && s->state == SESS_READY) {
		uint8_t hdr[6];
		size_t n = peek_header(in, fwd, avail, hdr);
		char type;
		uint32_t len;
		HeaderCheck hc = proto_check_header(hdr, n, max, &type, &len);
		if (hc == HDR_TOO_SHORT) {
			session_close(s, "invalid message length", "08P01", "invalid message length");
			return 0;
		}
		if (hc == HDR_TOO_LONG) {
			char msg[120];
			snprintf(msg, sizeof msg, "message too large (%u bytes; limits.max_message_size is %u)", len, max);
			session_close(s, msg, "08P01", msg);
			return 0;
		}
		if (len > 4 && n < 6)
			break; /* the first body byte is needed */
		size_t total = 1 + (size_t)len;
		if (pipeline_copy_refuses(&s->pipeline, type)) {
			session_close(s, "message inside COPY FROM STDIN", "08P01",
				      "pgcordon: only CopyData, CopyDone, CopyFail, Flush and Sync may follow COPY FROM STDIN");
			return 0;
		}
		if (pipeline_copy_swallows(&s->pipeline, type)) {
			/* the server would ignore it; forwarded, an error in the COPY data could make it
			 * count after all, and the gateway could not know */
			if (avail - fwd < total)
				break;
			if (fwd)
				evbuffer_remove_buffer(in, s->server.out, fwd);
			evbuffer_drain(in, total);
			avail -= fwd + total;
			fwd = 0;
			continue;
		}
		if (wants_whole(s, type)) {
			if (avail - fwd < total)
				break; /* wait for the whole message */
			/* The policy that judges this message also decides how it is read (below). */
			if (policy_stale(s)) {
				refresh_policy(s);
				if (s->state != SESS_READY)
					return 0;
			}
			/* Everything before it goes upstream first: a poison must not overtake it. */
			if (fwd && !read_in_place(s, type)) {
				evbuffer_remove_buffer(in, s->server.out, fwd);
				avail -= fwd;
				fwd = 0;
			}
			const uint8_t *body = copy_out(s, in, fwd + 5, len - 4);
			if (!names_fit(type, body, len - 4)) {
				session_close(s, "statement or portal name too long", "42622",
					      "pgcordon: statement and portal names are limited to 63 bytes (PostgreSQL cuts a "
					      "longer one, and the cut name is no longer the one the gateway judged)");
				return 0;
			}
			if (s->policy->masks_columns && (type == 'Q' || type == 'P')) {
				/* Statements wait for a current catalog: loaded at start, again after DDL or a reload. */
				if (s->mask_loading)
					break;
				/* In a failed transaction the catalog query would fail too: keep the one there is. */
				if (session__mask_catalog_stale(s) && s->pipeline.txn_status != 'E') {
					if (pipeline_idle(&s->pipeline))
						session__mask_start_load(s);
					else
						s->mask_waiting = true;
					break;
				}
			}
			rowplan_release(s->rowplan_next); /* a plan is only for the statement it was made for */
			s->rowplan_next = NULL;
			Action a;
			if (audit_refuses(s, type)) {
				Decision d = {.kind = DEC_BLOCK, .sqlstate = "58030", .policy = "", .rule = "audit_store_unavailable"};
				snprintf(d.message, sizeof d.message,
					 "pgcordon: the audit store cannot be written; statements are refused until it recovers");
				if (audit_crowded(len)) /* nothing ran: counted, so as not to crowd out what did */
					audit_count_unrecorded(AUDIT_UNREC_STATEMENT);
				else
					audit_decided(s, type, type == 'Q' ? (const char *)body : NULL, body, len - 4, &d);
				audit_stmt_no_wait(s->audit_pending);
				a = refuse(s, type, &d);
			} else if (s->inspecting) {
				a = inspect_client_message(s, type, body, len - 4);
			} else {
				a = ACT_FORWARD;
			}
			if (a == ACT_CLOSED)
				return 0;
			if (a == ACT_HOLD) {
				/* Nothing of it went anywhere: it is judged again when its request changes. */
				audit_stmt_free(s->audit_pending);
				s->audit_pending = NULL;
				rowplan_release(s->rowplan_next);
				s->rowplan_next = NULL;
				break;
			}
			session__inspect_forget(s); /* settled: however it was, a long text's facts are done with */
			if (s->held_id[0]) /* the policy no longer holds what was held */
				session__hold_drop(s, "the policy no longer holds the statement");
			if (a == ACT_REPLACED) {
				evbuffer_drain(in, total); /* the refused message itself is dropped */
				avail -= total;
				continue;
			}
			bool rewritten = a == ACT_REWRITTEN;
			if (rewritten) {
				evbuffer_drain(in, total); /* its rewritten form is queued upstream */
				avail -= total;
			}
			audit_forwarded(s, type, body, len - 4);
			RowPlan *plan = s->policy->masks_columns ? rowplan_client_message(s, type, body, len - 4) : NULL;
			Expectation *e;
			if (!pipeline_on_frontend(&s->pipeline, type, type == 'D' ? (char)hdr[5] : 0, &e)) {
				session_close(s, "pipeline full", "54000", "too many pipelined messages without reading results");
				return 0;
			}
			if (statement_sent(s, e, type) && s->policy->returned_rows_over && s->inspecting &&
			    (a == ACT_FORWARD || a == ACT_REWRITTEN))
				review_rows(s, e, type, body, len - 4);
			if (e && plan)
				e->rowplan = rowplan_ref(plan);
			if (type == 'Q') {
				rowplan_release(s->rowplan_next);
				s->rowplan_next = NULL;
			}
			if (e)
				e->audit = s->audit_pending;
			else
				audit_stmt_free(s->audit_pending);
			if (e && e->skipped) /* the server skips this Parse: the name keeps what it had, now */
				audit_undo_apply(s->audit_undo);
			if (e && !e->skipped)
				e->undo = s->audit_undo;
			else
				audit_undo_free(s->audit_undo);
			s->audit_undo = NULL;
			s->audit_pending = NULL;
			if (!rewritten)
				fwd += total;
			continue;
		}
		Expectation *e;
		if (!pipeline_on_frontend(&s->pipeline, type, len > 4 ? (char)hdr[5] : 0, &e)) {
			session_close(s, "pipeline full", "54000", "too many pipelined messages without reading results");
			return 0;
		}
		statement_sent(s, e, type);
		if (avail - fwd >= total) {
			fwd += total;
		} else {
			s->client_remaining = total - (avail - fwd);
			fwd = avail;
		}
		if (type == 'X') {
			*terminate = true;
			break;
		}
	}
	return fwd;
}

void session__relay_from_client(Session *s)
{
	bool terminate = false;
	if (s->expires_at && (int64_t)time(NULL) > s->expires_at + s->config->token_grace_s) {
		/* A stolen short-lived credential must not become a long session. */
		char qu[80];
		log_event(LOG_INFO, "credential_expired", "session=%llu user=%s method=%s", (unsigned long long)s->id,
			  log_quote(qu, sizeof qu, s->user_name), s->auth_method);
		session_close(s, "credential expired", "28000",
			      "pgcordon: the credential of this session has expired; reconnect with a new one");
		return;
	}
	if (policy_stale(s)) {
		refresh_policy(s);
		if (s->state != SESS_READY)
			return;
	}
	size_t n = relay_client_messages(s, &terminate);
	if (s->state == SESS_CLOSED)
		return;
	if (n)
		evbuffer_remove_buffer(s->client.in, s->server.out, n);
	if (evbuffer_get_length(s->server.out) && sock_flush(&s->server) == IO_ERROR) {
		session_close(s, "upstream write failed", "08006", "pgcordon: lost connection to upstream database");
		return;
	}
	if (terminate && s->server.held) {
		/* What the client sent before it goes upstream once the cut-off's cancel is in. */
		s->close_after_cancel = true;
		sock_pause_read(&s->client);
		return;
	}
	if (terminate) {
		/* Terminate: the upstream has it; end the session quietly. */
		session_close(s, "client terminated", NULL, NULL);
		return;
	}
	session__balance(s);
}

void session__pause_server(Session *s)
{
	if (!s->server_paused) {
		sock_pause_read(&s->server);
		s->server_paused = true;
	}
}

/*
 * Back-pressure, decided in one place after every flush: a side stops being read while the
 * other side has more than RELAY_HIGH_WATER waiting, and is read again below
 * RELAY_LOW_WATER — whichever flush (the write event, or a relay in the other direction)
 * drained it.
 */
void session__balance(Session *s)
{
	if (s->state != SESS_READY)
		return;
	size_t up = evbuffer_get_length(s->server.out), down = evbuffer_get_length(s->client.out);
	/* A held statement keeps what the client sends behind it in memory: bounded too. */
	bool held_full = (s->held_id[0] || s->estimate_state == ESTIMATE_RUNNING || session__inspect_pending(s)) &&
			 evbuffer_get_length(s->client.in) > RELAY_HIGH_WATER;
	if (!s->client_paused && (up > RELAY_HIGH_WATER || held_full)) {
		sock_pause_read(&s->client);
		s->client_paused = true;
	} else if (s->client_paused && up < RELAY_LOW_WATER && !held_full) {
		s->client_paused = false;
		sock_resume_read(&s->client);
	}
	/* An answer held for its audit record keeps the upstream's next ones in memory: bounded too. */
	bool audit_full = s->audit_holding && evbuffer_get_length(s->server.in) > RELAY_HIGH_WATER;
	if (down > RELAY_HIGH_WATER || audit_full) {
		session__pause_server(s);
	} else if (s->server_paused && down < RELAY_LOW_WATER && !s->audit_holding) {
		s->server_paused = false;
		sock_resume_read(&s->server);
	}
}

/* ---- server → client ---- */

/* Is the end of the current statement (CommandComplete, error, ...) already read? */
static bool statement_end_buffered(Session *s, size_t offset)
{
	struct evbuffer *in = s->server.in;
	size_t avail = evbuffer_get_length(in);
	size_t pos = offset; /* the DataRow being cut starts here */
	for (int i = 0; i < 100000 && pos + 5 <= avail; i++) {
		uint8_t hdr[5];
		peek_at(in, pos, hdr, 5);
		if (hdr[0] == 'C' || hdr[0] == 'E' || hdr[0] == 'I' || hdr[0] == 's' || hdr[0] == 'Z')
			return true;
		pos += 1 + (size_t)proto_get_u32(hdr + 1);
	}
	return false;
}

static void own_cancel_done(Session *s, CancelOutcome outcome);

/* Cancels what the upstream runs; nothing more goes upstream until the cancel has arrived,
 * or it could land on that instead. */
static bool send_own_cancel(Session *s)
{
	if (!session__send_cancel(s, &s->cancel_target, own_cancel_done))
		return false;
	if (!s->server.held) {
		s->server.held = true;
		cancel_set_output_held(s->pid, true);
	}
	return true;
}

/* A cancel the session sent is over: once none is left, what waited for them goes upstream. */
static void own_cancel_done(Session *s, CancelOutcome outcome)
{
	(void)outcome; /* an unconfirmed cancel is logged; waiting longer would only stall the session */
	if (s->cancels_in_flight || !s->server.held)
		return;
	s->server.held = false;
	bool client_cancel = cancel_set_output_held(s->pid, false);
	bool waited = evbuffer_get_length(s->server.out) > 0;
	if (waited && sock_flush(&s->server) == IO_ERROR) {
		session_close(s, "upstream write failed", "08006", "pgcordon: lost connection to upstream database");
		return;
	}
	if (s->close_after_cancel) {
		session_close(s, "client terminated", NULL, NULL); /* the Terminate went out with the rest */
		return;
	}
	/* A client's cancel came while its statement waited here: it goes now, after it. With
	 * nothing waiting it was meant for the statement already cut off (and cancelled). */
	if (client_cancel && waited && send_own_cancel(s))
		log_event(LOG_INFO, "cancel_forwarded", "session=%llu deferred=true", (unsigned long long)s->id);
	session__balance(s);
}

/* The result passed max_rows or returned_rows_over: tell the client, stop the query, drop the rest. */
static void cut_off(Session *s, const Expectation *e, MsgBuilder *extra, size_t offset)
{
	char msg[400];
	bool review = !(e->max_rows > 0 && s->rows > e->max_rows);
	if (review)
		session__rows_exceeded(s, e->review_sql, e->review_params, msg, sizeof msg);
	else
		snprintf(msg, sizeof msg, "pgcordon: blocked by policy %.100s: the result exceeds max_rows %lld",
			 s->policy->max_rows_by ? s->policy->max_rows_by : s->policy->names, (long long)e->max_rows);
	proto_build_error(extra, false, "42501", msg, NULL, NULL);
	Expectation *fm = pipeline_front_mut(&s->pipeline);
	if (fm && fm->audit && !s->cut_audit) {
		/* Recorded once the statement ends (note_cut_answer): how it ended belongs in the record. */
		s->cut_audit = fm->audit;
		s->cut_message = xstrdup(msg);
		fm->audit = NULL;
	}
	char qu[80];
	metrics_inc(MET_CUT_OFF);
	log_event(LOG_INFO, "statement_cut_off", "session=%llu user=%s policy=%s rule=%s rows=%lld",
		  (unsigned long long)s->id, log_quote(qu, sizeof qu, s->user_name),
		  review ? (s->policy->returned_rows_by ? s->policy->returned_rows_by : "-")
			 : (s->policy->max_rows_by ? s->policy->max_rows_by : "-"),
		  review ? "returned_rows_over" : "max_rows", (long long)(review ? e->review_rows : e->max_rows));
	s->discarding = true;
	/* Cancel only a statement still running: if its end is already here, a cancel could only
	 * hit whatever the session runs next. */
	if (s->has_cancel_target && !statement_end_buffered(s, offset))
		send_own_cancel(s);
}

Expectation *session__last_internal(Session *s)
{
	Pipeline *p = &s->pipeline;
	Expectation *e = p->count ? pipeline_at(p, p->count - 1) : NULL;
	return e && e->internal ? e : NULL;
}

void session__send_internal(Session *s, const char *sql, char release_ready, bool catalog)
{
	Expectation *e;
	if (!pipeline_on_frontend(&s->pipeline, 'Q', 0, &e) || !e)
		return;
	e->internal = true;
	e->catalog = catalog;
	e->release_ready = release_ready;
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'Q');
	msgb_str(&b, sql);
	msgb_end(&b);
	session__queue(s->server.out, &b);
}

/* How much of a CommandComplete note_cut_answer reads: enough for the tag it keeps. */
static size_t cut_tag_bytes(uint32_t len)
{
	size_t whole = 1 + (size_t)len, enough = 5 + CUT_TAG_LEN - 1;
	return whole < enough ? whole : enough;
}

/*
 * While a cut-off answer is dropped. The cut statement's own end is the first
 * CommandComplete, ErrorResponse or PortalSuspended after the cut: its record goes then,
 * with the tag if it ran to its end, and the Query's later statements are recorded after
 * it (withheld from the client). The first CommandComplete of a change ("INSERT 0 10",
 * "UPDATE 3", ...) is kept for end_discard: whether it is committed shows at
 * ReadyForQuery, unless an error comes first (in the implicit transaction of a Query's
 * statements, or of the Executes before a Sync, the change goes back with it).
 */
static void note_cut_answer(Session *s, char type, size_t offset)
{
	static const char *const changes[] = {"INSERT ", "UPDATE ", "DELETE ", "MERGE "};
	char tag[sizeof s->cut_changed] = "";
	if (type == 'C') {
		uint8_t hdr[5];
		peek_at(s->server.in, offset, hdr, 5);
		size_t n = cut_tag_bytes(proto_get_u32(hdr + 1)) - 5;
		peek_at(s->server.in, offset + 5, tag, n);
		tag[n] = 0;
		const char *count = strrchr(tag, ' ');
		for (size_t i = 0; i < sizeof changes / sizeof changes[0] && !s->cut_changed[0]; i++)
			if (strncmp(tag, changes[i], strlen(changes[i])) == 0 && count && strcmp(count + 1, "0") != 0) {
				memcpy(s->cut_changed, tag, strlen(tag) + 1); /* fits: tag is no longer */
				s->cut_changed_own = !s->cut_ended;
			}
		/* A COMMIT of the batch makes the change stay, whatever comes after it. */
		if (s->cut_changed[0] && (strcmp(tag, "COMMIT") == 0 || strcmp(tag, "END") == 0))
			s->cut_committed = true;
		else if (s->cut_changed[0] && !s->cut_committed && strcmp(tag, "ROLLBACK") == 0)
			s->cut_changed[0] = 0;
	} else if (type == 'E' && !s->cut_committed) {
		s->cut_changed[0] = 0;
	}
	if (!s->cut_ended) {
		Expectation *fm = pipeline_front_mut(&s->pipeline);
		session__audit_cut_off(s, tag[0] ? tag : NULL, fm && fm->kind == EXP_QUERY ? &fm->audit : NULL);
		s->cut_ended = true; /* from here on, what is recorded is withheld */
	}
}

/*
 * The upstream finished the statement that was cut off. Make its state match what the
 * client was told: an error, so a transaction block is now failed. (A cancel still on its
 * way cannot reach the client's next statement: cut_off holds that back until it lands.)
 */
static void end_discard(Session *s, char status, MsgBuilder *extra)
{
	s->discarding = false;
	session__audit_cut_off(s, NULL, NULL); /* if its end never came */
	if (s->cut_changed[0] && (status == 'I' || s->cut_committed)) {
		/* It committed: the error the client got must not pass for a rollback. */
		char msg[200], qt[80];
		snprintf(msg, sizeof msg, "pgcordon: %s: its changes are committed (%s)",
			 s->cut_changed_own ? "the statement that was cut off had already run to its end upstream"
					    : "a statement sent after the one that was cut off ran upstream",
			 s->cut_changed);
		proto_build_notice(extra, "WARNING", "01000", msg);
		log_event(LOG_WARN, "statement_cut_off_committed", "session=%llu tag=%s", (unsigned long long)s->id,
			  log_quote(qt, sizeof qt, s->cut_changed));
	}
	s->cut_changed[0] = 0;
	s->cut_ended = s->cut_committed = false;
	if (status == 'T')
		session__send_internal(s, POISON_SQL, 0, false);
	proto_build_ready(extra, status == 'T' ? 'E' : status);
}

typedef enum { OUT_FORWARD, OUT_DROP } OutAction;

/* Rows leave as DataRow, or as CopyData in COPY ... TO STDOUT: both count toward the limits. */
static bool row_counted(const Expectation *f, char type)
{
	return (type == 'D' || type == 'd') && f && (f->max_rows > 0 || f->review_rows > 0) &&
	       (f->kind == EXP_QUERY || f->kind == EXP_EXECUTE);
}

static bool rows_over(const Expectation *f, int64_t rows)
{
	return (f->max_rows > 0 && rows > f->max_rows) || (f->review_rows > 0 && rows > f->review_rows);
}

/* Is this upstream message the row that passes a limit? The client never gets it. */
static bool row_cut_off(Session *s, char type)
{
	if ((type != 'D' && type != 'd') || s->discarding)
		return false;
	const Expectation *f = pipeline_front(&s->pipeline);
	return f && !f->internal && row_counted(f, type) && rows_over(f, s->rows + 1);
}

/*
 * Decides one upstream message from its header and first body byte, and keeps the
 * pipeline in step with what the upstream is answering. Messages the client gets instead
 * of a dropped one go to extra.
 */
/*
 * An error that ends a COPY FROM STDIN after it read data: a CopyFail's (57014), or one
 * about the data itself (classes 22 and 23). Other errors can come before the COPY read
 * anything (COPY FREEZE's checks, a BEFORE STATEMENT trigger).
 */
static bool copy_failed_over_data(Session *s, size_t offset, size_t avail)
{
	uint8_t buf[256];
	size_t n = avail - 5 < sizeof buf ? avail - 5 : sizeof buf;
	peek_at(s->server.in, offset + 5, buf, n);
	MsgReader r;
	msgr_init(&r, buf, n);
	uint8_t code;
	const char *v;
	while (msgr_error_field(&r, &code, &v))
		if (code == 'C')
			return strlen(v) == 5 &&
			       (strcmp(v, "57014") == 0 || strncmp(v, "22", 2) == 0 || strncmp(v, "23", 2) == 0);
	return false; /* no SQLSTATE in what is here: not known to be over data */
}

/*
 * A client's statement that this message ends goes into the statement duration histogram.
 * Only forwarded Queries and Executes have sent_us: not what the gateway refused, nor its
 * own internal queries.
 */
static void time_statement(const Expectation *f, char type)
{
	if (!f || f->internal || !f->sent_us)
		return;
	bool ends = f->kind == EXP_QUERY ? type == 'Z'
				       : type == 'C' || type == 'I' || type == 's' || type == 'E'; /* EXP_EXECUTE */
	if (ends)
		metrics_observe_us(HIST_STATEMENT, util_now_us() - f->sent_us);
}

static OutAction judge_server_message(Session *s, char type, uint8_t first, size_t offset, size_t avail,
				      MsgBuilder *extra)
{
	const Expectation *f = pipeline_front(&s->pipeline);
	time_statement(f, type);
	if (type == 'E' && s->pipeline.copy_maybe && copy_failed_over_data(s, offset, avail))
		pipeline_copy_data_was_read(&s->pipeline);
	if (type == 'E') {
		uint8_t buf[8] = {0};
		size_t n = avail - 5 < sizeof buf ? avail - 5 : sizeof buf;
		peek_at(s->server.in, offset + 5, buf, n);
		s->last_server_fatal = buf[0] == 'S' && (memcmp(buf + 1, "FATAL", 5) == 0 || memcmp(buf + 1, "PANIC", 5) == 0);
	}
	if (f && f->internal) {
		if (type == 'Z' && f->release_ready)
			proto_build_ready(extra, f->release_ready);
		pipeline_on_backend(&s->pipeline, type, (char)first);
		/* Notifications and setting changes are not part of its answer; the error of a
		 * Describe the gateway added is the one the client's Execute would have met. */
		return type == 'A' || type == 'S' || (type == 'E' && f->rowplan) ? OUT_FORWARD : OUT_DROP;
	}
	if (s->discarding) {
		if (type == 'C' || type == 'E' || type == 's')
			note_cut_answer(s, type, offset);
		if (type == 'Z') {
			pipeline_on_backend(&s->pipeline, type, (char)first);
			s->rows = 0;
			end_discard(s, (char)first, extra);
			return OUT_DROP;
		}
		pipeline_on_backend(&s->pipeline, type, (char)first);
		/* Notifications and setting changes are not part of the result: they still go. */
		return type == 'A' || type == 'S' ? OUT_FORWARD : OUT_DROP;
	}
	if (type == 'E' && f && f->refusal) {
		proto_build_error(extra, false, f->refusal_sqlstate, f->refusal, NULL, NULL);
		pipeline_on_backend(&s->pipeline, type, (char)first);
		return OUT_DROP;
	}
	if (row_counted(f, type)) {
		++s->rows;
		if (rows_over(f, s->rows)) {
			cut_off(s, f, extra, offset);
			return OUT_DROP;
		}
	} else if (type == 'C' || type == 'I' || type == 's' || type == 'Z') {
		s->rows = 0;
	}
	pipeline_on_backend(&s->pipeline, type, (char)first);
	return OUT_FORWARD;
}

typedef enum { STEP_GO, STEP_WAIT, STEP_HOLD } AuditStep;

/* The rest of a cut-off statement's answer is dropped: its record has what the client got. */
static bool cut_answer_dropped(const Session *s) { return s->discarding && !s->cut_ended; }

/* Strict durability: the message waits (upstream reads pause) until ticket is committed. */
static AuditStep hold_if(Session *s, AuditOutcome o, uint64_t ticket)
{
	if (o != AUDIT_HOLD)
		return STEP_GO;
	s->audit_holding = true;
	s->audit_ticket = ticket;
	return STEP_HOLD;
}

/*
 * Feeds an upstream message to the audit record of the statement it answers. STEP_WAIT:
 * the audit needs the whole message and it is not all here yet. STEP_HOLD: strict
 * durability, the message waits until its record is committed (on_notify releases it).
 */
static AuditStep audit_server_message(Session *s, char type, uint32_t len, size_t offset, size_t avail)
{
	if (s->audit_released) {
		s->audit_released = false; /* recorded before it was held */
		return STEP_GO;
	}
	Expectation *f = pipeline_front_mut(&s->pipeline);
	if (type == 'T' && f && (f->kind == EXP_DESCRIBE_PORTAL || f->kind == EXP_DESCRIBE_STMT) && len <= 1024 * 1024) {
		if (avail - offset < 1 + (size_t)len)
			return STEP_WAIT;
		session__audit_described(s, view_at(s, s->server.in, offset + 5, len - 4), len - 4);
		return STEP_GO;
	}
	if (f && !f->audit && !f->refusal && type == 'E' && !f->internal && !cut_answer_dropped(s) &&
	    (f->kind == EXP_PARSE || f->kind == EXP_BIND || f->kind == EXP_DESCRIBE_STMT || f->kind == EXP_DESCRIBE_PORTAL)) {
		/* The server rejected a Parse or Bind and will skip the Execute behind it: the
		 * statement failed, so its record (on that Execute) gets this error. */
		for (size_t i = 1; (f = pipeline_at(&s->pipeline, i)) && f->kind != EXP_SYNC; i++)
			if (f->audit)
				break;
		if (!f || f->kind == EXP_SYNC)
			return STEP_GO;
		if (avail - offset < 1 + (size_t)len)
			return STEP_WAIT;
		uint64_t ticket = 0;
		AuditOutcome o = session__audit_on_server(s, f->audit, true, 'E', view_at(s, s->server.in, offset + 5, len - 4),
							  len - 4, &ticket);
		audit_stmt_free(f->audit);
		f->audit = NULL;
		return hold_if(s, o, ticket);
	}
	if (!f || !f->audit || f->internal || cut_answer_dropped(s))
		return STEP_GO;
	uint64_t ticket = 0;
	AuditOutcome o;
	if (type == 'E' && f->refusal) {
		/* The client gets the refusal, not the poison's syntax error: so does the record. */
		MsgBuilder b;
		msgb_init(&b);
		proto_build_error(&b, false, f->refusal_sqlstate, f->refusal, NULL, NULL);
		o = session__audit_on_server(s, f->audit, true, 'E', b.data + 5, b.len - 5, &ticket);
		msgb_free(&b);
	} else {
		bool whole = session__audit_wants(f->audit, type, len);
		if (whole && avail - offset < 1 + (size_t)len)
			return STEP_WAIT;
		const uint8_t *body = whole ? view_at(s, s->server.in, offset + 5, len - 4) : NULL;
		o = session__audit_on_server(s, f->audit, whole, type, body, whole ? len - 4 : 0, &ticket);
	}
	if (f->kind == EXP_EXECUTE && (type == 'C' || type == 'E' || type == 'I' || type == 's')) {
		audit_stmt_free(f->audit); /* recorded: the Execute is over */
		f->audit = NULL;
	} else if (f->kind != EXP_QUERY && type == 'E') {
		audit_stmt_free(f->audit);
		f->audit = NULL;
	}
	return hold_if(s, o, ticket);
}

void session__relay_from_server(Session *s)
{
	if (s->audit_holding) {
		/*
		 * The upstream's answer waits for its audit record. Reading goes on into memory up
		 * to the high-water mark (session__balance): a pause and resume per statement cost
		 * two epoll_ctl calls.
		 */
		session__balance(s);
		return;
	}
	struct evbuffer *in = s->server.in;
	size_t avail = evbuffer_get_length(in);
	size_t fwd = 0;

	for (;;) {
		if (s->server_remaining) {
			size_t take = avail - fwd < s->server_remaining ? avail - fwd : s->server_remaining;
			s->server_remaining -= take;
			if (s->server_dropping) {
				if (fwd)
					evbuffer_remove_buffer(in, s->client.out, fwd);
				evbuffer_drain(in, take);
				avail -= fwd + take;
				fwd = 0;
			} else {
				fwd += take;
			}
			if (s->server_remaining)
				break;
		}
		if (avail - fwd < 5 || s->state != SESS_READY)
			break;
		uint8_t hdr[6];
		size_t n = peek_header(in, fwd, avail, hdr);
		char type;
		uint32_t len;
		if (proto_check_header(hdr, n, 0x7fffffff, &type, &len) != HDR_OK) {
			session_close(s, "invalid message from upstream", "08006", "pgcordon: invalid message from upstream database");
			return;
		}
		if (len > 4 && n < 6)
			break;
		pipeline_drop_skipped(&s->pipeline); /* no answer comes for them: not the front of this one */
		const Expectation *front = pipeline_front(&s->pipeline);
		if (front && front->estimate && (type == 'D' || type == 'E' || type == 'Z') && !s->masked_front) {
			if (avail - fwd < 1 + (size_t)len)
				break; /* the estimate reads it whole */
			session__estimate_message(s, type, copy_out(s, in, fwd + 5, len - 4), len - 4);
		}
		if (s->discarding && type == 'C' && avail - fwd < cut_tag_bytes(len))
			break; /* note_cut_answer reads the tag */
		if (s->masked_front) {
			s->masked_front = false; /* the replacement put in place below */
		} else if (session__mask_wants(s, pipeline_front(&s->pipeline), type, len > 4 ? hdr[5] : 0)) {
			if (avail - fwd < 1 + (size_t)len)
				break; /* masking needs the whole message */
			size_t newlen = 0;
			uint8_t *repl = session__mask_server_message(s, pipeline_front(&s->pipeline), type,
								     copy_out(s, in, fwd + 5, len - 4), len - 4, &newlen);
			if (s->state != SESS_READY) {
				free(repl);
				return;
			}
			if (repl) {
				/* Put the replacement where the message was: audit and relay see only it. */
				if (fwd)
					evbuffer_remove_buffer(in, s->client.out, fwd);
				evbuffer_drain(in, 1 + (size_t)len);
				evbuffer_prepend(in, repl, newlen);
				free(repl);
				avail = evbuffer_get_length(in);
				fwd = 0;
				s->masked_front = true;
				continue;
			}
		}
		if (s->auditing && !row_cut_off(s, type)) { /* the record holds what the client got */
			AuditStep st = audit_server_message(s, type, len, fwd, avail);
			if (st == STEP_WAIT)
				break;
			if (st == STEP_HOLD)
				break;
		}
		MsgBuilder extra;
		msgb_init(&extra);
		OutAction a = judge_server_message(s, type, len > 4 ? hdr[5] : 0, fwd, avail - fwd, &extra);
		if (s->pipeline.copy_broken) {
			msgb_free(&extra);
			session_close(s, "messages pipelined into COPY FROM STDIN", "08P01",
				      "pgcordon: messages sent ahead of a COPY FROM STDIN's answer (a Sync after its "
				      "data, another statement, or a Sync before its data when the COPY then failed) "
				      "would be read by the server in a way the gateway cannot know");
			return;
		}
		s->server_remaining = 1 + (size_t)len;
		s->server_dropping = a == OUT_DROP;
		if (a == OUT_DROP) {
			/* Anything the client is owed before this message goes first. */
			if (fwd)
				evbuffer_remove_buffer(in, s->client.out, fwd);
			avail -= fwd;
			fwd = 0;
		}
		session__queue(s->client.out, &extra); /* empty unless the message was replaced */
	}
	if (fwd)
		evbuffer_remove_buffer(in, s->client.out, fwd);
	if (evbuffer_get_length(s->server.out) && sock_flush(&s->server) == IO_ERROR) {
		session_close(s, "upstream write failed", "08006", "pgcordon: lost connection to upstream database");
		return;
	}
	/*
	 * While a CommandComplete waits for its audit record, what came before it waits too (up
	 * to the high-water mark): the client gets the answer in one piece, in one wake-up.
	 */
	size_t down = evbuffer_get_length(s->client.out);
	if (down && (!s->audit_holding || down > RELAY_HIGH_WATER)) {
		if (sock_flush(&s->client) == IO_ERROR) {
			session_close(s, "client write failed", NULL, NULL);
			return;
		}
	}
	session__balance(s);
	session__maybe_close_for_shutdown(s);
	if (s->state == SESS_READY && (s->mask_resume || (s->mask_waiting && pipeline_idle(&s->pipeline)))) {
		s->mask_resume = s->mask_waiting = false;
		if (evbuffer_get_length(s->client.in))
			session__relay_from_client(s);
	}
}
