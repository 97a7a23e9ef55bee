/*
 * Statements held for approval (docs/approvals.md), the session's side. A held message stays
 * at the front of the client's input, unread by the relay, while the worker serves everyone
 * else; a decision (workers are notified), the wait's deadline (a timer) or a cancel makes
 * the relay judge it again, and this time it passes or is refused.
 */
#include "session/hold.h"

#include <event2/event.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "approval/approval.h"
#include "core/jsonw.h"
#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"
#include "mask/mask.h"
#include "session/audit_trail.h"
#include "session/session_internal.h"

static void deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	Session *s = arg;
	if (s->held_id[0] && s->state == SESS_READY) {
		approval_expire(s->held_id);
		session__relay_from_client(s);
	}
}

void session__hold_end(Session *s)
{
	if (!s->held_id[0])
		return;
	metrics_inc(MET_WAITS_ENDED);
	metrics_observe_us(HIST_APPROVAL_WAIT, util_now_us() - s->held_since_us);
	s->held_id[0] = 0;
	if (s->held_timer)
		event_del(s->held_timer);
	cancel_set_held(s->pid, NULL);
}

void session__hold_drop(Session *s, const char *why)
{
	if (s->held_id[0])
		approval_cancel(s->held_id, why);
	session__hold_end(s);
}

void session__hold_wake(Session *s)
{
	if (s->held_id[0] && approval_status(s->held_id, NULL, 0, NULL, 0) != APR_PENDING)
		session__relay_from_client(s);
}

void session__bind_params_to(JsonW *w, const uint8_t *body, size_t len, bool redact, unsigned detect, size_t cap)
{
	MsgReader r;
	msgr_init(&r, body, len);
	msgr_str(&r); /* portal */
	msgr_str(&r); /* statement */
	uint16_t nformats = msgr_u16(&r);
	const uint8_t *formats = msgr_bytes(&r, 2 * (size_t)nformats);
	uint16_t nparams = msgr_u16(&r);
	jw_begin_array(w);
	for (uint16_t i = 0; i < nparams && !r.failed; i++) {
		uint32_t plen = msgr_u32(&r);
		if (plen == 0xffffffffu) {
			jw_null(w);
			continue;
		}
		const uint8_t *v = msgr_bytes(&r, plen);
		if (!v)
			break;
		if (redact) {
			jw_string(w, MASK_REDACTED);
			continue;
		}
		bool binary = formats && nformats && (nformats == 1 ? formats[1] : i < nformats ? formats[2 * i + 1] : 0);
		/* As in result rows: values with NUL bytes (binary data) are not scanned. */
		size_t sl = 0;
		uint8_t *scrubbed = detect && !memchr(v, 0, plen) ? mask_detect_scrub(detect, v, plen, &sl) : NULL;
		if (scrubbed) {
			/* shows [REDACTED]; not UTF-8 is still hex; a cut one's hash is of this text */
			jw_text_cut(w, scrubbed, sl, false, cap, NULL);
			free(scrubbed);
		} else {
			jw_text_cut(w, v, plen, binary, cap, NULL);
		}
	}
	jw_end_array(w);
}

char *session__bind_params(const uint8_t *body, size_t len)
{
	JsonW w;
	jw_init(&w);
	session__bind_params_to(&w, body, len, false, 0, 0);
	return jw_take(&w);
}

static void refuse_with(Decision *out, const char *sqlstate, const char *policy, const char *rule, const char *msg)
{
	memset(out, 0, sizeof *out);
	out->kind = DEC_BLOCK;
	out->sqlstate = sqlstate;
	out->policy = policy;
	out->rule = rule;
	size_t n = strlen(msg);
	if (n >= sizeof out->message)
		n = sizeof out->message - 1; /* a long message is cut, never overrun */
	memcpy(out->message, msg, n);
	out->message[n] = 0;
}

static void approved(Decision *out, const Decision *d, const char *id)
{
	*out = *d;
	out->kind = DEC_ALLOW;
	out->rule = "approval";
	snprintf(out->approval, sizeof out->approval, "%s", id);
}

static void format_wait(int ms, char *buf, size_t len)
{
	if (ms % 60000 == 0)
		snprintf(buf, len, "%dm", ms / 60000);
	else if (ms % 1000 == 0)
		snprintf(buf, len, "%ds", ms / 1000);
	else
		snprintf(buf, len, "%dms", ms);
}

