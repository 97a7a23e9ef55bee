/* What a session tells the audit trail: sessions, failed logins and statements. */
#include "session/audit_trail.h"

#include <ctype.h>
#include <pg_query.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "audit/audit.h"
#include "core/jsonw.h"
#include "core/util.h"
#include "mask/mask.h"
#include "session/hold.h"
#include "session/session_internal.h"

#define NAME_BUCKETS 64
#define WHOLE_MAX (1024 * 1024) /* larger messages are recorded as "too large", never buffered */
#define SPLIT_MAX (256 * 1024) /* a larger Query's later parts carry no text of their own (part_text) */

/*
 * A text that records of one session share: a statement's SQL, a portal's parameters, a
 * decision, a result's columns. Shared by counted reference rather than copied, since
 * pgbench-like traffic repeats the same ones statement after statement. A session and its
 * records live on one worker thread, so the count needs no atomics.
 */
typedef struct AuditText {
	unsigned refs;
	size_t len;
	char *sha256; /* its hex SHA-256 once a record has cut it (text_digest) */
	char s[];     /* NUL-terminated */
} AuditText;

static AuditText *text_new(const char *s, size_t len)
{
	AuditText *t = xmalloc(sizeof *t + len + 1);
	t->refs = 1;
	t->len = len;
	t->sha256 = NULL;
	memcpy(t->s, s, len);
	t->s[len] = 0;
	return t;
}

static AuditText *text_of(const char *s) { return text_new(s, strlen(s)); }

static AuditText *text_ref(AuditText *t)
{
	if (t)
		t->refs++;
	return t;
}

static void text_unref(AuditText *t)
{
	if (t && --t->refs == 0) {
		free(t->sha256);
		free(t);
	}
}

/*
 * The SHA-256 that a record longer than cap shows of text t (NULL when t fits), worked out
 * once: the Executes of one prepared statement share its text, and each is recorded.
 */
static const char *text_digest(AuditText *t, size_t cap)
{
	if (!cap || t->len <= cap)
		return NULL;
	if (!t->sha256) {
		t->sha256 = xmalloc(65);
		util_sha256_hex(t->s, t->len, t->sha256);
	}
	return t->sha256;
}

/* Drops the reference *t holds and sets it to v (whose reference it takes over). */
static void text_set(AuditText **t, AuditText *v)
{
	text_unref(*t);
	*t = v;
}

struct AuditStmt {
	int64_t start_us;
	uint64_t n;
	int part;
	AuditText *sql;
	struct {
		uint32_t at, len; /* within SPLIT_MAX */
	} *spans;   /* each statement's text in a multi-statement sql (part_text) */
	int nspans; /* -1: not split yet */
	AuditText *params;   /* JSON array text, NULL: none */
	AuditText *decision; /* JSON object text */
	AuditText *columns;  /* JSON array text, NULL: no RowDescription yet */
	JsonW rows;     /* the captured rows, as the inside of a JSON array */
	size_t nrows;
	uint8_t *formats; /* per result column: 1 for binary; formats_inline or malloc'd */
	uint8_t formats_inline[32];
	int ncols;
	size_t bytes;
	int64_t rows_sent;
	bool truncated;
	bool copy_out;
	bool unanswered; /* the session ended before the server's answer */
	bool no_wait;    /* strict durability does not hold its answer (see audit_stmt_no_wait) */
};

/* A prepared statement's text, or a portal's statement text, parameters and decision. */
typedef struct Named {
	char *name;
	AuditText *sql;
	AuditText *params;
	AuditText *decision;
	bool masked; /* a statement that names a masked relation: its parameters are redacted */
	bool stamped; /* masked was worked out with a catalog, under policy_id and mask_gen */
	bool uncertain; /* SQL DEALLOCATE or DISCARD ran since: the server may no longer have it */
	bool confirmed; /* the server answered its Parse with ParseComplete */
	uint64_t policy_id, mask_gen;
	struct Named *next;
} Named;

