/* Reading the audit trail back: sessions, statements, replay transcripts, verification. */
#include "audit/report.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/util.h"

bool audit_parse_since(const char *arg, char out[AUDIT_TIME_LEN])
{
	int64_t period;
	if (config_parse_period_s(arg, &period) && !(strlen(arg) >= 4 && isdigit((unsigned char)arg[3]))) {
		audit_format_time(audit_now_us() - period * 1000000, out);
		return true;
	}
	/* YYYY-MM-DD[THH:MM[:SS[.ffffff]]][Z]: compared as text with the stored times. */
	size_t n = strlen(arg);
	if (n < 10 || n >= AUDIT_TIME_LEN || !isdigit((unsigned char)arg[0]) || arg[4] != '-' || arg[7] != '-')
		return false;
	for (size_t i = 0; i < n; i++)
		if (!isdigit((unsigned char)arg[i]) && !strchr("-T:.Z ", arg[i]))
			return false;
	snprintf(out, AUDIT_TIME_LEN, "%s", arg);
	if (n > 10 && out[10] == ' ')
		out[10] = 'T';
	if (out[n - 1] == 'Z')
		out[n - 1] = 0;
	return true;
}

/* A stored string as JSON: text, or {"hex": ...} when it is not UTF-8 (a client chose it). */
static json_t *text_value(const char *s)
{
	json_t *v = json_string(s);
	if (v)
		return v;
	size_t n = strlen(s);
	char *hex = xmalloc(2 * n + 1);
	util_hex_encode((const uint8_t *)s, n, hex);
	v = json_pack("{ss}", "hex", hex);
	free(hex);
	return v;
}

json_t *audit_record_json(const StoredRecord *r)
{
	json_t *body = json_loads(r->body, 0, NULL);
	json_t *j = json_object();
	json_object_set_new(j, "node", text_value(r->node));
	json_object_set_new(j, "seq", json_integer((json_int_t)r->seq));
	json_object_set_new(j, "time", text_value(r->time));
	json_object_set_new(j, "kind", text_value(r->kind));
	json_object_set_new(j, "session_id", text_value(r->session_id));
	json_object_set_new(j, "user", text_value(r->user_name));
	json_object_set_new(j, "database", text_value(r->database));
	json_object_set_new(j, "record", body ? body : text_value(r->body));
	json_object_set_new(j, "prev_tag", text_value(r->prev_tag));
	json_object_set_new(j, "tag", text_value(r->tag));
	return j;
}

/* ---- sessions ---- */

typedef struct {
	json_t *list;
} Collect;

static bool collect(const StoredRecord *r, void *arg)
{
	Collect *c = arg;
	json_t *body = json_loads(r->body, 0, NULL);
	if (!body)
		return true;
	json_object_set_new(body, "kind", json_string(r->kind));
	json_object_set_new(body, "time", json_string(r->time));
	json_object_set_new(body, "node", json_string(r->node));
	json_object_set_new(body, "seq", json_integer(r->seq));
	json_array_append_new(c->list, body);
	return true;
}

/* The session's start record with its end folded in. */
static json_t *session_summary(AuditStore *st, json_t *start, char *err, size_t errlen)
{
	const char *id = json_string_value(json_object_get(start, "session_id"));
	Collect c = {json_array()};
	StoreFilter f = {.session_id = id, .kind = "session_end"};
	if (!id || !store_scan(st, &f, collect, &c, err, errlen)) {
		json_decref(c.list);
		return NULL;
	}
	json_t *s = json_deep_copy(start);
	json_object_set(s, "start", json_object_get(start, "time"));
	json_object_del(s, "time");
	json_object_del(s, "kind");
	json_t *end = json_array_get(c.list, 0);
	json_object_set_new(s, "end", end ? json_incref(json_object_get(end, "time")) : json_null());
	json_object_set_new(s, "end_reason", end ? json_incref(json_object_get(end, "reason")) : json_null());
	if (end) {
		json_object_set(s, "statements", json_object_get(end, "statements"));
		json_object_set(s, "bytes_from_client", json_object_get(end, "bytes_from_client"));
		json_object_set(s, "bytes_from_server", json_object_get(end, "bytes_from_server"));
		json_object_set(s, "duration_ms", json_object_get(end, "duration_ms"));
	}
	json_decref(c.list);
	return s;
}