/* Judges a held message again after its request changed. */
static HoldOutcome held_outcome(Session *s, const Decision *d, const ApprovalSettings *a, Decision *out)
{
	char by[128], reason[256], msg[400], id[APPROVAL_ID_LEN];
	snprintf(id, sizeof id, "%s", s->held_id);
	ApprovalStatus st = approval_status(id, by, sizeof by, reason, sizeof reason);
	if (st == APR_PENDING)
		return HOLD_WAIT;
	session__hold_end(s);
	char qu[80];
	log_event(LOG_INFO, "statement_released", "session=%llu user=%s request=%s status=%s", (unsigned long long)s->id,
		  log_quote(qu, sizeof qu, s->user_name), id,
		  st == APR_APPROVED ? "approved" : st == APR_DENIED ? "denied" : st == APR_EXPIRED ? "expired" : "cancelled");
	switch (st) {
	case APR_APPROVED:
		approved(out, d, id);
		return HOLD_PASS;
	case APR_DENIED:
		snprintf(msg, sizeof msg, "pgcordon: request %s was denied by %.100s%s%.200s", id, by, reason[0] ? ": " : "",
			 reason);
		refuse_with(out, "42501", d->policy, "approval_denied", msg);
		return HOLD_REFUSE;
	case APR_EXPIRED: {
		char w[32];
		format_wait(a->wait_ms, w, sizeof w);
		snprintf(msg, sizeof msg, "pgcordon: request %s was not decided within %s", id, w);
		refuse_with(out, "57014", d->policy, "approval_timeout", msg);
		return HOLD_REFUSE;
	}
	default:
		snprintf(msg, sizeof msg, "pgcordon: request %s was cancelled%s%.200s", id, reason[0] ? ": " : "", reason);
		refuse_with(out, "57014", d->policy, "approval_cancelled", msg);
		return HOLD_REFUSE;
	}
}

static void send_notice(Session *s, const char *text)
{
	MsgBuilder b;
	msgb_init(&b);
	proto_build_notice(&b, "NOTICE", "00000", text);
	session__queue(s->client.out, &b);
	sock_flush(&s->client);
}

/*
 * The parameters as an approval request shows them (to approvers, and in the audit trail):
 * masked like a statement record's (session__params_redacted, the detectors). NULL: as
 * they are. The request's digest is still taken over the values themselves.
 */
static char *params_shown(Session *s, const char *sql, const char *params)
{
	if (!params || !s->policy || (!s->policy->masks_columns && !s->policy->detect))
		return NULL;
	bool redact = session__params_redacted(s, sql);
	json_t *list = json_loads(params, 0, NULL);
	if (!json_is_array(list)) {
		json_decref(list);
		return xstrdup("[\"" MASK_REDACTED "\"]");
	}
	size_t i;
	json_t *v;
	json_array_foreach(list, i, v) {
		if (json_is_null(v))
			continue;
		if (redact) {
			json_array_set_new(list, i, json_string(MASK_REDACTED));
			continue;
		}
		if (!json_is_string(v))
			continue; /* binary ({"hex": ...}): not scanned, as in result rows */
		size_t sl = 0;
		uint8_t *t = mask_detect_scrub(s->policy->detect, (const uint8_t *)json_string_value(v),
					       json_string_length(v), &sl);
		if (t) {
			json_array_set_new(list, i, json_stringn((const char *)t, sl));
			free(t);
		}
	}
	char *out = json_dumps(list, JSON_COMPACT);
	json_decref(list);
	return out ? out : xstrdup("[\"" MASK_REDACTED "\"]");
}

/* An approval request for this session's statement (see approval_open). */
static ApprovalOpen open_request(Session *s, const char *sql, const char *params, const char *digest,
				 const Decision *d, const ApprovalSettings *a, char id[APPROVAL_ID_LEN], bool *created)
{
	char *shown = params_shown(s, sql, params);
	ApprovalAsk ask = {.requester = s->user_name,
			   .groups = s->groups,
			   .ngroups = s->ngroups,
			   .database = s->database_name,
			   .session_id = s->audit_id,
			   .statement = sql,
			   .parameters = shown ? shown : params,
			   .digest = digest,
			   .why = d,
			   .settings = a};
	ApprovalOpen opened = approval_open(&ask, id, created);
	free(shown);
	if (opened == APPROVAL_OPENED && *created)
		metrics_inc(MET_APPROVAL_REQUESTS);
	return opened;
}

/*
 * Where approvers reach the API: admin.url, else its address and port. An address that
 * listens everywhere (0.0.0.0, ::) is no place to connect to: this host's name stands in.
 */
static void admin_url(const Config *c, char *out, size_t len)
{
	if (c->admin_url) {
		snprintf(out, len, "%s", c->admin_url);
		return;
	}
	char host[64];
	const char *a = c->admin_address;
	if ((strcmp(a, "0.0.0.0") == 0 || strcmp(a, "::") == 0) && gethostname(host, sizeof host) == 0) {
		host[sizeof host - 1] = 0;
		a = host;
	}
	bool v6 = strchr(a, ':') != NULL; /* an IPv6 address goes in brackets */
	snprintf(out, len, "%s://%s%.60s%s:%d", c->admin_tls_cert ? "https" : "http", v6 ? "[" : "", a, v6 ? "]" : "",
		 c->admin_port);
}