struct AuditNames {
	Named *statements[NAME_BUCKETS];
	Named *portals[NAME_BUCKETS];
	int count;
	/* The last allowing decision as JSON: the same one repeats statement after statement. */
	char *allow_policy, *allow_rule;
	AuditText *allow_json;
	/* The last RowDescription and its columns as JSON, reused while the same one comes back. */
	uint8_t *rowdesc;
	size_t rowdesc_len;
	AuditText *rowdesc_json;
	uint8_t *rowdesc_formats;
	int rowdesc_ncols;
	JsonW scratch; /* a Bind's parameters, or a statement's record, while they are written */
};

#define ROWDESC_CACHE_MAX 4096 /* bytes of RowDescription worth keeping for the comparison */
#define SCRATCH_KEEP 65536     /* the scratch is freed after a larger text */

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
	text_unref(n->sql);
	text_unref(n->params);
	text_unref(n->decision);
	n->sql = n->params = n->decision = NULL;
	n->uncertain = n->confirmed = false;
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

static void named_free_list(Named *n)
{
	while (n) {
		Named *next = n->next;
		named_clear(n);
		free(n->name);
		free(n);
		n = next;
	}
}

void session__audit_free(Session *s)
{
	struct AuditNames *an = s->audit_names;
	if (an) {
		for (int b = 0; b < NAME_BUCKETS; b++) {
			named_free_list(an->statements[b]);
			named_free_list(an->portals[b]);
		}
		free(an->allow_policy);
		free(an->allow_rule);
		text_unref(an->allow_json);
		free(an->rowdesc);
		text_unref(an->rowdesc_json);
		free(an->rowdesc_formats);
		jw_free(&an->scratch);
		free(an);
		s->audit_names = NULL;
	}
	text_set(&s->audit_columns, NULL);
	audit_stmt_free(s->audit_pending);
	s->audit_pending = NULL;
	audit_undo_free(s->audit_undo);
	s->audit_undo = NULL;
}

/* Keeps n column formats: inline for the usual few columns, so a statement's record stays small. */
static void set_formats(AuditStmt *a, const uint8_t *src, int n)
{
	if (a->formats && a->formats != a->formats_inline)
		free(a->formats);
	a->formats = n <= (int)sizeof a->formats_inline ? a->formats_inline : xmalloc((size_t)n);
	memcpy(a->formats, src, (size_t)n);
	a->ncols = n;
}

void audit_stmt_no_wait(AuditStmt *a)
{
	if (a)
		a->no_wait = true;
}

void audit_stmt_free(AuditStmt *a)
{
	if (!a)
		return;
	if (a->formats != a->formats_inline)
		free(a->formats);
	text_unref(a->sql);
	free(a->spans);
	text_unref(a->params);
	text_unref(a->decision);
	text_unref(a->columns);
	jw_free(&a->rows);
	free(a);
}

/* ---- sessions ---- */

static void key_string(JsonW *w, const char *key, const char *value)
{
	jw_key(w, key);
	jw_string(w, value);
}

static void key_int(JsonW *w, const char *key, int64_t value)
{
	jw_key(w, key);
	jw_int(w, value);
}

/* The same for keys written as literals, which need no escaping. */
#define key_string_plain(w, lit, value) (JW_KEY(w, lit), jw_string(w, value))
#define key_int_plain(w, lit, value) (JW_KEY(w, lit), jw_int(w, value))

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
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	key_string(&w, "session_id", s->audit_id);
	key_string(&w, "user", s->user_name);
	key_string(&w, "auth_method", s->auth_method);
	key_string(&w, "subject", s->user_name);
	jw_key(&w, "groups");
	jw_begin_array(&w);
	for (int i = 0; i < s->ngroups; i++)
		jw_string(&w, s->groups[i]);
	jw_end_array(&w);
	key_string(&w, "client_address", s->peer);
	key_string(&w, "application_name", application_name ? application_name : "");
	key_string(&w, "database", s->database_name);
	key_string(&w, "role", s->role);
	key_string(&w, "policies", s->policy ? s->policy->names : "");
	jw_key(&w, "client_tls");
	jw_bool(&w, s->client_tls);
	key_int(&w, "gateway_session", (int64_t)s->id);
	if (s->expires_at)
		key_int(&w, "credential_expires", s->expires_at);
	jw_end_object(&w);
	audit_submit(s->worker->index, "session_start", s->audit_id, s->user_name, s->database_name, jw_take(&w));
}

