/* The audit store in SQLite: a WAL-mode file outside the database, readable while written. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zstd.h>

#include "audit/store.h"
#include "core/jsonw.h"
#include "core/util.h"

/*
 * Layout: one row per commit batch. A SQLite store serves one gateway (one node), whose
 * writer commits every audit.flush_interval (100 ms by default); a row per record cost a
 * B-tree insert per record in the table and in each index, which was most of the writer's
 * CPU. Now a batch is one row whose `records` holds its records, one JSON object a line,
 * in seq order:
 *
 *   [
 *   {"seq":N,"time":"...","kind":"...","session_id":"...","user":"...","database":"...","tag":"...","record":BODY},
 *   ...
 *   ]
 *
 * compressed as one zstd frame (level -1, the fastest that still packs well: about 6 times
 * smaller for pgbench's records, at 2 GB/s; cheaper than writing them out uncompressed
 * twice, to the WAL and then to the file).
 * A `records` value that is not a zstd frame is read as the text itself.
 *
 * BODY is the record's JSON text exactly as hashed. Keys come in that order. prev_tag is
 * not repeated per record: the batch row keeps the tag before its first record, and each
 * later record follows the one before it. The chain (tags) is the same whatever the layout.
 *
 * Two small tables let the readers find things without reading every batch:
 * audit_sessions has a row per (session, batch it has records in), and
 * audit_session_starts a row per session_start record (the session list). Neither is
 * covered by the chain, nor are a batch's columns other than its records and prev_tag;
 * audit verify checks them all against the records (lite_check_index).
 *
 * Files written by earlier versions (a table audit_records with one row per record) are
 * read as they are, and converted by the gateway when it starts writing (store_upgrade).
 */
#define ZSTD_LEVEL (-1)

static const char *const SCHEMA =
	"CREATE TABLE IF NOT EXISTS audit_batches ("
	" first_seq INTEGER PRIMARY KEY, last_seq INTEGER NOT NULL, node TEXT NOT NULL,"
	" min_time TEXT NOT NULL, max_time TEXT NOT NULL, prev_tag TEXT NOT NULL, last_tag TEXT NOT NULL,"
	" records TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS audit_batches_max_time ON audit_batches (max_time);"
	"CREATE TABLE IF NOT EXISTS audit_sessions ("
	" session_id TEXT NOT NULL, batch INTEGER NOT NULL, PRIMARY KEY (session_id, batch)) WITHOUT ROWID;"
	"CREATE TABLE IF NOT EXISTS audit_session_starts ("
	" seq INTEGER PRIMARY KEY, batch INTEGER NOT NULL, time TEXT NOT NULL, session_id TEXT NOT NULL,"
	" user_name TEXT NOT NULL, database TEXT NOT NULL);"
	"CREATE INDEX IF NOT EXISTS audit_session_starts_time ON audit_session_starts (time);";

#define BATCH_SQL "first_seq, node, prev_tag, records"

/* The session ids of one batch (open addressing; the strings are not copied). */
typedef struct {
	const char **slot;
	size_t cap;
} IdSet;

typedef struct {
	sqlite3 *db;
	sqlite3_stmt *insert_batch, *insert_session, *insert_start;
	JsonW text;              /* the batch being written */
	ZSTD_CCtx *zc;
	void *packed;            /* its zstd frame */
	size_t packed_cap;
	IdSet seen;              /* session ids of the batch being written */
} Lite;

static bool fail(sqlite3 *db, const char *what, char *err, size_t errlen)
{
	snprintf(err, errlen, "audit store: %s: %s", what, db ? sqlite3_errmsg(db) : "out of memory");
	return false;
}

static void lite_close(AuditStore *st)
{
	Lite *l = st->db;
	sqlite3_finalize(l->insert_batch);
	sqlite3_finalize(l->insert_session);
	sqlite3_finalize(l->insert_start);
	sqlite3_close(l->db);
	jw_free(&l->text);
	ZSTD_freeCCtx(l->zc);
	free(l->packed);
	free(l->seen.slot);
	free(l);
	free(st);
}

static bool lite_exec(AuditStore *st, const char *sql, char *err, size_t errlen)
{
	Lite *l = st->db;
	if (sqlite3_exec(l->db, sql, NULL, NULL, NULL) != SQLITE_OK)
		return fail(l->db, sql, err, errlen);
	return true;
}

static bool prepare(Lite *l, const char *sql, sqlite3_stmt **q, char *err, size_t errlen)
{
	if (*q)
		return true;
	if (sqlite3_prepare_v2(l->db, sql, -1, q, NULL) != SQLITE_OK)
		return fail(l->db, "prepare", err, errlen);
	return true;
}

/* ---- writing a batch ---- */

static void append_raw(JsonW *w, const char *s, size_t n)
{
	if (w->len + n + 1 > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		while (w->len + n + 1 > cap)
			cap *= 2;
		w->buf = xrealloc(w->buf, cap);
		w->cap = cap;
	}
	memcpy(w->buf + w->len, s, n);
	w->len += n;
	w->buf[w->len] = 0;
}

#define LIT(w, s) append_raw(w, s, sizeof s - 1)

/*
 * A string field. jw_text copies plain ASCII (times, kinds, ids, tags) as it is, escapes
 * other text, and writes text that is not UTF-8 as {"hex": ...}; the reader decodes both.
 */
static void append_string(JsonW *w, const char *s)
{
	w->comma = false;
	jw_text(w, (const uint8_t *)s, strlen(s), false);
}