HoldOutcome session__review(Session *s, const char *sql, const char *params, const Decision *d, Decision *out)
{
	ApprovalSettings a;
	config_approval_settings(s->config, config_find_policy(s->config, d->policy), &a);
	if (s->held_id[0])
		return held_outcome(s, d, &a, out);
	char digest[APPROVAL_DIGEST_LEN], id[APPROVAL_ID_LEN], msg[1024];
	approval_digest(sql, params, digest);
	if (a.mode == APPROVAL_RETRY && approval_find_usable(s->user_name, s->database_name, digest, id)) {
		approved(out, d, id);
		return HOLD_PASS;
	}
	bool created;
	ApprovalOpen opened = open_request(s, sql, params, digest, d, &a, id, &created);
	if (opened != APPROVAL_OPENED) {
		snprintf(msg, sizeof msg, "pgcordon: %s (policy %s, rule %s)", approval_refusal(opened), d->policy,
			 d->rule);
		refuse_with(out, opened == APPROVAL_TOO_LARGE ? "54000" : "53400", d->policy, "approval_limit", msg);
		return HOLD_REFUSE;
	}
	char qu[80], qm[400];
	if (created)
		log_event(LOG_INFO, "statement_held", "session=%llu user=%s request=%s policy=%s rule=%s why=%s mode=%s",
			  (unsigned long long)s->id, log_quote(qu, sizeof qu, s->user_name), id, d->policy, d->rule,
			  log_quote(qm, sizeof qm, d->why), a.mode == APPROVAL_RETRY ? "retry" : "wait");
	if (a.mode == APPROVAL_RETRY) {
		snprintf(msg, sizeof msg, "pgcordon: %s; request %s; run it again once approved", d->message, id);
		refuse_with(out, "42501", d->policy, "review", msg);
		return HOLD_REFUSE;
	}
	/* The CLI's --url defaults to ADMIN_DEFAULT_URL: named when the API is elsewhere. */
	char api[256];
	admin_url(s->config, api, sizeof api);
	bool cli_default = strcmp(api, ADMIN_DEFAULT_URL) == 0;
	snprintf(msg, sizeof msg,
		 "pgcordon: %s; request %s; approve with: pgcordon approvals approve %s%s%s (or POST "
		 "%s/api/approvals/%s/approve)",
		 d->message, id, id, cli_default ? "" : " --url ", cli_default ? "" : api, api, id);
	send_notice(s, msg);
	snprintf(s->held_id, sizeof s->held_id, "%s", id);
	metrics_inc(MET_WAITS_STARTED);
	s->held_since_us = util_now_us();
	cancel_set_held(s->pid, id);
	if (!s->held_timer)
		s->held_timer = evtimer_new(s->worker->base, deadline_cb, s);
	struct timeval tv = {a.wait_ms / 1000, (a.wait_ms % 1000) * 1000};
	evtimer_add(s->held_timer, &tv);
	return HOLD_WAIT;
}

bool session__rows_approved(Session *s, const char *sql, const char *params)
{
	char digest[APPROVAL_DIGEST_LEN], id[APPROVAL_ID_LEN];
	approval_digest(sql, params, digest);
	return approval_find_usable(s->user_name, s->database_name, digest, id);
}

void session__rows_exceeded(Session *s, const char *sql, const char *params, char *msg, size_t len)
{
	const EffectivePolicy *ep = s->policy;
	Decision d = {.kind = DEC_REVIEW, .policy = ep->returned_rows_by ? ep->returned_rows_by : "", .rule = "returned_rows_over"};
	snprintf(d.why, sizeof d.why, "more than %lld rows", (long long)ep->returned_rows_over);
	snprintf(d.message, sizeof d.message, "statement held for approval (policy %s, rule returned_rows_over: %s)", d.policy,
		 d.why);
	ApprovalSettings a;
	config_approval_settings(s->config, config_find_policy(s->config, d.policy), &a);
	a.mode = APPROVAL_RETRY; /* the rows already went: only a run again can be approved */
	char digest[APPROVAL_DIGEST_LEN], id[APPROVAL_ID_LEN];
	approval_digest(sql, params, digest);
	bool created;
	ApprovalOpen opened = open_request(s, sql, params, digest, &d, &a, id, &created);
	if (opened != APPROVAL_OPENED)
		snprintf(msg, len, "pgcordon: the result exceeds %lld rows (policy %s, rule returned_rows_over), and %s",
			 (long long)ep->returned_rows_over, d.policy, approval_refusal(opened));
	else
		snprintf(msg, len, "pgcordon: the result exceeds %lld rows (policy %s, rule returned_rows_over); request %s "
				   "to run it in full; run it again once approved",
			 (long long)ep->returned_rows_over, d.policy, id);
}