static uint64_t submit(Session *s, AuditStmt *a, const char *tag, const uint8_t *error, size_t error_len,
		       const char *error_message);

/*
 * Statements forwarded upstream whose answer had not come when the session ended (the
 * client sent Terminate right behind them, or went away): the server may well have run
 * them, so they are recorded, as unanswered. A Query with a statement recorded already is
 * not recorded again.
 */
static void submit_unanswered(Session *s)
{
	for (size_t i = 0; i < s->pipeline.count; i++) {
		Expectation *e = pipeline_at(&s->pipeline, i);
		if (!e->audit || e->skipped || e->audit->part)
			continue; /* a Query whose statements were recorded up to its ReadyForQuery: done */
		/* a statement the gateway refused never ran: its record carries the refusal */
		e->audit->unanswered = !e->refusal;
		submit(s, e->audit, NULL, NULL, 0,
		       e->refusal ? e->refusal : "the session ended before the server answered; the statement may have run");
		audit_stmt_free(e->audit);
		e->audit = NULL;
	}
}

void session__audit_session_end(Session *s, const char *reason)
{
	session__audit_cut_off(s, NULL, NULL); /* the session ended before the cut-off statement did */
	if (!s->auditing)
		return;
	submit_unanswered(s);
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	key_string(&w, "session_id", s->audit_id);
	key_string(&w, "user", s->user_name);
	key_string(&w, "reason", reason ? reason : "");
	key_int(&w, "bytes_from_client", (int64_t)s->bytes_from_client);
	key_int(&w, "bytes_from_server", (int64_t)s->bytes_from_server);
	key_int(&w, "statements", (int64_t)s->audit_n);
	key_int(&w, "duration_ms", (int64_t)(util_now_ms() - s->started_ms));
	jw_end_object(&w);
	audit_submit(s->worker->index, "session_end", s->audit_id, s->user_name, s->database_name, jw_take(&w));
	s->auditing = false;
}

void session__audit_login_failed(Session *s, const char *method, const char *why)
{
	if (!audit_enabled())
		return;
	if (audit_crowded(0)) { /* anyone can fail a login: such records must not crowd out others */
		audit_count_unrecorded(AUDIT_UNREC_LOGIN);
		return;
	}
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	key_string(&w, "user", s->user_name);
	key_string(&w, "database", s->database_name);
	key_string(&w, "method", method);
	key_string(&w, "reason", why);
	key_string(&w, "client_address", s->peer);
	jw_end_object(&w);
	audit_submit(s->worker->index, "login_failed", NULL, s->user_name, s->database_name, jw_take(&w));
}

/* ---- statements: the client side ---- */

static AuditText *decision_json(Session *s, const Decision *d)
{
	struct AuditNames *an = s->audit_names;
	bool block = d && d->kind == DEC_BLOCK;
	const char *policy = d ? (d->policy ? d->policy : "") : s->policy ? s->policy->names : "";
	const char *rule = d && d->rule ? d->rule : "";
	/* Only a plain allow is cached: an approval id or a grant belongs to its statement. */
	bool plain = !block && !(d && (d->approval[0] || d->grant));
	if (plain && an && an->allow_json && strcmp(an->allow_policy, policy) == 0 && strcmp(an->allow_rule, rule) == 0)
		return text_ref(an->allow_json);
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	key_string(&w, "action", block ? "block" : "allow");
	key_string(&w, "policy", policy);
	key_string(&w, "rule", rule);
	if (block)
		key_string(&w, "reason", d->message);
	if (d && d->approval[0])
		key_string(&w, "approval", d->approval);
	if (d && d->grant)
		key_string(&w, "grant", d->grant);
	jw_end_object(&w);
	AuditText *json = text_new(w.buf, w.len);
	jw_free(&w);
	if (plain && an) {
		free(an->allow_policy);
		free(an->allow_rule);
		an->allow_policy = xstrdup(policy);
		an->allow_rule = xstrdup(rule);
		text_set(&an->allow_json, text_ref(json));
	}
	return json;
}

/*
 * SQL-level PREPARE and DEALLOCATE change the server's statements behind the names this
 * file knows from Parse messages. For a masking identity every name then counts as
 * unknown (parameters redacted); others keep their texts (the SQL may be stale, nothing
 * leaks through it).
 */