json_t *audit_list_sessions(AuditStore *st, const SessionQuery *q, char *err, size_t errlen)
{
	Collect c = {json_array()};
	StoreFilter f = {.kind = "session_start", .user_name = q->user, .database = q->database, .since = q->since,
			 .limit = q->limit > 0 ? q->limit : 100, .newest_first = true};
	if (!store_scan(st, &f, collect, &c, err, errlen)) {
		json_decref(c.list);
		return NULL;
	}
	json_t *out = json_array();
	size_t i;
	json_t *start;
	json_array_foreach(c.list, i, start) {
		json_t *s = session_summary(st, start, err, errlen);
		if (!s) {
			json_decref(out);
			out = NULL;
			break;
		}
		json_array_append_new(out, s);
	}
	json_decref(c.list);
	return out;
}

json_t *audit_session_detail(AuditStore *st, const char *session_id, char *err, size_t errlen)
{
	Collect c = {json_array()};
	StoreFilter f = {.session_id = session_id};
	if (!store_scan(st, &f, collect, &c, err, errlen)) {
		json_decref(c.list);
		return NULL;
	}
	json_t *session = NULL, *statements = json_array();
	size_t i;
	json_t *r;
	json_array_foreach(c.list, i, r) {
		const char *kind = json_string_value(json_object_get(r, "kind"));
		if (strcmp(kind, "session_start") == 0 && !session)
			session = session_summary(st, r, err, errlen);
		else if (strcmp(kind, "statement") == 0)
			json_array_append(statements, r);
	}
	json_decref(c.list);
	if (!session) {
		json_decref(statements);
		return json_null();
	}
	return json_pack("{so so}", "session", session, "statements", statements);
}

/* ---- replay ---- */

typedef struct {
	char *data;
	size_t len, cap;
} Text;

static void add(Text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add(Text *t, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		size_t room = t->cap - t->len;
		va_start(ap, fmt);
		int n = vsnprintf(t->data ? t->data + t->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		t->cap = (t->cap + (size_t)n + 1) * 2;
		t->data = realloc(t->data, t->cap);
		if (!t->data)
			abort();
	}
}

/*
 * Text from the trail as the transcript shows it: control characters written as escapes
 * (\n, \x1b), so that neither a value nor a name can draw a line of its own (a forged
 * statement header) or drive the reader's terminal, and the invisible characters of
 * util_utf8_invisible as \u202e (\U000e0041 past U+FFFF). Newlines stay in SQL text only
 * (lines): a statement's own lines. Returns a new string.
 */
static char *shown(const char *s, bool lines)
{
	size_t n = strlen(s);
	char *out = xmalloc(4 * n + 1), *o = out; /* \x1b: 4 bytes for 1; \u0085: 6 for 2; \U000e0041: 10 for 4 */
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		size_t len;
		uint32_t cp = util_utf8_invisible(p, &len);
		if (cp) {
			o += sprintf(o, cp > 0xffff ? "\\U%08x" : "\\u%04x", (unsigned)cp);
			p += len - 1;
		} else if (*p >= 0x20 && *p != 0x7f) {
			*o++ = (char)*p;
		} else if (lines && (*p == '\n' || *p == '\t')) {
			*o++ = (char)*p;
		} else if (*p == '\n' || *p == '\r' || *p == '\t') {
			*o++ = '\\';
			*o++ = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
		} else {
			o += sprintf(o, "\\x%02x", *p);
		}
	}
	*o = 0;
	return out;
}

/* Appends shown(s, lines). */
static void add_shown(Text *t, const char *s, bool lines)
{
	char *v = shown(s, lines);
	add(t, "%s", v);
	free(v);
}

/* What a text cut at audit.max_text_size was: its length and SHA-256 (the head is shown). */
static void add_cut_note(Text *t, json_t *cut, bool lines)
{
	const char *sha = json_string_value(json_object_get(cut, "sha256"));
	add(t, "%s[cut: %lld bytes in all, sha256 ", lines ? "\n  " : " ",
	    (long long)json_integer_value(json_object_get(cut, "bytes")));
	add_shown(t, sha ? sha : "?", false);
	add(t, "]");
}