static void append_record(JsonW *w, const StoredRecord *r)
{
	char seq[24], *end = seq + sizeof seq, *p = util_decimal(r->seq, end);
	LIT(w, "{\"seq\":");
	append_raw(w, p, (size_t)(end - p));
	LIT(w, ",\"time\":");
	append_string(w, r->time);
	LIT(w, ",\"kind\":");
	append_string(w, r->kind);
	LIT(w, ",\"session_id\":");
	append_string(w, r->session_id);
	LIT(w, ",\"user\":");
	append_string(w, r->user_name);
	LIT(w, ",\"database\":");
	append_string(w, r->database);
	LIT(w, ",\"tag\":");
	append_string(w, r->tag);
	LIT(w, ",\"record\":");
	append_raw(w, r->body, r->body_len ? r->body_len : strlen(r->body));
	LIT(w, "}");
}

static unsigned str_hash(const char *s)
{
	unsigned h = 2166136261u;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 16777619u;
	return h;
}

/* Empties set, with room for n ids. */
static void idset_reset(IdSet *set, size_t n)
{
	size_t cap = 64;
	while (cap < 2 * n)
		cap *= 2;
	if (cap > set->cap) {
		free(set->slot);
		set->slot = xcalloc(cap, sizeof *set->slot);
		set->cap = cap;
	} else {
		memset(set->slot, 0, set->cap * sizeof *set->slot);
	}
}

/* True the first time id is offered since the last reset. */
static bool idset_add(IdSet *set, const char *id)
{
	size_t mask = set->cap - 1;
	for (size_t i = str_hash(id) & mask;; i = (i + 1) & mask) {
		if (!set->slot[i]) {
			set->slot[i] = id;
			return true;
		}
		if (strcmp(set->slot[i], id) == 0)
			return false;
	}
}

/* The earliest and the latest time of n >= 1 records (a batch row's min_time, max_time). */
static void time_range(const StoredRecord *recs, size_t n, const char **min_time, const char **max_time)
{
	*min_time = *max_time = recs[0].time;
	for (size_t i = 1; i < n; i++) {
		if (strcmp(recs[i].time, *min_time) < 0)
			*min_time = recs[i].time;
		if (strcmp(recs[i].time, *max_time) > 0)
			*max_time = recs[i].time;
	}
}

static bool lite_append(AuditStore *st, const StoredRecord *recs, size_t n, char *err, size_t errlen)
{
	Lite *l = st->db;
	if (!prepare(l,
		     "INSERT INTO audit_batches (first_seq, last_seq, node, min_time, max_time, prev_tag, last_tag, records)"
		     " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
		     &l->insert_batch, err, errlen) ||
	    !prepare(l, "INSERT OR IGNORE INTO audit_sessions (session_id, batch) VALUES (?1, ?2)", &l->insert_session,
		     err, errlen) ||
	    !prepare(l,
		     "INSERT INTO audit_session_starts (seq, batch, time, session_id, user_name, database)"
		     " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
		     &l->insert_start, err, errlen))
		return false;
	JsonW *w = &l->text;
	jw_clear(w);
	LIT(w, "[\n");
	for (size_t i = 0; i < n; i++) {
		if (i)
			LIT(w, ",\n");
		append_record(w, &recs[i]);
	}
	LIT(w, "\n]");
	int64_t first = recs[0].seq;
	sqlite3_stmt *q = l->insert_batch;
	sqlite3_bind_int64(q, 1, first);
	sqlite3_bind_int64(q, 2, recs[n - 1].seq);
	sqlite3_bind_text(q, 3, recs[0].node, -1, SQLITE_STATIC);
	const char *min_time, *max_time;
	time_range(recs, n, &min_time, &max_time);
	sqlite3_bind_text(q, 4, min_time, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 5, max_time, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 6, recs[0].prev_tag, -1, SQLITE_STATIC);
	sqlite3_bind_text(q, 7, recs[n - 1].tag, -1, SQLITE_STATIC);
	size_t bound = ZSTD_compressBound(w->len);
	if (bound > l->packed_cap) {
		free(l->packed);
		l->packed = xmalloc(bound);
		l->packed_cap = bound;
	}
	if (!l->zc && !(l->zc = ZSTD_createCCtx())) {
		snprintf(err, errlen, "audit store: out of memory");
		return false;
	}
	size_t packed = ZSTD_compressCCtx(l->zc, l->packed, bound, w->buf, w->len, ZSTD_LEVEL);
	if (ZSTD_isError(packed)) {
		snprintf(err, errlen, "audit store: compressing a batch: %s", ZSTD_getErrorName(packed));
		return false;
	}
	sqlite3_bind_blob(q, 8, l->packed, (int)packed, SQLITE_STATIC);
	int rc = sqlite3_step(q);
	sqlite3_reset(q);
	if (rc != SQLITE_DONE)
		return fail(l->db, "insert", err, errlen);

	/* One audit_sessions row per session in the batch, not per record. */
	idset_reset(&l->seen, n);
	for (size_t i = 0; i < n; i++) {
		const StoredRecord *r = &recs[i];
		if (!r->session_id[0])
			continue;
		if (idset_add(&l->seen, r->session_id)) {
			q = l->insert_session;
			sqlite3_bind_text(q, 1, r->session_id, -1, SQLITE_STATIC);
			sqlite3_bind_int64(q, 2, first);
			rc = sqlite3_step(q);
			sqlite3_reset(q);
			if (rc != SQLITE_DONE)
				return fail(l->db, "insert", err, errlen);
		}
		if (strcmp(r->kind, "session_start") == 0) {
			q = l->insert_start;
			sqlite3_bind_int64(q, 1, r->seq);
			sqlite3_bind_int64(q, 2, first);
			sqlite3_bind_text(q, 3, r->time, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 4, r->session_id, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 5, r->user_name, -1, SQLITE_STATIC);
			sqlite3_bind_text(q, 6, r->database, -1, SQLITE_STATIC);
			rc = sqlite3_step(q);
			sqlite3_reset(q);
			if (rc != SQLITE_DONE)
				return fail(l->db, "insert", err, errlen);
		}
	}
	return true;
}