static void sql_prepares(Session *s, const char *sql)
{
	/* No name known yet: nothing to forget (and no text search on every simple Query). */
	if (!s->audit_names->count)
		return;
	if (!strcasestr(sql, "prepare") && !strcasestr(sql, "deallocate") && !strcasestr(sql, "discard"))
		return;
	bool masking = s->policy && s->policy->masks_columns;
	for (int b = 0; b < NAME_BUCKETS; b++)
		for (Named *n = s->audit_names->statements[b]; n; n = n->next) {
			if (masking)
				named_clear(n);
			else
				n->uncertain = true; /* a Parse of the name may now succeed: it replaces the text */
		}
}

/* A record in the making; takes over the references it is given (sql NULL: unknown). */
static AuditStmt *stmt_new(AuditText *sql, AuditText *params, AuditText *decision)
{
	/* Not calloc: glibc's calloc skips the per-thread cache, and this runs per statement. */
	AuditStmt *a = xmalloc(sizeof *a);
	*a = (AuditStmt){.start_us = audit_now_us(), .sql = sql ? sql : text_new("", 0), .nspans = -1,
			 .params = params, .decision = decision};
	return a;
}

AuditStmt *session__audit_stmt(Session *s, const char *sql, const Decision *d)
{
	if (sql)
		sql_prepares(s, sql);
	return stmt_new(sql ? text_of(sql) : NULL, NULL, decision_json(s, d));
}

/*
 * Parameters are masked in the record under the identity's rules, like result rows: a
 * statement that names a masked relation has every parameter redacted (which column a
 * parameter meets, in a condition, a VALUES list or a function call, is not always
 * known), and the detectors scan the others. Without a catalog a masking identity's
 * statements are refused; their parameters are redacted all the same.
 */
bool session__params_redacted(const Session *s, const char *sql)
{
	return s->policy && s->policy->masks_columns && (!s->mask_cat || !sql || mask_names_masked(s->mask_cat, sql));
}

/* Works out whether statement n's parameters are redacted, under the rules in force. */
static void stamp(Session *s, Named *n)
{
	n->masked = session__params_redacted(s, n->sql->s);
	n->stamped = !(s->policy && s->policy->masks_columns && !s->mask_cat); /* else again once it loads */
	n->policy_id = s->policy ? s->policy->id : 0;
	n->mask_gen = s->mask_gen;
}

struct AuditUndo {
	struct AuditNames *names;
	char *name;
	AuditText *set; /* the text this Parse gave the name: undone or confirmed only while it has it */
	Named was;      /* the name's entry before it, with its own references; was.sql NULL: none */
};

AuditUndo *session__audit_parse(Session *s, const char *name, const char *sql)
{
	AuditUndo *u = NULL;
	/* The unnamed statement is dropped before the server parses the new one: no undo. */
	if (name[0]) {
		Named *old = named_find(s->audit_names->statements, name);
		/*
		 * A name in use: the server refuses the Parse (42P05) and keeps its statement.
		 * Known here before the answer, so Binds sent behind it (in the same pipeline)
		 * are recorded with the statement that runs, its parameters masked by it.
		 */
		if (old && old->sql && old->confirmed && !old->uncertain)
			return NULL;
		u = xcalloc(1, sizeof *u);
		u->names = s->audit_names;
		u->name = xstrdup(name);
		if (old && old->sql) {
			u->was = *old;
			u->was.name = NULL; /* the table's, and its place in it: not part of the undo */
			u->was.next = NULL;
			text_ref(old->sql);
			text_ref(old->params);
			text_ref(old->decision);
		}
	}
	Named *n = named_put(s, s->audit_names->statements, name);
	if (n) {
		n->sql = text_of(sql);
		stamp(s, n);
	}
	if (u)
		u->set = n ? text_ref(n->sql) : NULL;
	return u;
}

void audit_undo_commit(AuditUndo *u)
{
	Named *n = u && u->set ? named_find(u->names->statements, u->name) : NULL;
	if (n && n->sql == u->set)
		n->confirmed = true;
}

