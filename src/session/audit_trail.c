/* What a session tells the audit trail: sessions, failed logins and statements. */
#include "session/audit_trail.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/audit.h"
#include "core/util.h"
#include "session/session_internal.h"

#define NAME_BUCKETS 64
#define WHOLE_MAX (1024 * 1024) /* larger messages are recorded as "too large", never buffered */

struct AuditStmt {
	int64_t start_us;
	uint64_t n;
	int part;
	char *sql;
	json_t *params;
	json_t *decision;
	json_t *columns;
	json_t *rows;
	uint8_t formats[1600]; /* per result column: 1 for binary */
	int ncols;
	size_t bytes;
	int64_t rows_sent;
	bool truncated;
	bool copy_out;
};

/* A prepared statement's text, or a portal's statement text, parameters and decision. */
typedef struct Named {
	char *name;
	char *sql;
	json_t *params;
	json_t *decision;
	struct Named *next;
} Named;

struct AuditNames {
	Named *statements[NAME_BUCKETS];
	Named *portals[NAME_BUCKETS];
	int count;
};

static unsigned bucket(const char *name)
{
	unsigned h = 5381;
	for (const char *p = name; *p; p++)
		h = h * 33 + (unsigned char)*p;
	return h % NAME_BUCKETS;
}

static Named *named_find(Named **table, const char *name)
{
	for (Named *n = table[bucket(name)]; n; n = n->next)
		if (strcmp(n->name, name) == 0)
			return n;
	return NULL;
}

static void named_clear(Named *n)
{
	free(n->sql);
	json_decref(n->params);
	json_decref(n->decision);
	n->sql = NULL;
	n->params = n->decision = NULL;
}

/* The entry for name, emptied; NULL when the session already tracks too many. */
static Named *named_put(Session *s, Named **table, const char *name)
{
	Named *n = named_find(table, name);
	if (n) {
		named_clear(n);
		return n;
	}
	if (s->audit_names->count >= SESSION_PREPARED_MAX)
		return NULL;
	n = xcalloc(1, sizeof *n);
	n->name = xstrdup(name);
	unsigned b = bucket(name);
	n->next = table[b];
	table[b] = n;
	s->audit_names->count++;
	return n;
}

void session__audit_free(Session *s)
{
	struct AuditNames *an = s->audit_names;
	if (an) {
		for (int b = 0; b < NAME_BUCKETS; b++) {
			for (Named **t = (Named *[]){an->statements[b], an->portals[b]}, **end = t + 2; t < end; t++) {
				Named *n = *t;
				while (n) {
					Named *next = n->next;
					named_clear(n);
					free(n->name);
					free(n);
					n = next;
				}
			}
		}
		free(an);
		s->audit_names = NULL;
	}
	json_decref(s->audit_columns);
	s->audit_columns = NULL;
	audit_stmt_free(s->audit_pending);
	s->audit_pending = NULL;
}

void audit_stmt_free(AuditStmt *a)
{
	if (!a)
		return;
	free(a->sql);
	json_decref(a->params);
	json_decref(a->decision);
	json_decref(a->columns);
	json_decref(a->rows);
	free(a);
}

/* ---- sessions ---- */

static json_t *groups_json(Session *s)
{
	json_t *g = json_array();
	for (int i = 0; i < s->ngroups; i++)
		json_array_append_new(g, json_string(s->groups[i]));
	return g;
}

void session__audit_session_start(Session *s, const char *application_name)
{
	if (!audit_enabled())
		return;
	s->auditing = true;
	uint8_t r[8];
	util_random(r, sizeof r);
	snprintf(s->audit_id, sizeof s->audit_id, "%02x%02x%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2], r[3], r[4], r[5],
		 r[6], r[7]);
	s->audit_names = xcalloc(1, sizeof *s->audit_names);
	json_t *body = json_pack("{ss ss ss ss* so ss ss ss ss* ss sb sI}", "session_id", s->audit_id, "user",
				 s->user_name, "auth_method", s->auth_method, "subject", s->user_name, "groups",
				 groups_json(s), "client_address", s->peer, "application_name",
				 application_name ? application_name : "", "database", s->database_name, "role",
				 s->role, "policies", s->policy ? s->policy->names : "", "client_tls", s->client_tls,
				 "gateway_session", (json_int_t)s->id);
	if (s->expires_at)
		json_object_set_new(body, "credential_expires", json_integer(s->expires_at));
	audit_submit(s->worker->index, "session_start", s->audit_id, s->user_name, s->database_name, body);
}

