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
#include "core/util.h"
#include "mask/mask.h"
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
	const char *vals[9];
	char *copies[9] = {0};
	bool ok = n == 9;
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
	for (int i = 0; i < 9; i++)
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

/* Rebuilds a DataRow with every text field scrubbed; NULL when nothing was found. */
static uint8_t *scrub_datarow(unsigned det, const uint8_t *body, size_t blen, size_t *outlen)
{
	MsgReader r;
	msgr_init(&r, body, blen);
	uint16_t n = msgr_u16(&r);
	MsgBuilder b;
	msgb_init(&b);
	msgb_begin(&b, 'D');
	msgb_u16(&b, n);
	bool changed = false;
	for (int i = 0; i < n; i++) {
		uint32_t len = msgr_u32(&r);
		if (len == 0xffffffffu) {
			msgb_u32(&b, len);
			continue;
		}
		const uint8_t *p = msgr_bytes(&r, len);
		if (!p) {
			msgb_free(&b);
			return NULL; /* malformed: the relay passes it on as the server sent it */
		}
		size_t sl = 0;
		uint8_t *s = memchr(p, 0, len) ? NULL : mask_detect_scrub(det, p, len, &sl);
		if (s) {
			changed = true;
			msgb_u32(&b, (uint32_t)sl);
			msgb_bytes(&b, s, sl);
			free(s);
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
		size_t sl = 0;
		uint8_t *s = mask_detect_scrub(~0u, (const uint8_t *)v, strlen(v), &sl);
		msgb_u8(&b, code);
		if (s) {
			s = xrealloc(s, sl + 1);
			s[sl] = 0;
			msgb_str(&b, (const char *)s);
			free(s);
		} else {
			msgb_str(&b, v);
		}
	}
	msgb_u8(&b, 0);
	msgb_end(&b);
	return take(&b, outlen);
}

bool session__mask_wants(const Session *s, const Expectation *f, char type, uint8_t first)
{
	if (f && f->catalog)
		return type == 'D' || type == 'E' || type == 'Z';
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
	return s->policy->detect && (type == 'D' || type == 'd');
}

uint8_t *session__mask_server_message(Session *s, const Expectation *f, char type, const uint8_t *body, size_t blen,
				      size_t *outlen)
{
	if (f && f->catalog) {
		if (type == 'D')
			catalog_row(s, body, blen);
		else if (type == 'E')
			catalog_error(s, body, blen);
		else if (type == 'Z')
			catalog_done(s);
		return NULL;
	}
	switch (type) {
	case 'C':
		maybe_ddl(body, blen);
		return NULL;
	case 'E':
	case 'N':
		return s->policy->nmask ? scrub_error(type, body, blen, outlen) : NULL;
	case 'D':
		return scrub_datarow(s->policy->detect, body, blen, outlen);
	case 'd': {
		if (memchr(body, 0, blen))
			return NULL; /* binary COPY: masked relations refuse it; nothing textual to scan */
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

void session__mask_free(Session *s)
{
	mask_catalog_free(s->mask_cat);
	mask_catalog_free(s->mask_next);
	free(s->mask_error);
	s->mask_cat = s->mask_next = NULL;
	s->mask_error = NULL;
}
