/*
 * Masking in the gateway: the fields of a result that come straight from a masked text
 * column (RowDescription gives each field's table OID and attribute number) are masked
 * here, row by row, instead of by SQL inside the statement. The results are those of the
 * SQL of methods.c for the same value, so a client sees the same masked value whichever
 * way a statement went: characters are counted as UTF-8 (sessions whose client encoding
 * is not UTF8 never come here), and a varchar(n) result is cut to n characters as the
 * SQL cast does.
 */
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "mask/mask.h"

#define OID_TEXT 25
#define OID_VARCHAR 1043

RowMask *mask_rowmask_new(const MaskCatalog *c, int nfields)
{
	RowMask *m = xcalloc(1, sizeof *m);
	m->nfields = nfields;
	m->fields = xcalloc((size_t)(nfields ? nfields : 1), sizeof *m->fields);
	if (c->has_key) {
		for (int i = 0; i < 32; i++)
			m->hash_key[i] = c->hash_ipad[i] ^ 0x36; /* the key the pads were made from */
		m->has_key = true;
	}
	return m;
}

bool mask_rowmask_field(RowMask *m, const MaskCatalog *c, int i, uint32_t relid, int attnum, uint32_t typoid,
			int32_t typmod)
{
	const MaskColumn *col = relid && attnum > 0 ? mask_catalog_column(c, relid, attnum) : NULL;
	if (!col || col->rule < 0)
		return true;
	if (typoid != OID_TEXT && typoid != OID_VARCHAR)
		return false; /* only text is masked here; the statement should have been rewritten */
	const MaskRule *r = c->rules[col->rule];
	MaskField *f = &m->fields[i];
	f->masked = true;
	f->method = r->method == MASK_HASH && !m->has_key ? MASK_REDACT : r->method;
	f->keep_first = r->keep_first;
	f->keep_last = r->keep_last;
	f->max_chars = typoid == OID_VARCHAR && typmod > 4 ? typmod - 4 : 0;
	f->value = r->value ? xstrdup(r->value) : NULL;
	m->nmasked++;
	return true;
}

void mask_rowmask_free(RowMask *m)
{
	if (!m)
		return;
	for (int i = 0; i < m->nfields; i++)
		free(m->fields[i].value);
	free(m->fields);
	free(m);
}

/* ---- UTF-8 text, character by character ---- */

static bool is_lead(uint8_t b) { return (b & 0xc0) != 0x80; }

static size_t char_count(const uint8_t *s, size_t n)
{
	size_t c = 0;
	for (size_t i = 0; i < n; i++)
		c += is_lead(s[i]);
	return c;
}

/* Byte offset of character k (n when there are fewer). */
static size_t char_offset(const uint8_t *s, size_t n, size_t k)
{
	size_t i = 0;
	for (size_t c = 0; i < n; i++)
		if (is_lead(s[i]) && c++ == k)
			return i;
	return n;
}

typedef MaskBuf Out;

static void put(Out *o, const void *p, size_t n)
{
	if (!n)
		return;
	if (o->len + n > o->cap) {
		o->cap = (o->len + n) * 2 + 16;
		o->buf = xrealloc(o->buf, o->cap);
	}
	memcpy(o->buf + o->len, p, n);
	o->len += n;
}

/* regexp_replace(s, '[[:alnum:]]', '*', 'g'): letters and digits (any non-ASCII character counts as one) become '*'. */
static void put_stars(Out *o, const uint8_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		uint8_t b = s[i];
		if (b < 0x80) {
			bool alnum = (b >= '0' && b <= '9') || ((b | 0x20) >= 'a' && (b | 0x20) <= 'z');
			put(o, alnum ? "*" : (const char *)&s[i], 1);
		} else if (is_lead(b)) {
			put(o, "*", 1);
		}
	}
}

static void partial(Out *o, const MaskField *f, const uint8_t *s, size_t n)
{
	size_t len = char_count(s, n), keep = (size_t)f->keep_first + (size_t)f->keep_last;
	if (len <= keep) {
		put_stars(o, s, n);
		return;
	}
	size_t head = char_offset(s, n, (size_t)f->keep_first);
	size_t tail = char_offset(s, n, len - (size_t)f->keep_last);
	put(o, s, head);
	put_stars(o, s + head, tail - head);
	put(o, s + tail, n - tail);
}

static void email(Out *o, const uint8_t *s, size_t n)
{
	const uint8_t *at = memchr(s, '@', n);
	if (!at || at == s) {
		put_stars(o, s, n);
		return;
	}
	put(o, s, char_offset(s, n, 1));
	put(o, "***", 3);
	put(o, at, n - (size_t)(at - s));
}

/* 'h:' and the first 16 hex digits of HMAC-SHA-256(key, value), as hash_value() in SQL. */
static void hash(Out *o, const RowMask *m, const uint8_t *s, size_t n)
{
	uint8_t pad[64], inner[32], outer[32];
	unsigned len = 0;
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	bool ok = ctx != NULL;
	for (int pass = 0; ok && pass < 2; pass++) {
		for (int i = 0; i < 64; i++)
			pad[i] = (uint8_t)((i < 32 ? m->hash_key[i] : 0) ^ (pass == 0 ? 0x36 : 0x5c));
		ok = EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, pad, 64) &&
		     EVP_DigestUpdate(ctx, pass == 0 ? s : inner, pass == 0 ? n : 32) &&
		     EVP_DigestFinal_ex(ctx, pass == 0 ? inner : outer, &len);
	}
	EVP_MD_CTX_free(ctx);
	if (!ok) {
		put(o, MASK_REDACTED, strlen(MASK_REDACTED)); /* never the value */
		return;
	}
	char hex[65];
	util_hex_encode(outer, 32, hex);
	put(o, "h:", 2);
	put(o, hex, 16);
}

bool mask_rowmask_value(const RowMask *m, int i, const uint8_t *s, size_t n, MaskBuf *o)
{
	const MaskField *f = &m->fields[i];
	o->len = 0;
	switch (f->method) {
	case MASK_NULL: return false;
	case MASK_PARTIAL: partial(o, f, s, n); break;
	case MASK_EMAIL: email(o, s, n); break;
	case MASK_HASH: hash(o, m, s, n); break;
	case MASK_FIXED: put(o, f->value ? f->value : "", f->value ? strlen(f->value) : 0); break;
	case MASK_REDACT: put(o, MASK_REDACTED, strlen(MASK_REDACTED)); break;
	}
	if (f->max_chars > 0)
		o->len = char_offset(o->buf, o->len, (size_t)f->max_chars); /* CAST(... AS varchar(n)) */
	return true;
}