/* ---- reading a batch back ---- */

static void put_utf8(char **o, unsigned cp)
{
	char *p = *o;
	if (cp < 0x80) {
		*p++ = (char)cp;
	} else if (cp < 0x800) {
		*p++ = (char)(0xc0 | cp >> 6);
		*p++ = (char)(0x80 | (cp & 0x3f));
	} else if (cp < 0x10000) {
		*p++ = (char)(0xe0 | cp >> 12);
		*p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*p++ = (char)(0x80 | (cp & 0x3f));
	} else {
		*p++ = (char)(0xf0 | cp >> 18);
		*p++ = (char)(0x80 | ((cp >> 12) & 0x3f));
		*p++ = (char)(0x80 | ((cp >> 6) & 0x3f));
		*p++ = (char)(0x80 | (cp & 0x3f));
	}
	*o = p;
}

static bool hex4(const char *p, unsigned *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		int h = util_hex_value((unsigned char)p[i]);
		if (h < 0)
			return false;
		*v = *v << 4 | (unsigned)h;
	}
	return true;
}

/*
 * A JSON string at *p, decoded in place (never longer than its text) and NUL-terminated;
 * *p moves past it. Also takes the {"hex":"..."} form that jw_text writes for bytes that
 * are not UTF-8. NULL when the text is not one of those.
 */
static char *take_string(char **p, char *end)
{
	char *s = *p;
	if (s < end && *s == '{') {
		static const char HEX[] = "{\"hex\":\"";
		if ((size_t)(end - s) < sizeof HEX || memcmp(s, HEX, sizeof HEX - 1) != 0)
			return NULL;
		char *in = s + sizeof HEX - 1, *out = s;
		while (in + 1 < end && *in != '"') {
			int hi = util_hex_value((unsigned char)in[0]), lo = util_hex_value((unsigned char)in[1]);
			if (hi < 0 || lo < 0)
				return NULL;
			*out++ = (char)(hi << 4 | lo);
			in += 2;
		}
		if (in + 1 >= end || in[0] != '"' || in[1] != '}')
			return NULL;
		*out = 0;
		*p = in + 2;
		return s;
	}
	if (s >= end || *s != '"')
		return NULL;
	char *in = s + 1, *out = s;
	while (in < end && *in != '"') {
		if (*in != '\\') {
			*out++ = *in++;
			continue;
		}
		if (in + 1 >= end)
			return NULL;
		char c = in[1];
		in += 2;
		switch (c) {
		case '"': case '\\': case '/': *out++ = c; break;
		case 'b': *out++ = '\b'; break;
		case 'f': *out++ = '\f'; break;
		case 'n': *out++ = '\n'; break;
		case 'r': *out++ = '\r'; break;
		case 't': *out++ = '\t'; break;
		case 'u': {
			unsigned cp, lo;
			if (end - in < 4 || !hex4(in, &cp))
				return NULL;
			in += 4;
			if (cp >= 0xd800 && cp < 0xdc00 && end - in >= 6 && in[0] == '\\' && in[1] == 'u' && hex4(in + 2, &lo) &&
			    lo >= 0xdc00 && lo < 0xe000) {
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				in += 6;
			}
			if (cp == 0)
				return NULL;
			put_utf8(&out, cp);
			break;
		}
		default:
			return NULL;
		}
	}
	if (in >= end)
		return NULL;
	*out = 0;
	*p = in + 1;
	return s;
}

static bool expect(char **p, char *end, const char *lit)
{
	size_t n = strlen(lit);
	if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
		return false;
	*p += n;
	return true;
}

/* One record object [line, end), parsed in place. False when it is not in our format. */
static bool parse_line(char *line, char *end, StoredRecord *r)
{
	char *p = line;
	if (!expect(&p, end, "{\"seq\":"))
		return false;
	char *digits = p;
	int64_t seq = 0;
	bool neg = p < end && *p == '-';
	if (neg)
		p++;
	while (p < end && *p >= '0' && *p <= '9' && seq < INT64_MAX / 10)
		seq = seq * 10 + (*p++ - '0');
	if (p == digits || p == digits + neg)
		return false;
	r->seq = neg ? -seq : seq;
	if (!expect(&p, end, ",\"time\":") || !(r->time = take_string(&p, end)) || !expect(&p, end, ",\"kind\":") ||
	    !(r->kind = take_string(&p, end)) || !expect(&p, end, ",\"session_id\":") ||
	    !(r->session_id = take_string(&p, end)) || !expect(&p, end, ",\"user\":") ||
	    !(r->user_name = take_string(&p, end)) || !expect(&p, end, ",\"database\":") ||
	    !(r->database = take_string(&p, end)) || !expect(&p, end, ",\"tag\":") || !(r->tag = take_string(&p, end)) ||
	    !expect(&p, end, ",\"record\":"))
		return false;
	if (end - p < 2 || end[-1] != '}')
		return false;
	end[-1] = 0; /* the record object's own closing brace */
	r->body = p;
	return true;
}

/* A batch read back: its text (owned) and its records, pointing into it. */
typedef struct {
	char *text;
	char *node, *prev_tag;
	StoredRecord *recs;
	size_t n, cap;
	int64_t first_seq;
} Batch;

static void batch_clear(Batch *b)
{
	free(b->text);
	free(b->node);
	free(b->prev_tag);
	b->text = b->node = b->prev_tag = NULL;
	b->n = 0;
	b->first_seq = 0;
}

static void batch_free(Batch *b)
{
	batch_clear(b);
	free(b->recs);
}

