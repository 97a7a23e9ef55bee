/*
 * Masking in the session: loads the sensitive-column catalog over the session's own
 * upstream connection (an internal query the client never sees, before its first
 * statement and again after DDL or a reload), rewrites statements through mask/rewrite.c,
 * and scrubs what comes back: detected values in rows and COPY data, and the fields of
 * errors and notices that can echo values.
 */
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "core/metrics.h"
#include "core/util.h"
#include "mask/mask.h"
#include "session/rowplan.h"
#include "session/session.h"
#include "session/session_internal.h"

/* Bumped by every DDL statement any masked session sees complete: catalogs may be stale. */
static uint64_t ddl_generation = 1;

void session__mask_start_load(Session *s)
{
	const EffectivePolicy *ep = s->policy;
	mask_catalog_free(s->mask_next);
	s->mask_next = mask_catalog_new(ep->mask, ep->nmask, s->config->masking_key, s->config->masking_key_len);
	free(s->mask_error);
	s->mask_error = NULL;
	s->mask_loading = true;
	s->mask_gen = __atomic_load_n(&ddl_generation, __ATOMIC_ACQUIRE);
	s->mask_policy_id = ep->id;
	char *sql = mask_catalog_sql(ep->mask, ep->nmask);
	session__send_internal(s, sql, 0, true);
	free(sql);
	if (sock_flush(&s->server) == IO_ERROR)
		session_close(s, "upstream write failed", "08006", "pgcordon: lost connection to upstream database");
}

/* One row of the catalog query. */
static void catalog_row(Session *s, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	int n = msgr_u16(&r);
	const char *vals[MASK_CATALOG_COLUMNS];
	char *copies[MASK_CATALOG_COLUMNS] = {0};
	bool ok = n == MASK_CATALOG_COLUMNS;
	for (int i = 0; ok && i < n; i++) {
		uint32_t len = msgr_u32(&r);
		if (len == 0xffffffffu) {
			vals[i] = NULL;
			continue;
		}
		const uint8_t *p = msgr_bytes(&r, len);
		if (!p) {
			ok = false;
			break;
		}
		copies[i] = xmalloc(len + 1);
		memcpy(copies[i], p, len);
		copies[i][len] = 0;
		vals[i] = copies[i];
	}
	if (!ok || !s->mask_next || !mask_catalog_add_row(s->mask_next, vals, n)) {
		if (!s->mask_error)
			s->mask_error = xstrdup("the masking catalog query returned an unexpected row");
	}
	for (int i = 0; i < MASK_CATALOG_COLUMNS; i++)
		free(copies[i]);
}

static void catalog_error(Session *s, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	uint8_t code;
	const char *v, *msg = "error";
	while (msgr_error_field(&r, &code, &v))
		if (code == 'M')
			msg = v;
	free(s->mask_error);
	s->mask_error = xasprintf("the masking catalog could not be loaded: %s", msg);
}

/* The catalog query finished (its ReadyForQuery): adopt the new catalog, or fail closed. */
static void catalog_done(Session *s)
{
	s->mask_loading = false;
	char q[300];
	if (s->mask_error) {
		mask_catalog_free(s->mask_next);
		s->mask_next = NULL;
		mask_catalog_free(s->mask_cat);
		s->mask_cat = NULL;
		log_event(LOG_ERROR, "mask_catalog_failed", "session=%llu error=%s", (unsigned long long)s->id,
			  log_quote(q, sizeof q, s->mask_error));
	} else {
		mask_catalog_free(s->mask_cat);
		s->mask_cat = s->mask_next;
		s->mask_next = NULL;
		log_event(LOG_DEBUG, "mask_catalog_loaded", "session=%llu relations=%d functions=%d",
			  (unsigned long long)s->id, s->mask_cat->nrels, s->mask_cat->nfunctions);
	}
	s->mask_resume = true; /* the client's waiting statement can go now */
}

bool session__mask_catalog_stale(Session *s)
{
	return !s->mask_loading && (s->mask_gen != __atomic_load_n(&ddl_generation, __ATOMIC_ACQUIRE) ||
				    s->mask_policy_id != s->policy->id);
}