/*
 * A stored string field, shown: text, or {"hex": ...} (bytes a client sent that are not
 * UTF-8) with every byte outside printable ASCII as an escape. With lines (a statement's SQL)
 * every line is indented, so that no line of it reads as a header or an error of the
 * transcript's own.
 */
static void add_field(Text *t, json_t *v, bool lines)
{
	if (json_object_get(v, "head")) { /* cut at audit.max_text_size */
		add_field(t, json_object_get(v, "head"), lines);
		add_cut_note(t, v, lines);
		return;
	}
	const char *hex = json_string_value(json_object_get(v, "hex"));
	char *text;
	if (hex) {
		size_t n = strlen(hex) / 2;
		text = xmalloc(4 * n + 1);
		char *o = text;
		for (size_t i = 0; i < n; i++) {
			int hi = util_hex_value((unsigned char)hex[2 * i]);
			int lo = util_hex_value((unsigned char)hex[2 * i + 1]);
			if (hi < 0 || lo < 0)
				break; /* not what the gateway writes: the store was altered */
			unsigned b = (unsigned)(hi << 4 | lo);
			if ((b >= 0x20 && b < 0x7f) || (lines && (b == '\n' || b == '\t')))
				*o++ = (char)b;
			else
				o += sprintf(o, "\\x%02x", b);
		}
		*o = 0;
	} else {
		text = shown(json_string_value(v) ? json_string_value(v) : "", lines);
	}
	if (!lines) {
		add(t, "%s", text);
	} else {
		for (char *line = text, *nl; line; line = nl ? nl + 1 : NULL) {
			nl = strchr(line, '\n');
			add(t, "  %.*s%s", (int)(nl ? nl - line : (ptrdiff_t)strlen(line)), line, nl ? "\n" : "");
		}
	}
	free(text);
}

/* A captured value as psql shows it: text as is, NULL empty, bytes as \x... */
static const char *cell(json_t *v, char *buf, size_t len)
{
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_object(v) && json_is_string(json_object_get(v, "hex"))) {
		snprintf(buf, len, "\\x%s", json_string_value(json_object_get(v, "hex")));
		return buf;
	}
	return "";
}

/* Display width of UTF-8 text: one column per code point. */
static size_t width(const char *s)
{
	size_t w = 0;
	for (; *s; s++)
		w += ((unsigned char)*s & 0xc0) != 0x80;
	return w;
}

static void pad(Text *t, const char *s, size_t w)
{
	add(t, "%s", s);
	for (size_t i = width(s); i < w; i++)
		add(t, " ");
}

static void add_table(Text *t, json_t *result)
{
	json_t *cols = json_object_get(result, "columns"), *rows = json_object_get(result, "rows");
	size_t nc = json_array_size(cols), nr = json_array_size(rows);
	if (nc == 0)
		return;
	size_t *w = xcalloc(nc, sizeof *w);
	char buf[512];
	/* every cell and name as shown, escapes and all, once */
	char **shows = xcalloc((nr + 1) * nc, sizeof *shows);
	for (size_t c = 0; c < nc; c++) {
		const char *name = json_string_value(json_object_get(json_array_get(cols, c), "name"));
		shows[c] = shown(name ? name : "", false);
		w[c] = width(shows[c]);
		for (size_t r = 0; r < nr; r++) {
			char *v = shows[(r + 1) * nc + c] = shown(cell(json_array_get(json_array_get(rows, r), c), buf, sizeof buf),
								   false);
			size_t cw = width(v);
			w[c] = cw > w[c] ? cw : w[c];
		}
	}
	for (size_t c = 0; c < nc; c++) {
		add(t, "%s", c ? " | " : " ");
		pad(t, shows[c], w[c]);
	}
	add(t, "\n");
	for (size_t c = 0; c < nc; c++) {
		add(t, "%s", c ? "-+-" : "-");
		for (size_t i = 0; i < w[c]; i++)
			add(t, "-");
	}
	add(t, "-\n");
	for (size_t r = 0; r < nr; r++) {
		for (size_t c = 0; c < nc; c++) {
			add(t, "%s", c ? " | " : " ");
			pad(t, shows[(r + 1) * nc + c], w[c]);
		}
		add(t, "\n");
	}
	add(t, "(%zu row%s%s)\n", nr, nr == 1 ? "" : "s",
	    json_is_true(json_object_get(result, "truncated")) ? "; more were sent, not recorded" : "");
	for (size_t k = 0; k < (nr + 1) * nc; k++)
		free(shows[k]);
	free(shows);
	free(w);
}