void audit_undo_apply(AuditUndo *u)
{
	if (!u)
		return;
	Named *n = named_find(u->names->statements, u->name);
	if (!n || !u->set || n->sql != u->set)
		return; /* a later Parse or Close has the name now */
	named_clear(n);
	if (!u->was.sql)
		return; /* a Bind of the name now binds an unknown statement, as the server says */
	/* the entry as it was, references and all; its place in the table stays */
	char *keep_name = n->name;
	Named *keep_next = n->next;
	*n = u->was;
	n->name = keep_name;
	n->next = keep_next;
	u->was.sql = u->was.params = u->was.decision = NULL;
}

void audit_undo_free(AuditUndo *u)
{
	if (!u)
		return;
	text_unref(u->was.sql);
	text_unref(u->was.params);
	text_unref(u->was.decision);
	text_unref(u->set);
	free(u->name);
	free(u);
}

/* Whether a Bind of statement st has its parameters redacted (st NULL: unknown statement). */
static bool bind_redacted(Session *s, Named *st)
{
	if (!st || !st->sql)
		return session__params_redacted(s, NULL);
	/* A reload or DDL may have changed the rules or the catalog since the Parse. */
	if (!st->stamped || (s->policy && (st->policy_id != s->policy->id || st->mask_gen != s->mask_gen)))
		stamp(s, st);
	return st->masked;
}

void session__audit_close(Session *s, const char *name)
{
	Named *n = named_find(s->audit_names->statements, name);
	if (n)
		named_clear(n); /* a Bind of the name now binds an unknown statement */
}

AuditStmt *session__audit_bind(Session *s, const uint8_t *body, size_t len, const Decision *d)
{
	struct AuditNames *an = s->audit_names;
	MsgReader r;
	msgr_init(&r, body, len);
	const char *portal = msgr_str(&r);
	const char *stmt = msgr_str(&r);
	Named *st = stmt ? named_find(an->statements, stmt) : NULL;
	jw_clear(&an->scratch);
	session__bind_params_to(&an->scratch, body, len, bind_redacted(s, st), s->policy ? s->policy->detect : 0,
				s->config->audit_text_max);
	AuditText *params = text_new(an->scratch.buf, an->scratch.len);
	if (an->scratch.cap > SCRATCH_KEEP)
		jw_free(&an->scratch); /* a large Bind's buffer is not kept for the session's life */
	AuditText *sql = st ? text_ref(st->sql) : NULL; /* NULL after a Close: unknown */
	if (d && d->kind == DEC_BLOCK)
		return stmt_new(sql, params, decision_json(s, d));
	Named *p = portal ? named_put(s, an->portals, portal) : NULL;
	if (!p) {
		text_unref(params);
		text_unref(sql);
		return NULL;
	}
	p->sql = sql ? sql : text_new("", 0);
	p->params = params;
	p->decision = decision_json(s, d);
	return NULL;
}

AuditStmt *session__audit_execute(Session *s, const char *portal)
{
	Named *p = named_find(s->audit_names->portals, portal);
	if (!p)
		return stmt_new(NULL, NULL, decision_json(s, NULL));
	return stmt_new(text_ref(p->sql), text_ref(p->params), text_ref(p->decision));
}

/* ---- statements: the server side ---- */

static AuditText *parse_columns(const uint8_t *body, size_t len, uint8_t *formats, int *ncols)
{
	MsgReader r;
	msgr_init(&r, body, len);
	int n = msgr_u16(&r);
	JsonW w;
	jw_init(&w);
	jw_begin_array(&w);
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
		jw_begin_object(&w);
		key_string(&w, "name", name);
		key_int(&w, "type_oid", type);
		jw_end_object(&w);
		if (i < 1600)
			formats[(*ncols)++] = format == 1;
	}
	jw_end_array(&w);
	AuditText *t = text_new(w.buf, w.len);
	jw_free(&w);
	return t;
}