static StoredRecord *batch_add(Batch *b)
{
	if (b->n == b->cap) {
		b->cap = b->cap ? 2 * b->cap : 256;
		b->recs = xrealloc(b->recs, b->cap * sizeof *b->recs);
	}
	StoredRecord *r = &b->recs[b->n++];
	memset(r, 0, sizeof *r);
	return r;
}

static const char *col(sqlite3_stmt *q, int i)
{
	const char *t = (const char *)sqlite3_column_text(q, i);
	return t ? t : "";
}

/* Past the JSON object or array that starts at p (strings skipped whole); NULL if it does not end. */
static char *skip_composite(char *p, char *end)
{
	int depth = 0;
	for (; p < end; p++) {
		if (*p == '"') {
			for (p++; p < end && *p != '"'; p++)
				if (*p == '\\')
					p++;
			if (p >= end)
				return NULL;
		} else if (*p == '{' || *p == '[') {
			depth++;
		} else if (*p == '}' || *p == ']') {
			if (--depth == 0)
				return p + 1;
		}
	}
	return NULL;
}

static char *skip_blank(char *p, char *end)
{
	while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t' || *p == ','))
		p++;
	return p;
}

/*
 * A frame that does not say its size (the gateway's always do; one re-compressed by hand
 * may not): decompressed by stream, up to a bound, so that verify can still read its
 * records and name the one that was changed. NULL when it does not decompress.
 */
#define UNSIZED_FRAME_MAX ((size_t)256 << 20)

static char *inflate_unsized(const void *raw, size_t len, size_t *outlen)
{
	ZSTD_DCtx *dc = ZSTD_createDCtx();
	size_t cap = len * 8 + 1024, used = 0;
	char *out = xmalloc(cap + 2);
	ZSTD_inBuffer in = {raw, len, 0};
	bool ok = dc != NULL;
	while (ok) {
		if (cap - used < 65536) {
			if (cap >= UNSIZED_FRAME_MAX) {
				ok = false;
				break;
			}
			cap = cap * 2 < UNSIZED_FRAME_MAX ? cap * 2 : UNSIZED_FRAME_MAX;
			out = xrealloc(out, cap + 2);
		}
		ZSTD_outBuffer o = {out + used, cap - used, 0};
		size_t r = ZSTD_decompressStream(dc, &o, &in);
		used += o.pos;
		if (ZSTD_isError(r))
			ok = false;
		else if (r == 0 && in.pos == in.size)
			break; /* the frame is whole */
		else if (in.pos == in.size && o.pos == 0)
			ok = false; /* cut short */
	}
	ZSTD_freeDCtx(dc);
	if (!ok) {
		free(out);
		return NULL;
	}
	*outlen = used;
	return out;
}

/*
 * Loads the batch in the current row of q (columns BATCH_SQL). Records are found by their
 * JSON structure, not by lines, so a batch rewritten by SQLite's JSON functions still
 * reads. What does not parse (the file was edited) becomes a record that cannot verify,
 * numbered where it stands, so that verify names it rather than the scan failing.
 */
static void batch_load(Batch *b, sqlite3_stmt *q)
{
	batch_clear(b);
	b->first_seq = sqlite3_column_int64(q, 0);
	b->node = xstrdup(col(q, 1));
	b->prev_tag = xstrdup(col(q, 2));
	const void *raw = sqlite3_column_blob(q, 3);
	size_t len = (size_t)sqlite3_column_bytes(q, 3);
	unsigned long long size = raw ? ZSTD_getFrameContentSize(raw, len) : ZSTD_CONTENTSIZE_ERROR;
	if (size != ZSTD_CONTENTSIZE_ERROR && size != ZSTD_CONTENTSIZE_UNKNOWN && size < (1ull << 32)) {
		b->text = xmalloc((size_t)size + 2);
		size_t got = ZSTD_decompress(b->text, (size_t)size, raw, len);
		if (ZSTD_isError(got)) {
			/* Not a frame any more: one unreadable record (the parse below fails on "?"). */
			b->text[0] = '?';
			got = 1;
		}
		len = got;
	} else if (size == ZSTD_CONTENTSIZE_UNKNOWN && (b->text = inflate_unsized(raw, len, &len)) != NULL) {
		/* read as any other batch */
	} else {
		b->text = xmalloc(len + 1);
		if (len)
			memcpy(b->text, raw, len);
	}
	b->text[len] = 0;
	char *end = b->text + len;
	char *p = skip_blank(b->text, end);
	if (p < end && *p == '[')
		p = skip_blank(p + 1, end);
	while (p < end && *p != ']') {
		char *e = *p == '{' ? skip_composite(p, end) : NULL;
		StoredRecord *r = batch_add(b);
		if (!e || !parse_line(p, e, r)) {
			int64_t at = b->n > 1 ? b->recs[b->n - 2].seq + 1 : b->first_seq;
			*r = (StoredRecord){.seq = at, .time = "", .kind = "(unreadable)", .session_id = "", .user_name = "",
					    .database = "", .body = p, .tag = ""};
			break; /* the rest is the unreadable record's body */
		}
		p = skip_blank(e, end);
	}
	for (size_t i = 0; i < b->n; i++) {
		b->recs[i].node = b->node;
		b->recs[i].prev_tag = i ? b->recs[i - 1].tag : b->prev_tag;
	}
	/* Records gone from the head of the batch: what the first one follows is unknown. */
	if (b->n && b->recs[0].seq != b->first_seq)
		b->recs[0].prev_tag = "";
}

static bool matches(const StoreFilter *f, const StoredRecord *r)
{
	return r->seq >= f->from_seq && (!f->node || strcmp(f->node, r->node) == 0) &&
	       (!f->kind || strcmp(f->kind, r->kind) == 0) && (!f->session_id || strcmp(f->session_id, r->session_id) == 0) &&
	       (!f->user_name || strcmp(f->user_name, r->user_name) == 0) &&
	       (!f->database || strcmp(f->database, r->database) == 0) && (!f->since || strcmp(r->time, f->since) >= 0);
}