void session__audit_session_end(Session *s, const char *reason)
{
	if (!s->auditing)
		return;
	json_t *body = json_pack("{ss ss ss sI sI sI sI}", "session_id", s->audit_id, "user", s->user_name, "reason",
				 reason ? reason : "", "bytes_from_client", (json_int_t)s->bytes_from_client,
				 "bytes_from_server", (json_int_t)s->bytes_from_server, "statements",
				 (json_int_t)s->audit_n, "duration_ms", (json_int_t)(util_now_ms() - s->started_ms));
	audit_submit(s->worker->index, "session_end", s->audit_id, s->user_name, s->database_name, body);
	s->auditing = false;
}

void session__audit_login_failed(Session *s, const char *method, const char *why)
{
	if (!audit_enabled())
		return;
	json_t *body = json_pack("{ss* ss* ss ss ss}", "user", s->user_name, "database", s->database_name, "method",
				 method, "reason", why, "client_address", s->peer);
	audit_submit(s->worker->index, "login_failed", NULL, s->user_name, s->database_name, body);
}

/* ---- statements: the client side ---- */

static json_t *decision_json(Session *s, const Decision *d)
{
	if (!d)
		return json_pack("{ss ss ss}", "action", "allow", "policy", s->policy ? s->policy->names : "", "rule", "");
	json_t *j = json_pack("{ss ss ss}", "action", d->kind == DEC_BLOCK ? "block" : "allow", "policy",
			      d->policy ? d->policy : "", "rule", d->rule ? d->rule : "");
	if (d->kind == DEC_BLOCK)
		json_object_set_new(j, "reason", json_string(d->message));
	return j;
}

static AuditStmt *stmt_new(Session *s, const char *sql, json_t *params, json_t *decision)
{
	AuditStmt *a = xcalloc(1, sizeof *a);
	a->start_us = audit_now_us();
	a->sql = xstrdup(sql ? sql : "");
	a->params = params;
	a->decision = decision;
	return a;
}

AuditStmt *session__audit_stmt(Session *s, const char *sql, const Decision *d)
{
	return stmt_new(s, sql, NULL, decision_json(s, d));
}

void session__audit_parse(Session *s, const char *name, const char *sql)
{
	Named *n = named_put(s, s->audit_names->statements, name);
	if (n)
		n->sql = xstrdup(sql);
}

/* A value as text when it is valid UTF-8 text, else as {"hex": ...}. */
static json_t *value_json(const uint8_t *v, size_t len, bool binary)
{
	if (!binary) {
		json_t *t = json_stringn((const char *)v, len);
		if (t)
			return t;
	}
	char *hex = xmalloc(2 * len + 1);
	for (size_t i = 0; i < len; i++)
		snprintf(hex + 2 * i, 3, "%02x", v[i]);
	json_t *j = json_pack("{ss}", "hex", hex);
	free(hex);
	return j;
}

AuditStmt *session__audit_bind(Session *s, const uint8_t *body, size_t len, const Decision *d)
{
	MsgReader r;
	msgr_init(&r, body, len);
	const char *portal = msgr_str(&r);
	const char *stmt = msgr_str(&r);
	uint16_t nformats = msgr_u16(&r);
	const uint8_t *formats = msgr_bytes(&r, 2 * (size_t)nformats);
	uint16_t nparams = msgr_u16(&r);
	json_t *params = json_array();
	for (uint16_t i = 0; i < nparams && !r.failed; i++) {
		uint32_t plen = msgr_u32(&r);
		if (plen == 0xffffffffu) {
			json_array_append_new(params, json_null());
			continue;
		}
		const uint8_t *v = msgr_bytes(&r, plen);
		if (!v)
			break;
		bool binary = formats && nformats && (nformats == 1 ? formats[1] : i < nformats ? formats[2 * i + 1] : 0);
		json_array_append_new(params, value_json(v, plen, binary));
	}
	Named *st = stmt ? named_find(s->audit_names->statements, stmt) : NULL;
	const char *sql = st ? st->sql : NULL;
	if (d && d->kind == DEC_BLOCK)
		return stmt_new(s, sql, params, decision_json(s, d));
	Named *p = portal ? named_put(s, s->audit_names->portals, portal) : NULL;
	if (!p) {
		json_decref(params);
		return NULL;
	}
	p->sql = xstrdup(sql ? sql : "");
	p->params = params;
	p->decision = decision_json(s, d);
	return NULL;
}