/* parse_columns, remembering the last RowDescription: pgbench and most clients repeat it. */
static AuditText *columns_json(Session *s, const uint8_t *body, size_t len, uint8_t *formats, int *ncols)
{
	struct AuditNames *an = s->audit_names;
	if (an && an->rowdesc_json && len == an->rowdesc_len && memcmp(body, an->rowdesc, len) == 0) {
		memcpy(formats, an->rowdesc_formats, (size_t)an->rowdesc_ncols);
		*ncols = an->rowdesc_ncols;
		return text_ref(an->rowdesc_json);
	}
	AuditText *json = parse_columns(body, len, formats, ncols);
	if (an && len <= ROWDESC_CACHE_MAX) {
		free(an->rowdesc);
		free(an->rowdesc_formats);
		an->rowdesc = xmalloc(len ? len : 1);
		memcpy(an->rowdesc, body, len);
		an->rowdesc_len = len;
		text_set(&an->rowdesc_json, text_ref(json));
		an->rowdesc_formats = xmalloc(*ncols ? (size_t)*ncols : 1);
		memcpy(an->rowdesc_formats, formats, (size_t)*ncols);
		an->rowdesc_ncols = *ncols;
	}
	return json;
}

void session__audit_described(Session *s, const uint8_t *body, size_t len)
{
	text_set(&s->audit_columns, columns_json(s, body, len, s->audit_formats, &s->audit_ncols));
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
	if (a->nrows >= (size_t)s->config->audit_rows || a->bytes + more > (size_t)s->config->audit_bytes) {
		a->truncated = true;
		return true;
	}
	return false;
}

static void capture_row(Session *s, AuditStmt *a, const uint8_t *body, size_t len)
{
	if (capture_full(s, a, len))
		return;
	MsgReader r;
	msgr_init(&r, body, len);
	int n = msgr_u16(&r);
	jw_begin_array(&a->rows);
	for (int i = 0; i < n && !r.failed; i++) {
		uint32_t vlen = msgr_u32(&r);
		if (vlen == 0xffffffffu) {
			jw_null(&a->rows);
			continue;
		}
		const uint8_t *v = msgr_bytes(&r, vlen);
		if (!v)
			break;
		jw_text(&a->rows, v, vlen, i < a->ncols && a->formats[i]);
	}
	jw_end_array(&a->rows);
	a->nrows++;
	a->bytes += len;
}

static void capture_copy(Session *s, AuditStmt *a, const uint8_t *body, size_t len)
{
	if (capture_full(s, a, len))
		return;
	size_t n = len && body[len - 1] == '\n' ? len - 1 : len;
	jw_begin_array(&a->rows);
	jw_text(&a->rows, body, n, false);
	jw_end_array(&a->rows);
	a->nrows++;
	a->bytes += len;
}

/* The number at the end of a command tag ("SELECT 3", "INSERT 0 5"), or -1. */
static int64_t tag_rows(const char *tag)
{
	const char *sp = strrchr(tag, ' ');
	if (!sp || sp[1] < '0' || sp[1] > '9')
		return -1;
	int64_t n = 0;
	for (const char *p = sp + 1; *p >= '0' && *p <= '9'; p++)
		n = n > (INT64_MAX - 9) / 10 ? INT64_MAX : n * 10 + (*p - '0'); /* saturates, as strtoll did */
	return n;
}

/* The fields of an ErrorResponse that say what failed, as a JSON object. */
static void error_json(JsonW *w, const uint8_t *body, size_t len)
{
	jw_begin_object(w);
	MsgReader r;
	msgr_init(&r, body, len);
	uint8_t code;
	const char *v;
	while (msgr_error_field(&r, &code, &v)) {
		const char *key = code == 'S' ? "severity" : code == 'C' ? "sqlstate" : code == 'M' ? "message"
				: code == 'D' ? "detail" : code == 'H' ? "hint" : code == 'W' ? "where" : NULL;
		if (key) {
			jw_key_plain(w, key, strlen(key));
			jw_text(w, (const uint8_t *)v, strlen(v), false);
		}
	}
	jw_end_object(w);
}

/* No backslash, no byte past ASCII. */
static bool plain_ascii(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)p[i] >= 0x80 || p[i] == '\\')
			return false;
	return true;
}