static const char *str(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s ? s : "";
}

char *audit_replay_text(AuditStore *st, const char *session_id, char *err, size_t errlen)
{
	json_t *d = audit_session_detail(st, session_id, err, errlen);
	if (!d)
		return NULL;
	if (json_is_null(d)) {
		snprintf(err, errlen, "no session %s in the audit trail", session_id);
		return NULL;
	}
	Text t = {0};
	json_t *s = json_object_get(d, "session");
	add(&t, "Session %s: user ", session_id);
	add_field(&t, json_object_get(s, "user"), false);
	add(&t, " (%s", str(s, "auth_method"));
	size_t i;
	json_t *v;
	json_array_foreach(json_object_get(s, "groups"), i, v)
	{
		add(&t, "%s", i ? ", " : "; groups ");
		add_shown(&t, json_is_string(v) ? json_string_value(v) : "", false);
	}
	add(&t, "), database ");
	add_field(&t, json_object_get(s, "database"), false);
	add(&t, ", from %s", str(s, "client_address"));
	json_t *app = json_object_get(s, "application_name");
	if (json_is_object(app) || *str(s, "application_name")) {
		add(&t, ", application \"");
		add_field(&t, app, false);
		add(&t, "\"");
	}
	if (*str(s, "role"))
		add(&t, ", role %s", str(s, "role"));
	add(&t, "\nStarted %s; ", str(s, "start"));
	if (json_is_string(json_object_get(s, "end"))) {
		add(&t, "ended %s (", str(s, "end"));
		add_shown(&t, str(s, "end_reason"), false);
		add(&t, "), %lld bytes from the client, %lld to it\n",
		    (long long)json_integer_value(json_object_get(s, "bytes_from_client")),
		    (long long)json_integer_value(json_object_get(s, "bytes_from_server")));
	} else {
		add(&t, "no end recorded (still open, or the gateway stopped abruptly)\n");
	}
	size_t k;
	json_t *stmt;
	json_array_foreach(json_object_get(d, "statements"), k, stmt)
	{
		json_t *dec = json_object_get(stmt, "decision");
		add(&t, "\n[%s] #%lld", str(stmt, "time"), (long long)json_integer_value(json_object_get(stmt, "n")));
		if (json_object_get(stmt, "part"))
			add(&t, " part %lld", (long long)json_integer_value(json_object_get(stmt, "part")));
		add(&t, "  %s", str(dec, "action"));
		if (*str(dec, "policy"))
			add(&t, " (policy %s%s%s)", str(dec, "policy"), *str(dec, "rule") ? ", rule " : "", str(dec, "rule"));
		add(&t, "  %.3f ms\n", json_number_value(json_object_get(stmt, "duration_ms")));
		if (json_object_get(stmt, "sql"))
			add_field(&t, json_object_get(stmt, "sql"), true);
		else
			add(&t, "  (its text is in the Query above)");
		add(&t, "\n");
		json_t *params = json_object_get(stmt, "params");
		if (json_array_size(params)) {
			char buf[512];
			add(&t, "parameters:");
			json_array_foreach(params, i, v)
			{
				add(&t, " $%zu=", i + 1);
				json_t *head = json_object_get(v, "head"); /* cut at audit.max_text_size */
				add_shown(&t, json_is_null(v) ? "NULL" : cell(head ? head : v, buf, sizeof buf), false);
				if (head)
					add_cut_note(&t, v, false);
			}
			add(&t, "\n");
		}
		if (json_object_get(stmt, "result"))
			add_table(&t, json_object_get(stmt, "result"));
		json_t *e = json_object_get(stmt, "error");
		if (e) {
			add(&t, "ERROR:  ");
			add_shown(&t, str(e, "message"), false);
			if (*str(e, "sqlstate"))
				add(&t, " (SQLSTATE %s)", str(e, "sqlstate"));
			add(&t, "\n");
			if (*str(e, "detail")) {
				add(&t, "DETAIL:  ");
				add_shown(&t, str(e, "detail"), false);
				add(&t, "\n");
			}
		} else if (*str(stmt, "tag")) {
			add_shown(&t, str(stmt, "tag"), false);
			add(&t, "\n");
		}
	}
	json_decref(d);
	if (!t.data)
		add(&t, "%s", "");
	return t.data;
}

