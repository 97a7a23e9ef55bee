/* A JSON text writer into a growing buffer (see jsonw.h). */
#include "core/jsonw.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

void jw_init(JsonW *w) { memset(w, 0, sizeof *w); }

void jw_free(JsonW *w)
{
	free(w->buf);
	jw_init(w);
}

static void reserve(JsonW *w, size_t more)
{
	if (w->len + more + 1 <= w->cap)
		return;
	size_t cap = w->cap ? w->cap : 256;
	while (cap < w->len + more + 1)
		cap *= 2;
	char *b = realloc(w->buf, cap);
	if (!b)
		abort();
	w->buf = b;
	w->cap = cap;
}

static void put(JsonW *w, const char *s, size_t n)
{
	reserve(w, n);
	memcpy(w->buf + w->len, s, n);
	w->len += n;
	w->buf[w->len] = 0;
}

static void putc_(JsonW *w, char c) { put(w, &c, 1); }

char *jw_take(JsonW *w)
{
	if (!w->buf)
		put(w, "", 0);
	char *b = w->buf;
	jw_init(w);
	return b;
}

static void sep(JsonW *w)
{
	if (w->comma)
		putc_(w, ',');
	w->comma = true;
}

void jw_begin_object(JsonW *w)
{
	sep(w);
	putc_(w, '{');
	w->comma = false;
}

void jw_end_object(JsonW *w)
{
	putc_(w, '}');
	w->comma = true;
}

void jw_begin_array(JsonW *w)
{
	sep(w);
	putc_(w, '[');
	w->comma = false;
}

void jw_end_array(JsonW *w)
{
	putc_(w, ']');
	w->comma = true;
}

static void quoted(JsonW *w, const uint8_t *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	reserve(w, n + 2);
	putc_(w, '"');
	size_t run = 0;
	for (size_t i = 0; i < n; i++) {
		uint8_t c = s[i];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		put(w, (const char *)s + run, i - run);
		run = i + 1;
		char esc[7] = {'\\', 0};
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		default:
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			put(w, esc, 6);
			continue;
		}
		put(w, esc, 2);
	}
	put(w, (const char *)s + run, n - run);
	putc_(w, '"');
}

void jw_key(JsonW *w, const char *key)
{
	sep(w);
	quoted(w, (const uint8_t *)key, strlen(key));
	putc_(w, ':');
	w->comma = false;
}

void jw_key_plain_grow(JsonW *w, const char *key, size_t len)
{
	reserve(w, len + 4);
	if (w->comma)
		w->buf[w->len++] = ',';
	w->buf[w->len++] = '"';
	memcpy(w->buf + w->len, key, len);
	w->len += len;
	w->buf[w->len++] = '"';
	w->buf[w->len++] = ':';
	w->buf[w->len] = 0;
	w->comma = false;
}

void jw_string(JsonW *w, const char *s)
{
	if (!s) {
		jw_null(w);
		return;
	}
	jw_text(w, (const uint8_t *)s, strlen(s), false);
}

bool jw_valid_utf8(const uint8_t *s, size_t n)
{
	size_t i = 0;
	while (i < n) {
		uint8_t c = s[i];
		if (c < 0x80) {
			if (c == 0)
				return false; /* JSON could carry it, but it is not text */
			i++;
			continue;
		}
		size_t len;
		uint32_t cp;
		if ((c & 0xe0) == 0xc0) {
			len = 2;
			cp = c & 0x1f;
		} else if ((c & 0xf0) == 0xe0) {
			len = 3;
			cp = c & 0x0f;
		} else if ((c & 0xf8) == 0xf0) {
			len = 4;
			cp = c & 0x07;
		} else {
			return false;
		}
		if (i + len > n)
			return false;
		for (size_t k = 1; k < len; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + k] & 0x3f);
		}
		/* No overlong forms, surrogates or code points past U+10FFFF. */
		if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += len;
	}
	return true;
}

/* Eight bytes at a time (SQL text and most values are plain), with the "has a zero byte" bit trick. */
bool jw_plain_ascii(const uint8_t *s, size_t n)
{
	const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
	size_t i = 0;
	for (; i + 8 <= n; i += 8) {
		uint64_t x;
		memcpy(&x, s + i, 8);
		uint64_t quote = x ^ (ones * '"'), backslash = x ^ (ones * '\\');
		uint64_t bad = (x | ((x - ones * 0x20) & ~x) | ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash)) &
			       highs;
		if (bad)
			return false;
	}
	for (; i < n; i++)
		if (s[i] < 0x20 || s[i] >= 0x80 || s[i] == '"' || s[i] == '\\')
			return false;
	return true;
}

void jw_text_cut(JsonW *w, const uint8_t *s, size_t n, bool binary, size_t cap, const char *sha256)
{
	if (!cap || n <= cap) {
		jw_text(w, s, n, binary);
		return;
	}
	size_t head = binary ? cap : util_utf8_prefix(s, n, cap); /* not in the middle of a character */
	char hex[65];
	if (!sha256) {
		util_sha256_hex(s, n, hex);
		sha256 = hex;
	}
	jw_begin_object(w);
	JW_KEY(w, "head");
	jw_text(w, s, head, binary);
	JW_KEY(w, "bytes");
	jw_int(w, (int64_t)n);
	JW_KEY(w, "sha256");
	jw_string(w, sha256);
	jw_end_object(w);
}

void jw_text(JsonW *w, const uint8_t *s, size_t n, bool binary)
{
	if (!binary && jw_plain_ascii(s, n)) {
		sep(w);
		reserve(w, n + 2);
		w->buf[w->len++] = '"';
		memcpy(w->buf + w->len, s, n);
		w->len += n;
		w->buf[w->len++] = '"';
		w->buf[w->len] = 0;
		return;
	}
	if (!binary && jw_valid_utf8(s, n)) {
		sep(w);
		quoted(w, s, n);
		return;
	}
	jw_begin_object(w);
	jw_key(w, "hex");
	reserve(w, 2 * n + 2);
	putc_(w, '"');
	util_hex_encode(s, n, w->buf + w->len);
	w->len += 2 * n;
	putc_(w, '"');
	w->comma = true;
	jw_end_object(w);
}

void jw_int(JsonW *w, int64_t v)
{
	char b[24], *end = b + sizeof b;
	char *p = util_decimal(v, end);
	sep(w);
	put(w, p, (size_t)(end - p));
}

void jw_fixed3(JsonW *w, int64_t thousandths)
{
	char b[32], *end = b + sizeof b;
	uint64_t mag = thousandths < 0 ? 0 - (uint64_t)thousandths : (uint64_t)thousandths;
	char *p = end;
	for (int i = 0; i < 3; i++) {
		*--p = (char)('0' + mag % 10);
		mag /= 10;
	}
	*--p = '.';
	p = util_digits(mag, p);
	if (thousandths < 0)
		*--p = '-';
	sep(w);
	put(w, p, (size_t)(end - p));
}

void jw_bool(JsonW *w, bool v)
{
	sep(w);
	put(w, v ? "true" : "false", v ? 4 : 5);
}

void jw_null(JsonW *w)
{
	sep(w);
	put(w, "null", 4);
}

void jw_raw(JsonW *w, const char *json, size_t n)
{
	sep(w);
	put(w, json, n);
}