/*
 * The text of statement a->part of a Query with several: the second and later records carry
 * their own statement's text, the first the whole, or a Query of N statements in L bytes
 * would make N * L bytes of records (a 64 MiB message of "SELECT;" some 10^14). Split by
 * libpg_query's parser, as the server splits it. False when it is not split:
 * - a Query with a backslash or a byte past ASCII: the server may read it with
 *   standard_conforming_strings off, or in a client encoding whose characters end in a
 *   backslash or ';' byte (an unrestricted session may set either, and a reload or an
 *   unsynced SET takes effect before the gateway hears of it), and split it elsewhere:
 *   "SELECT 'x\'; SELECT 1; --'; SELECT 2" is two statements to it, the second
 *   "SELECT 2". In plain ASCII without a backslash every setting reads it alike.
 * - a Query larger than SPLIT_MAX: the parse would hold up the worker's other sessions
 *   (63 MB of "SELECT;" took 18 s and 3.5 GB);
 * - one the parser cannot split (a syntax it does not know, from a session not inspected).
 */
static bool part_text(AuditStmt *a, const char **text, size_t *len)
{
	if (a->nspans < 0) {
		a->nspans = 0;
		if (a->sql->len > SPLIT_MAX || !plain_ascii(a->sql->s, a->sql->len))
			return false;
		PgQuerySplitResult r = pg_query_split_with_parser(a->sql->s);
		if (!r.error && r.n_stmts > 0) {
			a->spans = xcalloc((size_t)r.n_stmts, sizeof *a->spans);
			for (int i = 0; i < r.n_stmts; i++) {
				size_t at = (size_t)r.stmts[i]->stmt_location, n = (size_t)r.stmts[i]->stmt_len;
				if (at > a->sql->len)
					break;
				if (n == 0 || n > a->sql->len - at)
					n = a->sql->len - at; /* 0: to the end */
				while (n && isspace((unsigned char)a->sql->s[at])) {
					at++; /* a statement begins after the ';' before it */
					n--;
				}
				a->spans[a->nspans].at = (uint32_t)at;
				a->spans[a->nspans++].len = (uint32_t)n;
			}
		}
		pg_query_free_split_result(r);
	}
	if (a->part >= a->nspans)
		return false;
	*text = a->sql->s + a->spans[a->part].at;
	*len = a->spans[a->part].len;
	return true;
}