/* ---- verification ---- */

typedef struct {
	const KeyRungs *keys;
	uint8_t key[AUDIT_KEY_LEN];
	VerifyResult *out;
	int64_t expect;
	char prev[AUDIT_TAG_HEX];
	char first_prev[AUDIT_TAG_HEX];
	int64_t prune_through;
	char prune_tag[AUDIT_TAG_HEX];
	const HeadFile *head;
	bool head_differs;     /* the record at the head file's seq has another tag */
	char rewound[300];     /* what the first store_rewound record says was lost */
	bool bad;
} Verify;

static bool verify_one(const StoredRecord *r, void *arg)
{
	Verify *v = arg;
	VerifyResult *o = v->out;
	if (o->records == 0) {
		o->first_seq = r->seq;
		v->expect = r->seq;
		rungs_key_at(v->keys, r->seq < 1 || r->seq >= AUDIT_SEQ_MAX ? 1 : r->seq, v->key);
		snprintf(v->prev, sizeof v->prev, "%s", r->seq == 1 ? "" : r->prev_tag);
		snprintf(v->first_prev, sizeof v->first_prev, "%s", r->prev_tag);
		if (r->seq < 1 || r->seq >= AUDIT_SEQ_MAX) {
			snprintf(o->problem, sizeof o->problem, "record seq=%lld: %s", (long long)r->seq,
				 r->seq < 1 ? "inserted (sequence numbers start at 1)" : "altered (no chain is this long)");
			v->bad = true;
			return false;
		}
		if (r->seq > 1 && !r->prev_tag[0]) {
			/* The store does not know what it follows: the records before it were taken out. */
			snprintf(o->problem, sizeof o->problem,
				 "record seq=%lld: deleted (records before seq=%lld are missing)", (long long)r->seq - 1,
				 (long long)r->seq);
			v->bad = true;
			return false;
		}
	}
	if (r->seq != v->expect) {
		snprintf(o->problem, sizeof o->problem, "record seq=%lld: deleted (missing between seq=%lld and seq=%lld)",
			 (long long)v->expect, (long long)v->expect - 1, (long long)r->seq);
		v->bad = true;
		return false;
	}
	char tag[AUDIT_TAG_HEX];
	chain_tag(v->key, r, tag);
	if (strcmp(r->prev_tag, v->prev) != 0 && strcmp(tag, r->tag) == 0) {
		/* Signed with the right key but linked to another predecessor: moved here. */
		snprintf(o->problem, sizeof o->problem, "record seq=%lld: inserted or reordered (it does not follow seq=%lld)",
			 (long long)r->seq, (long long)r->seq - 1);
		v->bad = true;
		return false;
	}
	if (strcmp(tag, r->tag) != 0 || strcmp(r->prev_tag, v->prev) != 0) {
		snprintf(o->problem, sizeof o->problem, "record seq=%lld (%s, %s): altered or inserted: its tag does not verify",
			 (long long)r->seq, r->kind, r->time);
		v->bad = true;
		return false;
	}
	if (strcmp(r->kind, "events_dropped") == 0) {
		json_t *b = json_loads(r->body, 0, NULL);
		long long n = (long long)json_integer_value(json_object_get(b, "count"));
		/* Refusals counted while the store failed say how many of each kind; drops do not. */
		if (json_object_get(b, "refused_statements"))
			o->counted += n;
		else
			o->dropped += n;
		json_decref(b);
	}
	if (v->head && r->seq == v->head->seq && strcmp(r->tag, v->head->tag) != 0)
		v->head_differs = true;
	if (strcmp(r->kind, "store_rewound") == 0 && !v->rewound[0]) {
		json_t *b = json_loads(r->body, 0, NULL);
		long long from = (long long)json_integer_value(json_object_get(b, "store_seq")),
			  to = (long long)json_integer_value(json_object_get(b, "written_seq"));
		snprintf(v->rewound, sizeof v->rewound,
			 "records seq=%lld..%lld: lost (record seq=%lld, %s: when the gateway started, its store ended at"
			 " seq=%lld, before the last record it had committed; rolled back, restored from an older copy or"
			 " wiped, or a power failure under durability: default)",
			 from + 1, to, (long long)r->seq, r->time, from);
		json_decref(b);
	}
	if (strcmp(r->kind, "prune") == 0) {
		json_t *b = json_loads(r->body, 0, NULL);
		v->prune_through = (int64_t)json_integer_value(json_object_get(b, "through_seq"));
		snprintf(v->prune_tag, sizeof v->prune_tag, "%s", json_string_value(json_object_get(b, "through_tag")) ?: "");
		json_decref(b);
	}
	o->records++;
	o->last_seq = r->seq;
	snprintf(o->head_tag, sizeof o->head_tag, "%s", r->tag);
	snprintf(v->prev, sizeof v->prev, "%s", r->tag);
	chain_next_key(v->key);
	v->expect++;
	return true;
}