/* ---- the current layout ---- */

static bool only_node_sql(sqlite3 *db, const char *sql, const char *node, char *err, size_t errlen)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(db, "head", err, errlen);
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	bool found = sqlite3_step(q) == SQLITE_ROW;
	if (found)
		snprintf(err, errlen,
			 "audit store: this SQLite file holds the records of node '%s', not '%s': a SQLite store"
			 " serves one gateway (give each its own file, or share a PostgreSQL store)",
			 (const char *)sqlite3_column_text(q, 0), node);
	sqlite3_finalize(q);
	return !found;
}

static bool head_sql(sqlite3 *db, const char *sql, const char *node, const char *before, int64_t *seq, char *tag,
		     char *err, size_t errlen)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(db, "head", err, errlen);
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	if (before)
		sqlite3_bind_text(q, 2, before, -1, SQLITE_STATIC);
	*seq = 0;
	tag[0] = 0;
	int rc = sqlite3_step(q);
	if (rc == SQLITE_ROW) {
		*seq = sqlite3_column_int64(q, 0);
		snprintf(tag, AUDIT_TAG_HEX, "%s", col(q, 1));
	}
	sqlite3_finalize(q);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return fail(db, "head", err, errlen);
	return true;
}

/* A node's newest batch, or (before) its newest batch whose records are all older than before. */
static bool lite_head(AuditStore *st, const char *node, const char *before, int64_t *seq, char *tag, char *err,
		      size_t errlen)
{
	Lite *l = st->db;
	if (!before && !only_node_sql(l->db,
				      "SELECT node FROM (SELECT node FROM audit_batches ORDER BY first_seq DESC LIMIT 1)"
				      " WHERE node <> ?1",
				      node, err, errlen))
		return false;
	return head_sql(l->db,
			before ? "SELECT last_seq, last_tag FROM audit_batches WHERE node = ?1 AND max_time < ?2"
				 " ORDER BY first_seq DESC LIMIT 1"
			       : "SELECT last_seq, last_tag FROM audit_batches WHERE node = ?1 ORDER BY first_seq DESC LIMIT 1",
			node, before, seq, tag, err, errlen);
}

static bool run_bound(sqlite3 *db, const char *sql, const char *node, int64_t seq, const char *what, char *err,
		      size_t errlen)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(db, what, err, errlen);
	int i = 1;
	if (node)
		sqlite3_bind_text(q, i++, node, -1, SQLITE_STATIC);
	sqlite3_bind_int64(q, i, seq);
	int rc = sqlite3_step(q);
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return fail(db, what, err, errlen);
	return true;
}

/* Whole batches only: store_last_before hands out batch ends. */
static bool lite_delete_through(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	Lite *l = st->db;
	return run_bound(l->db, "DELETE FROM audit_batches WHERE node = ?1 AND last_seq <= ?2", node, seq, "prune", err,
			 errlen) &&
	       run_bound(l->db, "DELETE FROM audit_sessions WHERE batch <= ?1", NULL, seq, "prune", err, errlen) &&
	       run_bound(l->db, "DELETE FROM audit_session_starts WHERE seq <= ?1", NULL, seq, "prune", err, errlen);
}

/* The newest session starts first, through their own small table, as the session list wants. */
static bool scan_session_starts(Lite *l, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	char sql[512];
	const char *binds[4];
	int nb = 0;
	size_t n = (size_t)snprintf(sql, sizeof sql, "SELECT s.seq, s.batch FROM audit_session_starts s"
				    " JOIN audit_batches b ON b.first_seq = s.batch WHERE s.seq >= %lld",
				    (long long)f->from_seq);
	const struct {
		const char *condition;
		const char *value;
	} wheres[] = {{"b.node =", f->node}, {"s.user_name =", f->user_name}, {"s.database =", f->database},
		      {"s.time >=", f->since}};
	for (size_t i = 0; i < sizeof wheres / sizeof *wheres; i++) {
		if (!wheres[i].value)
			continue;
		n += (size_t)snprintf(sql + n, sizeof sql - n, " AND %s ?%d", wheres[i].condition, nb + 1);
		binds[nb++] = wheres[i].value;
	}
	n += (size_t)snprintf(sql + n, sizeof sql - n,
			      f->newest_first ? " ORDER BY s.time DESC, s.seq DESC" : " ORDER BY s.seq");
	if (f->limit > 0)
		snprintf(sql + n, sizeof sql - n, " LIMIT %lld", (long long)f->limit);
	sqlite3_stmt *q = NULL, *bq = NULL;
	if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(l->db, "SELECT " BATCH_SQL " FROM audit_batches WHERE first_seq = ?1", -1, &bq, NULL) !=
		    SQLITE_OK) {
		sqlite3_finalize(q);
		return fail(l->db, "read", err, errlen);
	}
	for (int i = 0; i < nb; i++)
		sqlite3_bind_text(q, i + 1, binds[i], -1, SQLITE_STATIC);
	Batch b = {0};
	int rc;
	bool go = true;
	while (go && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		int64_t seq = sqlite3_column_int64(q, 0), batch = sqlite3_column_int64(q, 1);
		if (!b.text || b.first_seq != batch) {
			sqlite3_reset(bq);
			sqlite3_bind_int64(bq, 1, batch);
			if (sqlite3_step(bq) != SQLITE_ROW)
				continue;
			batch_load(&b, bq);
		}
		for (size_t i = 0; i < b.n; i++) {
			if (b.recs[i].seq == seq && matches(f, &b.recs[i])) {
				go = cb(&b.recs[i], arg);
				break;
			}
		}
	}
	if (!go)
		rc = SQLITE_DONE;
	sqlite3_finalize(q);
	sqlite3_finalize(bq);
	batch_free(&b);
	if (rc != SQLITE_DONE)
		return fail(l->db, "read", err, errlen);
	return true;
}