/* A statement whose tag says it changed the schema. */
static void maybe_ddl(const uint8_t *body, size_t blen)
{
	/* ROLLBACK too: DDL undone must be seen again (a catalog loaded inside the transaction is wrong). */
	static const char *const tags[] = {"CREATE ", "ALTER ", "DROP ", "COMMENT", "GRANT", "REVOKE", "ROLLBACK",
					   "IMPORT"};
	for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++) {
		size_t n = strlen(tags[i]);
		if (blen >= n && memcmp(body, tags[i], n) == 0) {
			__atomic_add_fetch(&ddl_generation, 1, __ATOMIC_ACQ_REL);
			return;
		}
	}
}

/* The built message as a buffer of its own (a builder may hold it inline); NULL if building failed. */
static uint8_t *take(MsgBuilder *b, size_t *outlen)
{
	uint8_t *out = NULL;
	if (!b->failed) {
		out = xmalloc(b->len);
		memcpy(out, b->data, b->len);
		*outlen = b->len;
	}
	msgb_free(b);
	return out;
}

/*
 * Rebuilds a DataRow: the fields m masks (m may be NULL) masked, every text value scanned
 * by the detectors det. NULL when nothing changed, or when the row is malformed (then
 * *malformed is set).
 */
static uint8_t *rebuild_datarow(const RowMask *m, unsigned det, MaskBuf *buf, const uint8_t *body, size_t blen,
				size_t *outlen, bool *malformed)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	uint16_t n = msgr_u16(&r);
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'D');
	msgb_u16(&b, n);
	bool changed = false;
	*malformed = false;
	for (int i = 0; i < n; i++) {
		uint32_t len = msgr_u32(&r);
		if (len == 0xffffffffu) {
			msgb_u32(&b, len);
			continue;
		}
		const uint8_t *p = msgr_bytes(&r, len);
		if (!p) {
			msgb_free(&b);
			*malformed = true;
			return NULL;
		}
		bool scan = det != 0;
		if (m && m->fields[i].masked) {
			changed = true;
			if (!mask_rowmask_value(m, i, p, len, buf)) {
				msgb_u32(&b, 0xffffffffu);
				continue;
			}
			/* what a method keeps (an email's domain and beyond) is scanned as well */
			p = buf->buf;
			len = (uint32_t)buf->len;
		} else if (memchr(p, 0, len)) {
			scan = false; /* binary: nothing textual to scan */
		}
		size_t sl = 0;
		uint8_t *v = scan ? mask_detect_scrub(det, p, len, &sl) : NULL;
		if (v) {
			changed = true;
			msgb_u32(&b, (uint32_t)sl);
			msgb_bytes(&b, v, sl);
			free(v);
		} else {
			msgb_u32(&b, len);
			msgb_bytes(&b, p, len);
		}
	}
	msgb_end(&b);
	if (!changed) {
		msgb_free(&b);
		return NULL;
	}
	return take(&b, outlen);
}

/* Appends s as a string with whatever any detector finds redacted; true if it found something. */
static bool put_scrubbed_str(MsgBuilder *b, const char *s)
{
	size_t sl = 0;
	uint8_t *t = mask_detect_scrub(~0u, (const uint8_t *)s, strlen(s), &sl);
	if (!t) {
		msgb_str(b, s);
		return false;
	}
	t = xrealloc(t, sl + 1);
	t[sl] = 0;
	msgb_str(b, (const char *)t);
	free(t);
	return true;
}

/* Error and notice fields that echo values (detail, where, internal query) are dropped; text is scrubbed. */
static uint8_t *scrub_error(char type, const uint8_t *body, size_t blen, size_t *outlen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, type);
	uint8_t code;
	const char *v;
	while (msgr_error_field(&r, &code, &v)) {
		if (code == 'D' || code == 'W' || code == 'q' || code == 'P' || code == 'p')
			continue;
		msgb_u8(&b, code);
		put_scrubbed_str(&b, v);
	}
	msgb_u8(&b, 0);
	msgb_end(&b);
	return take(&b, outlen);
}

/* ---- results masked in the gateway (row plans) ---- */

typedef struct PortalPlan {
	char *name;
	RowPlan *plan;
	struct PortalPlan *next;
} PortalPlan;

RowPlan *session__portal_plan(Session *s, const char *portal)
{
	for (PortalPlan *p = s->portals; p; p = p->next)
		if (strcmp(p->name, portal) == 0)
			return p->plan;
	return NULL;
}