int audit_verify(AuditStore *st, const KeyRungs *keys, const char *node, const HeadFile *head,
		 VerifyResult *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	Verify v = {.keys = keys, .out = out, .head = head};
	StoreFilter f = {.node = node};
	bool ok = store_scan(st, &f, verify_one, &v, err, errlen);
	chain_release_thread();
	if (!ok)
		return -1;
	if (v.bad)
		return 0;
	/* Records missing at the start are fine only when a (verified) prune record says so. */
	if (out->records && out->first_seq > 1 &&
	    (v.prune_through != out->first_seq - 1 || strcmp(v.prune_tag, v.first_prev) != 0)) {
		snprintf(out->problem, sizeof out->problem,
			 "record seq=%lld: deleted (records before seq=%lld are missing and no prune record accounts for them)",
			 (long long)out->first_seq - 1, (long long)out->first_seq);
		return 0;
	}
	/* The end of the chain, against the last record the gateway says it committed. */
	if (head && head->seq > out->last_seq) {
		snprintf(out->problem, sizeof out->problem,
			 "records seq=%lld..%lld: deleted (the store ends at seq=%lld; the gateway's head file says it"
			 " committed through seq=%lld: rolled back, restored from an older copy or wiped)",
			 (long long)out->last_seq + 1, (long long)head->seq, (long long)out->last_seq, (long long)head->seq);
		return 0;
	}
	if (v.head_differs) {
		snprintf(out->problem, sizeof out->problem,
			 "record seq=%lld: not the record the gateway committed (its head file names tag %.16s...): the"
			 " store was replaced",
			 (long long)head->seq, head->tag);
		return 0;
	}
	int index = node ? store_check_index(st, node, out->problem, sizeof out->problem, err, errlen) : 1;
	if (index == 1 && v.rewound[0]) { /* after the index: a standing loss must not hide an edit */
		snprintf(out->problem, sizeof out->problem, "%s", v.rewound);
		return 0;
	}
	return index;
}

static bool collect_node(const StoredRecord *r, void *arg)
{
	json_t *nodes = arg;
	size_t n = json_array_size(nodes);
	if (n == 0 || strcmp(json_string_value(json_array_get(nodes, n - 1)), r->node) != 0)
		json_array_append_new(nodes, json_string(r->node));
	return true;
}

json_t *audit_nodes(AuditStore *st, char *err, size_t errlen)
{
	json_t *nodes = json_array();
	if (!store_nodes(st, collect_node, nodes, err, errlen)) {
		json_decref(nodes);
		return NULL;
	}
	return nodes;
}