static bool lite_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	Lite *l = st->db;
	if (f->kind && strcmp(f->kind, "session_start") == 0 && !f->session_id)
		return scan_session_starts(l, f, cb, arg, err, errlen);
	/* Batches that may hold a match, then the records of each, filtered here. */
	char sql[512];
	const char *binds[3];
	int nb = 0;
	size_t n = (size_t)snprintf(sql, sizeof sql, "SELECT " BATCH_SQL " FROM audit_batches WHERE last_seq >= %lld",
				    (long long)f->from_seq);
	if (f->node) {
		n += (size_t)snprintf(sql + n, sizeof sql - n, " AND node = ?%d", nb + 1);
		binds[nb++] = f->node;
	}
	if (f->since) {
		n += (size_t)snprintf(sql + n, sizeof sql - n, " AND max_time >= ?%d", nb + 1);
		binds[nb++] = f->since;
	}
	if (f->session_id) {
		n += (size_t)snprintf(sql + n, sizeof sql - n,
				      " AND first_seq IN (SELECT batch FROM audit_sessions WHERE session_id = ?%d)", nb + 1);
		binds[nb++] = f->session_id;
	}
	/* Newest first is by seq here; only the session list asks for it, and it goes above. */
	snprintf(sql + n, sizeof sql - n, f->newest_first ? " ORDER BY first_seq DESC" : " ORDER BY first_seq");
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(l->db, "read", err, errlen);
	for (int i = 0; i < nb; i++)
		sqlite3_bind_text(q, i + 1, binds[i], -1, SQLITE_STATIC);
	Batch b = {0};
	int64_t left = f->limit > 0 ? f->limit : -1;
	int rc;
	bool go = true;
	while (go && left != 0 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		batch_load(&b, q);
		for (size_t k = 0; go && left != 0 && k < b.n; k++) {
			const StoredRecord *r = &b.recs[f->newest_first ? b.n - 1 - k : k];
			if (!matches(f, r))
				continue;
			go = cb(r, arg);
			if (left > 0)
				left--;
		}
	}
	if (!go || left == 0)
		rc = SQLITE_DONE;
	sqlite3_finalize(q);
	batch_free(&b);
	if (rc != SQLITE_DONE)
		return fail(l->db, "read", err, errlen);
	return true;
}

/* ---- the readers' tables, checked against the chained records ---- */

/* The first row sql selects, as a number (-1 when the query fails). */
static int64_t count_sql(sqlite3 *db, const char *sql, const char *node)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
		return -1;
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	int64_t n = sqlite3_step(q) == SQLITE_ROW ? sqlite3_column_int64(q, 0) : -1;
	sqlite3_finalize(q);
	return n;
}

/* 1 when q (its parameters bound) finds a row, 0 when not, -1 when it fails. */
static int probe(sqlite3_stmt *q)
{
	int rc = sqlite3_step(q);
	sqlite3_reset(q);
	return rc == SQLITE_ROW ? 1 : rc == SQLITE_DONE ? 0 : -1;
}

/* What a batch row says about its records, against what they say (NULL when it agrees). */
static const char *batch_row_differs(sqlite3_stmt *q, const Batch *b)
{
	const StoredRecord *last = &b->recs[b->n - 1];
	const char *min_time, *max_time;
	time_range(b->recs, b->n, &min_time, &max_time);
	if (sqlite3_column_int64(q, 4) != last->seq)
		return "last_seq";
	if (strcmp(col(q, 5), min_time) != 0)
		return "min_time";
	if (strcmp(col(q, 6), max_time) != 0)
		return "max_time";
	if (strcmp(col(q, 7), last->tag) != 0)
		return "last_tag";
	return NULL;
}

/*
 * audit_batches' columns other than the records, audit_sessions and audit_session_starts are
 * outside the chain, and the readers go by them: a row taken out of audit_session_starts
 * hides a session from the list, one out of audit_sessions hides its statements from replay,
 * a backdated max_time hides a batch from export --since. Each must say exactly what node's
 * records (verified before this) say.
 */