void session__portal_set_plan(Session *s, const char *portal, RowPlan *plan)
{
	for (PortalPlan **pp = &s->portals; *pp; pp = &(*pp)->next) {
		PortalPlan *p = *pp;
		if (strcmp(p->name, portal) != 0)
			continue;
		rowplan_release(p->plan);
		if (plan) {
			p->plan = rowplan_ref(plan);
		} else {
			*pp = p->next;
			free(p->name);
			free(p);
		}
		return;
	}
	if (!plan)
		return;
	PortalPlan *p = xcalloc(1, sizeof *p);
	p->name = xstrdup(portal);
	p->plan = rowplan_ref(plan);
	p->next = s->portals;
	s->portals = p;
}

void session__mask_parameter(Session *s, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	const char *name = msgr_str(&r), *value = msgr_str(&r);
	if (!name || !value)
		return;
	if (strcmp(name, "client_encoding") == 0)
		s->client_utf8 = strcmp(value, "UTF8") == 0;
	bool lexer_differs = (strcmp(name, "standard_conforming_strings") == 0 && strcmp(value, "on") != 0) ||
			     (strcmp(name, "client_encoding") == 0 && inspect_encoding_unsafe(value));
	/*
	 * A restricted session's statements are inspected as the server reads them with
	 * standard_conforming_strings on and a client encoding that hides no quote. Statements
	 * that change either are refused; should the server report either all the same (a
	 * database or role default, a function), the session ends before another statement.
	 */
	bool restricted = s->policy && !s->policy->unrestricted && !s->policy->allow_all;
	if (restricted && lexer_differs) {
		char msg[300];
		snprintf(msg, sizeof msg,
			 "pgcordon: the server now reads statements with %s = %s, which the gateway's inspection cannot "
			 "follow; the session is closed",
			 name, value);
		session_close(s, "upstream lexer differs", "0A000", msg);
	}
}

/* A RowDescription answering a statement with a row plan: which fields come from masked columns. */
static void plan_described(Session *s, RowPlan *plan, const uint8_t *body, size_t blen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	int n = msgr_u16(&r);
	RowMask *m = s->mask_cat ? mask_rowmask_new(s->mask_cat, n) : NULL;
	bool ok = m != NULL;
	for (int i = 0; ok && i < n; i++) {
		msgr_str(&r);
		uint32_t relid = msgr_u32(&r);
		int attnum = (int16_t)msgr_u16(&r);
		uint32_t typoid = msgr_u32(&r);
		msgr_u16(&r); /* typlen */
		int32_t typmod = (int32_t)msgr_u32(&r);
		msgr_u16(&r); /* format */
		ok = !r.failed && mask_rowmask_field(m, s->mask_cat, i, relid, attnum, typoid, typmod);
	}
	mask_rowmask_free(plan->mask);
	plan->mask = ok ? m : NULL;
	plan->bad = !ok;
	if (!ok)
		mask_rowmask_free(m);
}

/* A DataRow under a row plan: masked fields masked, the rest scanned by the detectors. */
static uint8_t *plan_datarow(Session *s, const RowPlan *plan, const uint8_t *body, size_t blen, size_t *outlen)
{
	const RowMask *m = plan->mask;
	unsigned det = s->policy->detect;
	bool malformed;
	if (m && !plan->bad && !m->nmasked)
		return det ? rebuild_datarow(NULL, det, NULL, body, blen, outlen, &malformed) : NULL;
	/* Masked fields are masked counting UTF-8 characters: any doubt ends the session. */
	if (!m || plan->bad || !s->client_utf8 || blen < 2 || ((body[0] << 8) | body[1]) != m->nfields) {
		session_close(s, "result could not be masked", "XX000",
			      "pgcordon: a result could not be masked; it was not sent");
		return NULL;
	}
	uint8_t *out = rebuild_datarow(m, det, &s->mask_buf, body, blen, outlen, &malformed);
	if (malformed)
		session_close(s, "malformed DataRow under masking", "08P01", "pgcordon: invalid message from upstream database");
	return out;
}

/* A notification's channel and payload, scrubbed by every detector (another session chose them). */
static uint8_t *scrub_notification(const uint8_t *body, size_t blen, size_t *outlen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	uint32_t pid = msgr_u32(&r);
	const char *parts[2] = {msgr_str(&r), msgr_str(&r)};
	if (r.failed)
		return NULL; /* malformed: the relay's own checks deal with it */
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'A');
	msgb_u32(&b, pid);
	bool changed = false;
	for (int i = 0; i < 2; i++)
		changed |= put_scrubbed_str(&b, parts[i]);
	msgb_end(&b);
	if (!changed) {
		msgb_free(&b);
		return NULL;
	}
	return take(&b, outlen);
}