AuditStmt *session__audit_execute(Session *s, const char *portal)
{
	Named *p = named_find(s->audit_names->portals, portal);
	if (!p)
		return stmt_new(s, NULL, NULL, decision_json(s, NULL));
	return stmt_new(s, p->sql, json_incref(p->params), json_incref(p->decision));
}

/* ---- statements: the server side ---- */

static json_t *parse_columns(const uint8_t *body, size_t len, uint8_t *formats, int *ncols)
{
	MsgReader r;
	msgr_init(&r, body, len);
	int n = msgr_u16(&r);
	json_t *cols = json_array();
	*ncols = 0;
	for (int i = 0; i < n && !r.failed; i++) {
		const char *name = msgr_str(&r);
		msgr_u32(&r); /* table oid */
		msgr_u16(&r); /* attnum */
		uint32_t type = msgr_u32(&r);
		msgr_u16(&r);
		msgr_u32(&r);
		uint16_t format = msgr_u16(&r);
		if (r.failed)
			break;
		json_array_append_new(cols, json_pack("{ss sI}", "name", name, "type_oid", (json_int_t)type));
		if (i < 1600)
			formats[(*ncols)++] = format == 1;
	}
	return cols;
}

void session__audit_described(Session *s, const uint8_t *body, size_t len)
{
	json_decref(s->audit_columns);
	s->audit_columns = parse_columns(body, len, s->audit_formats, &s->audit_ncols);
}

bool session__audit_wants(const AuditStmt *a, char type, uint32_t len)
{
	if (len > WHOLE_MAX)
		return false;
	switch (type) {
	case 'T': case 'C': case 'E': case 'I': case 's': case 'H': case 'V':
		return true;
	case 'D': case 'd':
		return !a->truncated; /* rows past the capture are only counted */
	default:
		return false;
	}
}

static bool capture_full(Session *s, AuditStmt *a, size_t more)
{
	if (json_array_size(a->rows) >= (size_t)s->config->audit_rows || a->bytes + more > (size_t)s->config->audit_bytes) {
		a->truncated = true;
		return true;
	}
	return false;
}

static void capture_row(Session *s, AuditStmt *a, const uint8_t *body, size_t len)
{
	if (capture_full(s, a, len))
		return;
	if (!a->rows)
		a->rows = json_array();
	MsgReader r;
	msgr_init(&r, body, len);
	int n = msgr_u16(&r);
	json_t *row = json_array();
	for (int i = 0; i < n && !r.failed; i++) {
		uint32_t vlen = msgr_u32(&r);
		if (vlen == 0xffffffffu) {
			json_array_append_new(row, json_null());
			continue;
		}
		const uint8_t *v = msgr_bytes(&r, vlen);
		if (!v)
			break;
		json_array_append_new(row, value_json(v, vlen, i < a->ncols && a->formats[i]));
	}
	json_array_append_new(a->rows, row);
	a->bytes += len;
}

static void capture_copy(Session *s, AuditStmt *a, const uint8_t *body, size_t len)
{
	if (capture_full(s, a, len))
		return;
	if (!a->rows)
		a->rows = json_array();
	size_t n = len && body[len - 1] == '\n' ? len - 1 : len;
	json_array_append_new(a->rows, json_pack("[o]", value_json(body, n, false)));
	a->bytes += len;
}

/* The number at the end of a command tag ("SELECT 3", "INSERT 0 5"), or -1. */
static int64_t tag_rows(const char *tag)
{
	const char *sp = strrchr(tag, ' ');
	if (!sp || sp[1] < '0' || sp[1] > '9')
		return -1;
	return strtoll(sp + 1, NULL, 10);
}

static json_t *error_json(const uint8_t *body, size_t len)
{
	json_t *e = json_object();
	MsgReader r;
	msgr_init(&r, body, len);
	for (;;) {
		uint8_t code = msgr_u8(&r);
		if (r.failed || code == 0)
			break;
		const char *v = msgr_str(&r);
		if (!v)
			break;
		const char *key = code == 'S' ? "severity" : code == 'C' ? "sqlstate" : code == 'M' ? "message"
				: code == 'D' ? "detail" : code == 'H' ? "hint" : code == 'W' ? "where" : NULL;
		if (key)
			json_object_set_new(e, key, value_json((const uint8_t *)v, strlen(v), false));
	}
	return e;
}