/* Submits the record of a (part of a) statement; resets it for the next part. */
static uint64_t submit(Session *s, AuditStmt *a, const char *tag, const uint8_t *error, size_t error_len,
		       const char *error_message)
{
	int64_t now = audit_now_us();
	if (a->part == 0)
		a->n = ++s->audit_n; /* numbered when recorded: statements the server skipped get none */
	/*
	 * Written in the session's scratch, warm in this thread's cache, then copied into the
	 * queue whole: the queue's memory was last read by the writer on another core, and
	 * writing JSON into it byte by byte waited on each of its cache lines in turn.
	 */
	struct AuditNames *an = s->audit_names;
	JsonW local, *w = an ? &an->scratch : &local;
	if (an)
		jw_clear(w);
	else
		jw_init(w);
	jw_begin_object(w);
	key_string_plain(w, "session_id", s->audit_id);
	key_int_plain(w, "n", (int64_t)a->n);
	if (a->part)
		key_int_plain(w, "part", a->part + 1);
	const char *sql = a->sql->s;
	size_t sql_len = a->sql->len, cap = s->config->audit_text_max;
	if (a->part == 0 || part_text(a, &sql, &sql_len)) {
		/* A text past audit.max_text_size: its head, length and hash (records stay bounded). */
		JW_KEY(w, "sql");
		jw_text_cut(w, (const uint8_t *)sql, sql_len, false, cap, a->part == 0 ? text_digest(a->sql, cap) : NULL);
	} /* else its text is in the first record's (part_text) */
	JW_KEY(w, "decision");
	jw_raw(w, a->decision->s, a->decision->len);
	if (a->params) {
		JW_KEY(w, "params");
		jw_raw(w, a->params->s, a->params->len);
	}
	JW_KEY(w, "duration_ms");
	jw_fixed3(w, now - a->start_us);
	/* After a cut-off the server's answers are dropped: what ran then, the client never saw. */
	bool withheld = s->discarding && s->cut_ended;
	key_int_plain(w, "rows_sent", withheld ? 0 : a->rows_sent);
	if (withheld) {
		JW_KEY(w, "withheld");
		jw_bool(w, true);
	}
	if (tag) {
		JW_KEY(w, "tag");
		jw_text(w, (const uint8_t *)tag, strlen(tag), false);
		int64_t n = tag_rows(tag);
		key_int_plain(w, "rows", n >= 0 ? n : a->rows_sent);
	}
	if (a->unanswered) {
		JW_KEY(w, "unanswered");
		jw_bool(w, true);
	}
	if (error) {
		JW_KEY(w, "error");
		error_json(w, error, error_len);
	} else if (error_message) {
		JW_KEY(w, "error");
		jw_begin_object(w);
		if (!a->unanswered)
			key_string_plain(w, "sqlstate", "42501");
		key_string_plain(w, "message", error_message);
		jw_end_object(w);
	}
	if ((a->columns || a->nrows) && !withheld) {
		JW_KEY(w, "result");
		jw_begin_object(w);
		if (a->columns) {
			JW_KEY(w, "columns");
			jw_raw(w, a->columns->s, a->columns->len);
		}
		JW_KEY(w, "rows");
		jw_begin_array(w);
		if (a->rows.len)
			jw_raw(w, a->rows.buf, a->rows.len);
		jw_end_array(w);
		JW_KEY(w, "truncated");
		jw_bool(w, a->truncated);
		jw_end_object(w);
	}
	jw_end_object(w);
	uint64_t ticket = audit_submit_at(s->worker->index, now, "statement", s->audit_id, s->user_name,
					  s->database_name, w->buf, w->len);
	if (!an || w->cap > SCRATCH_KEEP)
		jw_free(w); /* a large record's buffer is not kept for the session's life */
	/* The next statement of the same Query starts here. */
	a->part++;
	a->start_us = now;
	text_set(&a->columns, NULL);
	jw_clear(&a->rows); /* its buffer stays for the next part */
	a->nrows = 0;
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
		if (whole) {
			uint8_t formats[1600];
			int n = 0;
			text_set(&a->columns, columns_json(s, body, len, formats, &n));
			set_formats(a, formats, n);
		} else {
			text_set(&a->columns, text_of("[]"));
		}
		return AUDIT_PASS;
	case 'H':
		a->copy_out = true;
		text_set(&a->columns, text_of("[{\"name\":\"COPY\"}]"));
		return AUDIT_PASS;
	case 'D':
	case 'd':
		if (type == 'd' && !a->copy_out)
			return AUDIT_PASS; /* COPY FROM data goes the other way */
		a->rows_sent++;
		if (!a->columns && s->audit_columns) {
			a->columns = text_ref(s->audit_columns);
			a->ncols = s->audit_ncols;
			set_formats(a, s->audit_formats, s->audit_ncols);
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
		if (whole && len) {
			size_t n = strnlen((const char *)body, len < sizeof tag ? len : sizeof tag - 1);
			memcpy(tag, body, n);
			tag[n] = 0;
		}
		t = submit(s, a, tag, NULL, 0, NULL);
		break;
	}
	case 'I':
		t = submit(s, a, "EMPTY", NULL, 0, NULL);
		break;
	case 'V':
		t = submit(s, a, "FUNCTION CALL", NULL, 0, NULL);
		break;
	case 's':
		t = submit(s, a, "SUSPENDED", NULL, 0, NULL);
		break;
	case 'E':
		t = whole ? submit(s, a, NULL, body, len, NULL) : submit(s, a, NULL, NULL, 0, "(error too large to record)");
		break;
	default:
		return AUDIT_PASS;
	}
	*ticket = t;
	return audit_is_strict() && t && !a->no_wait ? AUDIT_HOLD : AUDIT_PASS;
}

void session__audit_cut_off(Session *s, const char *tag, AuditStmt **next_part)
{
	if (!s->cut_audit)
		return;
	submit(s, s->cut_audit, tag, NULL, 0, s->cut_message);
	if (next_part && !*next_part)
		*next_part = s->cut_audit; /* the Query's later statements are recorded on it */
	else
		audit_stmt_free(s->cut_audit);
	s->cut_audit = NULL;
	free(s->cut_message);
	s->cut_message = NULL;
}