bool session__mask_wants(const Session *s, const Expectation *f, char type, uint8_t first)
{
	if (type == 'S')
		return s->policy->masks_columns || !s->policy->unrestricted; /* client_encoding, the lexer */
	if (type == 'A')
		return s->policy->nmask != 0; /* asynchronous: whatever the front is */
	if (f && f->catalog)
		return type == 'D' || type == 'E' || type == 'Z';
	if (f && f->rowplan && type == 'T')
		return true;
	if (f && f->rowplan && type == 'D') {
		const RowMask *m = f->rowplan->mask;
		/* unknown shape: seen (to fail closed); nothing masked: only the detectors look */
		return !m || f->rowplan->bad || m->nmasked || s->policy->detect;
	}
	if (f && f->internal)
		return false;
	/* Every session's DDL makes masked sessions reload (first letters of CREATE, ALTER,
	 * DROP, COMMENT, GRANT, REVOKE/ROLLBACK, IMPORT; not SELECT, which every query ends with). */
	if (type == 'C' && first && strchr("CADGRI", first))
		return true;
	if (!s->policy->nmask)
		return false;
	if (type == 'E' || type == 'N' || type == 'C')
		return true;
	return s->policy->detect && (type == 'D' || type == 'd' || type == 'H');
}

static uint8_t *rewrite_server_message(Session *s, const Expectation *f, char type, const uint8_t *body, size_t blen,
				       size_t *outlen)
{
	if (type == 'S') {
		session__mask_parameter(s, body, blen);
		return NULL;
	}
	if (type == 'A')
		return scrub_notification(body, blen, outlen);
	if (f && f->catalog) {
		if (type == 'D')
			catalog_row(s, body, blen);
		else if (type == 'E')
			catalog_error(s, body, blen);
		else if (type == 'Z')
			catalog_done(s);
		return NULL;
	}
	if (f && f->rowplan && type == 'T') {
		plan_described(s, f->rowplan, body, blen);
		return NULL;
	}
	if (f && f->rowplan && type == 'D')
		return plan_datarow(s, f->rowplan, body, blen, outlen);
	switch (type) {
	case 'C':
		maybe_ddl(body, blen);
		return NULL;
	case 'E':
	case 'N':
		return s->policy->nmask ? scrub_error(type, body, blen, outlen) : NULL;
	case 'D': {
		bool malformed; /* the relay passes a malformed row on as the server sent it */
		return rebuild_datarow(NULL, s->policy->detect, NULL, body, blen, outlen, &malformed);
	}
	case 'H':
		/* CopyOutResponse: binary COPY data has its fields behind length words, with NUL
		 * bytes the detectors do not scan; the COPY is under way, so the session ends */
		if (blen >= 1 && body[0] != 0)
			session_close(s, "binary COPY under detection", "0A000",
				      "pgcordon: COPY in binary format cannot be scanned for detected secrets; use text or csv");
		return NULL;
	case 'd': {
		if (memchr(body, 0, blen))
			return NULL; /* text COPY data holds no NUL byte: nothing textual to scan */
		size_t sl = 0;
		uint8_t *t = mask_detect_scrub(s->policy->detect, body, blen, &sl);
		if (!t)
			return NULL;
		MsgBuilder b;
		msgb_init(&b);
		msgb_begin(&b, 'd');
		msgb_bytes(&b, t, sl);
		msgb_end(&b);
		free(t);
		return take(&b, outlen);
	}
	default: return NULL;
	}
}

uint8_t *session__mask_server_message(Session *s, const Expectation *f, char type, const uint8_t *body, size_t blen,
				      size_t *outlen)
{
	uint8_t *out = rewrite_server_message(s, f, type, body, blen, outlen);
	if (out)
		metrics_inc(type == 'D' || type == 'd' ? MET_ROWS_MASKED : MET_MESSAGES_SCRUBBED);
	return out;
}

void session__mask_free(Session *s)
{
	mask_catalog_free(s->mask_cat);
	mask_catalog_free(s->mask_next);
	free(s->mask_error);
	s->mask_cat = s->mask_next = NULL;
	s->mask_error = NULL;
	rowplan_release(s->rowplan_next);
	s->rowplan_next = NULL;
	free(s->mask_buf.buf);
	s->mask_buf = (MaskBuf){0};
	while (s->portals)
		session__portal_set_plan(s, s->portals->name, NULL);
}