static int lite_check_index(AuditStore *st, const char *node, char *problem, size_t plen, char *err, size_t errlen)
{
	Lite *l = st->db;
	sqlite3_stmt *q = NULL, *has_session = NULL, *has_start = NULL;
	if (sqlite3_prepare_v2(l->db,
			       "SELECT " BATCH_SQL ", last_seq, min_time, max_time, last_tag FROM audit_batches"
			       " WHERE node = ?1 ORDER BY first_seq",
			       -1, &q, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(l->db, "SELECT 1 FROM audit_sessions WHERE session_id = ?1 AND batch = ?2", -1,
			       &has_session, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(l->db,
			       "SELECT 1 FROM audit_session_starts WHERE seq = ?1 AND batch = ?2 AND time = ?3"
			       " AND session_id = ?4 AND user_name = ?5 AND database = ?6",
			       -1, &has_start, NULL) != SQLITE_OK) {
		fail(l->db, "check", err, errlen);
		sqlite3_finalize(q);
		sqlite3_finalize(has_session);
		return -1;
	}
	sqlite3_bind_text(q, 1, node, -1, SQLITE_STATIC);
	/* One snapshot for the walk and the counts: a gateway may be committing meanwhile. */
	if (sqlite3_exec(l->db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
		fail(l->db, "check", err, errlen);
		sqlite3_finalize(q);
		sqlite3_finalize(has_session);
		sqlite3_finalize(has_start);
		return -1;
	}
	Batch b = {0};
	IdSet seen = {0};
	int64_t sessions = 0, starts = 0;
	int result = 1, rc = SQLITE_DONE, found = 1;
	while (result == 1 && (rc = sqlite3_step(q)) == SQLITE_ROW) {
		batch_load(&b, q);
		const char *column = b.n ? batch_row_differs(q, &b) : "records";
		if (column) {
			snprintf(problem, plen,
				 "index: audit_batches row first_seq=%lld: its %s is not what its records say (altered;"
				 " the readers find records by it)",
				 (long long)b.first_seq, column);
			result = 0;
			break;
		}
		idset_reset(&seen, b.n);
		for (size_t i = 0; found == 1 && i < b.n; i++) {
			const StoredRecord *r = &b.recs[i];
			if (r->session_id[0] && idset_add(&seen, r->session_id)) {
				sessions++;
				sqlite3_bind_text(has_session, 1, r->session_id, -1, SQLITE_STATIC);
				sqlite3_bind_int64(has_session, 2, b.first_seq);
				if ((found = probe(has_session)) == 0)
					snprintf(problem, plen,
						 "index: audit_sessions lacks session %s in batch first_seq=%lld (deleted or"
						 " altered: replay does not show its records there)",
						 r->session_id, (long long)b.first_seq);
			}
			if (found == 1 && strcmp(r->kind, "session_start") == 0) {
				starts++;
				sqlite3_bind_int64(has_start, 1, r->seq);
				sqlite3_bind_int64(has_start, 2, b.first_seq);
				sqlite3_bind_text(has_start, 3, r->time, -1, SQLITE_STATIC);
				sqlite3_bind_text(has_start, 4, r->session_id, -1, SQLITE_STATIC);
				sqlite3_bind_text(has_start, 5, r->user_name, -1, SQLITE_STATIC);
				sqlite3_bind_text(has_start, 6, r->database, -1, SQLITE_STATIC);
				if ((found = probe(has_start)) == 0)
					snprintf(problem, plen,
						 "index: audit_session_starts lacks the start of session %s (record seq=%lld;"
						 " deleted or altered: sessions list does not show it)",
						 r->session_id, (long long)r->seq);
			}
		}
		result = found;
	}
	if (result == 1 && rc != SQLITE_DONE)
		result = -1;
	/* Every row found above is one the records call for: the rest were added. */
	const struct {
		const char *table, *sql;
		int64_t expected;
	} counts[] = {
		{"audit_sessions",
		 "SELECT count(*) FROM audit_sessions s JOIN audit_batches b ON b.first_seq = s.batch WHERE b.node = ?1",
		 sessions},
		{"audit_session_starts",
		 "SELECT count(*) FROM audit_session_starts s JOIN audit_batches b ON b.first_seq = s.batch"
		 " WHERE b.node = ?1",
		 starts},
	};
	for (size_t i = 0; result == 1 && i < sizeof counts / sizeof *counts; i++) {
		int64_t n = count_sql(l->db, counts[i].sql, node);
		if (n < 0) {
			result = -1;
		} else if (n != counts[i].expected) {
			snprintf(problem, plen, "index: %s has %lld rows for the node's batches where its records call for %lld"
				 " (rows were added or altered: the readers go by them)",
				 counts[i].table, (long long)n, (long long)counts[i].expected);
			result = 0;
		}
	}
	if (result < 0)
		fail(l->db, "check", err, errlen);
	sqlite3_finalize(q);
	sqlite3_finalize(has_session);
	sqlite3_finalize(has_start);
	sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL); /* it only read */
	batch_free(&b);
	free(seen.slot);
	return result;
}

/* ---- the earlier layout: one row per record in a table audit_records (read only) ---- */

static bool v1_head(AuditStore *st, const char *node, const char *before, int64_t *seq, char *tag, char *err,
		    size_t errlen)
{
	Lite *l = st->db;
	if (!before && !only_node_sql(l->db,
				      "SELECT node FROM (SELECT node FROM audit_records ORDER BY rowid DESC LIMIT 1)"
				      " WHERE node <> ?1",
				      node, err, errlen))
		return false;
	return head_sql(l->db,
			before ? "SELECT seq, tag FROM audit_records WHERE node = ?1 AND time < ?2 ORDER BY seq DESC LIMIT 1"
			       : "SELECT seq, tag FROM audit_records WHERE node = ?1 ORDER BY seq DESC LIMIT 1",
			node, before, seq, tag, err, errlen);
}

static bool v1_scan(AuditStore *st, const StoreFilter *f, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	Lite *l = st->db;
	char sql[1024];
	const char *binds[STORE_SCAN_BINDS];
	int nb = audit__scan_sql(f, '?', sql, sizeof sql, binds);
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(l->db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(l->db, "read", err, errlen);
	for (int i = 0; i < nb; i++)
		sqlite3_bind_text(q, i + 1, binds[i], -1, SQLITE_STATIC);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		StoredRecord r = {
			.node = col(q, 0), .seq = sqlite3_column_int64(q, 1), .time = col(q, 2), .kind = col(q, 3),
			.session_id = col(q, 4), .user_name = col(q, 5), .database = col(q, 6), .body = col(q, 7),
			.prev_tag = col(q, 8), .tag = col(q, 9),
		};
		if (!cb(&r, arg)) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(q);
	if (rc != SQLITE_DONE)
		return fail(l->db, "read", err, errlen);
	return true;
}

static bool v1_refuse(AuditStore *st, const char *node, int64_t seq, char *err, size_t errlen)
{
	snprintf(err, errlen, "audit store: this file has the earlier layout; it is converted when the gateway starts");
	return false;
}

static bool v1_append(AuditStore *st, const StoredRecord *r, size_t n, char *err, size_t errlen)
{
	return v1_refuse(st, NULL, 0, err, errlen);
}

static bool lite_upgrade(AuditStore *st, char *err, size_t errlen);

/* The distinct nodes sql selects, in its order. */
static bool nodes_sql(sqlite3 *db, const char *sql, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, sql, -1, &q, NULL) != SQLITE_OK)
		return fail(db, "read", err, errlen);
	int rc;
	while ((rc = sqlite3_step(q)) == SQLITE_ROW) {
		StoredRecord r = {.node = col(q, 0)};
		if (!cb(&r, arg)) {
			rc = SQLITE_DONE;
			break;
		}
	}
	sqlite3_finalize(q);
	return rc == SQLITE_DONE || fail(db, "read", err, errlen);
}

/* From the batches' node column: no batch is decompressed. */
static bool lite_nodes(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	Lite *l = st->db;
	return nodes_sql(l->db, "SELECT DISTINCT node FROM audit_batches ORDER BY node", cb, arg, err, errlen);
}

static bool v1_nodes(AuditStore *st, StoreVisit cb, void *arg, char *err, size_t errlen)
{
	Lite *l = st->db;
	return nodes_sql(l->db, "SELECT DISTINCT node FROM audit_records ORDER BY node", cb, arg, err, errlen);
}

static const StoreOps lite_ops = {
	.close = lite_close,
	.exec = lite_exec,
	.append = lite_append,
	.head = lite_head,
	.delete_through = lite_delete_through,
	.scan = lite_scan,
	.nodes = lite_nodes,
	.check_index = lite_check_index,
};

static const StoreOps v1_ops = {
	.close = lite_close,
	.exec = lite_exec,
	.append = v1_append,
	.upgrade = lite_upgrade,
	.head = v1_head,
	.delete_through = v1_refuse,
	.scan = v1_scan,
	.nodes = v1_nodes,
};

#define UPGRADE_BATCH 1000

typedef struct {
	AuditStore *st;
	StoredRecord *recs;
	char **copies; /* the strings of recs, owned */
	size_t n;
	bool failed;
	char *err;
	size_t errlen;
} Upgrade;

static void upgrade_flush(Upgrade *u)
{
	if (u->n && !u->failed && !lite_append(u->st, u->recs, u->n, u->err, u->errlen))
		u->failed = true;
	for (size_t i = 0; i < u->n * 10; i++)
		free(u->copies[i]);
	u->n = 0;
}

static bool upgrade_one(const StoredRecord *r, void *arg)
{
	Upgrade *u = arg;
	char **c = &u->copies[u->n * 10];
	const char *f[10] = {r->node, r->time, r->kind, r->session_id, r->user_name, r->database, r->body, r->prev_tag,
			     r->tag, ""};
	for (int i = 0; i < 10; i++)
		c[i] = xstrdup(f[i]);
	u->recs[u->n++] = (StoredRecord){.node = c[0], .seq = r->seq, .time = c[1], .kind = c[2], .session_id = c[3],
					 .user_name = c[4], .database = c[5], .body = c[6], .prev_tag = c[7], .tag = c[8]};
	if (u->n == UPGRADE_BATCH)
		upgrade_flush(u);
	return !u->failed;
}

/*
 * Converts a file of the earlier layout in one transaction: its records, in seq order, into
 * batches of UPGRADE_BATCH; then the old table goes.
 */
static bool lite_upgrade(AuditStore *st, char *err, size_t errlen)
{
	Lite *l = st->db;
	if (!lite_exec(st, "BEGIN IMMEDIATE", err, errlen))
		return false;
	Upgrade u = {.st = st, .recs = xcalloc(UPGRADE_BATCH, sizeof *u.recs),
		     .copies = xcalloc(UPGRADE_BATCH * 10, sizeof *u.copies), .err = err, .errlen = errlen};
	StoreFilter all = {0};
	bool ok = v1_scan(st, &all, upgrade_one, &u, err, errlen);
	upgrade_flush(&u);
	ok = ok && !u.failed && lite_exec(st, "DROP TABLE audit_records", err, errlen) &&
	     lite_exec(st, "COMMIT", err, errlen);
	free(u.recs);
	free(u.copies);
	if (!ok) {
		sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
		return false;
	}
	st->ops = &lite_ops;
	return true;
}

/* True when the file has the earlier layout: a table audit_records. */
static bool earlier_layout(sqlite3 *db)
{
	sqlite3_stmt *q;
	if (sqlite3_prepare_v2(db, "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'", -1, &q,
			       NULL) != SQLITE_OK)
		return false;
	bool found = sqlite3_step(q) == SQLITE_ROW;
	sqlite3_finalize(q);
	return found;
}

AuditStore *audit__sqlite_open(const char *path, bool strict, char *err, size_t errlen)
{
	Lite *l = xcalloc(1, sizeof *l);
	jw_init(&l->text);
	if (sqlite3_open_v2(path, &l->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
		fail(l->db, path, err, errlen);
		goto fail;
	}
	chmod(path, 0600); /* the trail holds statements and result rows */
	sqlite3_busy_timeout(l->db, 2000);
	/*
	 * A checkpoint copies the WAL into the file and, at synchronous=NORMAL, is the only
	 * fsync: one every ~40 MB instead of every 4 MB, and pages rewritten by several batches
	 * in between are copied once.
	 */
	if (sqlite3_exec(l->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, "PRAGMA wal_autocheckpoint=10000", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, strict ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL", NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(l->db, SCHEMA, NULL, NULL, NULL) != SQLITE_OK) {
		fail(l->db, path, err, errlen);
		goto fail;
	}
	bool v1 = earlier_layout(l->db);
	AuditStore *st = xcalloc(1, sizeof *st);
	st->ops = v1 ? &v1_ops : &lite_ops;
	st->db = l;
	return st;
fail:
	sqlite3_close(l->db);
	jw_free(&l->text);
	free(l);
	return NULL;
}