/* Submits the record of a (part of a) statement; resets it for the next part. */
static uint64_t submit(Session *s, AuditStmt *a, const char *tag, json_t *error)
{
	int64_t now = audit_now_us();
	if (a->part == 0)
		a->n = ++s->audit_n; /* numbered when recorded: statements the server skipped get none */
	json_t *body = json_pack("{ss sI ss sO}", "session_id", s->audit_id, "n", (json_int_t)a->n, "sql", a->sql,
				 "decision", a->decision);
	if (a->part)
		json_object_set_new(body, "part", json_integer(a->part + 1));
	if (a->params)
		json_object_set(body, "params", a->params);
	json_object_set_new(body, "duration_ms", json_real((double)(now - a->start_us) / 1000.0));
	json_object_set_new(body, "rows_sent", json_integer(a->rows_sent));
	if (tag) {
		json_object_set_new(body, "tag", value_json((const uint8_t *)tag, strlen(tag), false));
		int64_t n = tag_rows(tag);
		json_object_set_new(body, "rows", json_integer(n >= 0 ? n : a->rows_sent));
	}
	if (error)
		json_object_set_new(body, "error", error);
	json_t *cols = a->columns ? a->columns : NULL;
	if (cols || a->rows) {
		json_t *res = json_object();
		if (cols)
			json_object_set(res, "columns", cols);
		json_object_set_new(res, "rows", a->rows ? a->rows : json_array());
		json_object_set_new(res, "truncated", json_boolean(a->truncated));
		json_object_set_new(body, "result", res);
		a->rows = NULL;
	}
	uint64_t ticket = audit_submit(s->worker->index, "statement", s->audit_id, s->user_name, s->database_name, body);
	/* The next statement of the same Query starts here. */
	a->part++;
	a->start_us = now;
	json_decref(a->columns);
	a->columns = NULL;
	a->ncols = 0;
	a->bytes = 0;
	a->rows_sent = 0;
	a->truncated = false;
	a->copy_out = false;
	return ticket;
}

AuditOutcome session__audit_on_server(Session *s, AuditStmt *a, bool whole, char type, const uint8_t *body,
				      size_t len, uint64_t *ticket)
{
	uint64_t t = 0;
	switch (type) {
	case 'T':
		json_decref(a->columns);
		a->columns = whole ? parse_columns(body, len, a->formats, &a->ncols) : json_array();
		return AUDIT_PASS;
	case 'H':
		a->copy_out = true;
		json_decref(a->columns);
		a->columns = json_pack("[{ss}]", "name", "COPY");
		return AUDIT_PASS;
	case 'D':
	case 'd':
		if (type == 'd' && !a->copy_out)
			return AUDIT_PASS; /* COPY FROM data goes the other way */
		a->rows_sent++;
		if (!a->columns && s->audit_columns) {
			a->columns = json_incref(s->audit_columns);
			a->ncols = s->audit_ncols;
			memcpy(a->formats, s->audit_formats, (size_t)s->audit_ncols);
		}
		if (!whole)
			a->truncated = true;
		else if (type == 'D')
			capture_row(s, a, body, len);
		else
			capture_copy(s, a, body, len);
		return AUDIT_PASS;
	case 'C': {
		char tag[128] = "?";
		if (whole && len)
			snprintf(tag, sizeof tag, "%.*s", (int)strnlen((const char *)body, len), (const char *)body);
		t = submit(s, a, tag, NULL);
		break;
	}
	case 'I':
		t = submit(s, a, "EMPTY", NULL);
		break;
	case 'V':
		t = submit(s, a, "FUNCTION CALL", NULL);
		break;
	case 's':
		t = submit(s, a, "SUSPENDED", NULL);
		break;
	case 'E': {
		json_t *err = whole ? error_json(body, len) : json_pack("{ss}", "message", "(too large to record)");
		t = submit(s, a, NULL, err);
		break;
	}
	default:
		return AUDIT_PASS;
	}
	*ticket = t;
	return audit_is_strict() && t ? AUDIT_HOLD : AUDIT_PASS;
}

void session__audit_cut_off(Session *s, AuditStmt *a, const char *message)
{
	submit(s, a, NULL, json_pack("{ss ss}", "sqlstate", "42501", "message", message));
}