/* ---- estimated_rows_over: the planner's estimate, asked on the session's own connection ---- */

static void hold_for_estimate(Decision *review, const Decision *d, const char *why)
{
	*review = *d;
	review->kind = DEC_REVIEW;
	review->policy = d->estimate_by;
	review->rule = "estimated_rows_over";
	review->estimate_over = 0;
	snprintf(review->why, sizeof review->why, "%s", why);
	snprintf(review->message, sizeof review->message,
		 "statement held for approval (policy %s, rule estimated_rows_over: %s)", review->policy, why);
}

EstimateOutcome session__estimate(Session *s, const char *sql, int nstmts, bool has_params, const Decision *d,
				  Decision *review)
{
	char why[128];
	if (s->held_id[0]) {
		/* Judged again after its request changed: only the request matters now. */
		hold_for_estimate(review, d, "held");
		return EST_OVER;
	}
	switch (s->estimate_state) {
	case ESTIMATE_RUNNING:
		return EST_WAIT;
	case ESTIMATE_DONE:
		s->estimate_state = ESTIMATE_NONE;
		if (s->estimate_failed) {
			hold_for_estimate(review, d, "the planner gave no estimate");
			return EST_OVER;
		}
		if (s->estimate_rows <= d->estimate_over)
			return EST_UNDER;
		snprintf(why, sizeof why, "the planner estimates %lld rows (over %lld)", (long long)s->estimate_rows,
			 (long long)d->estimate_over);
		hold_for_estimate(review, d, why);
		return EST_OVER;
	default:
		break;
	}
	/* Only one plain statement is explained: never anything that could run as a side effect. */
	if (nstmts != 1) {
		hold_for_estimate(review, d, "several statements cannot be estimated");
		return EST_OVER;
	}
	if (has_params) {
		hold_for_estimate(review, d, "a statement with parameters cannot be estimated");
		return EST_OVER;
	}
	if (s->pipeline.txn_status == 'E')
		return EST_UNDER; /* a failed transaction runs nothing: the server refuses it */
	if (!pipeline_idle(&s->pipeline)) {
		s->mask_waiting = true; /* looked at again once the upstream is idle */
		return EST_WAIT;
	}
	/* In a transaction block a failing EXPLAIN must not fail the client's transaction. */
	char *q = s->pipeline.txn_status == 'T'
			  ? xasprintf("SAVEPOINT pgcordon_estimate;\nEXPLAIN (FORMAT JSON) %s\n;\nRELEASE SAVEPOINT "
				      "pgcordon_estimate",
				      sql)
			  : xasprintf("EXPLAIN (FORMAT JSON) %s\n", sql);
	session__send_internal(s, q, 0, false);
	free(q);
	Expectation *e = session__last_internal(s);
	if (!e) {
		hold_for_estimate(review, d, "the planner could not be asked");
		return EST_OVER;
	}
	e->estimate = true;
	s->estimate_state = ESTIMATE_RUNNING;
	s->estimate_failed = true; /* until a plan row says otherwise */
	s->estimate_rows = 0;
	return EST_WAIT;
}

void session__estimate_message(Session *s, char type, const uint8_t *body, size_t blen)
{
	if (type == 'D') {
		MsgReader r;
		msgr_init(&r, body, blen);
		uint32_t len = msgr_u16(&r) == 1 ? msgr_u32(&r) : 0xffffffffu;
		const uint8_t *text = len != 0xffffffffu ? msgr_bytes(&r, len) : NULL;
		json_t *plan = text ? json_loadb((const char *)text, len, 0, NULL) : NULL;
		json_t *rows = json_object_get(json_object_get(json_array_get(plan, 0), "Plan"), "Plan Rows");
		if (json_is_number(rows)) {
			s->estimate_rows = (int64_t)json_number_value(rows);
			s->estimate_failed = false;
		}
		json_decref(plan);
	} else if (type == 'E') {
		s->estimate_failed = true;
	} else if (type == 'Z') {
		if (body && blen == 1 && body[0] == 'E' && s->estimate_failed) {
			/* The EXPLAIN failed inside the client's transaction block: undo just that. */
			session__send_internal(s, "ROLLBACK TO SAVEPOINT pgcordon_estimate;\nRELEASE SAVEPOINT pgcordon_estimate",
					       0, false);
		}
		s->estimate_state = ESTIMATE_DONE;
		s->mask_resume = true; /* the waiting message is judged again */
	}
}
