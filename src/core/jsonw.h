/*
 * A JSON text writer into a growing buffer: what the audit records are built with on the
 * data path, where a tree of jansson objects (one allocation per value) cost too much.
 * Strings that are not valid UTF-8 cannot be JSON strings: jw_text writes them as
 * {"hex": "..."} instead. The caller owns the buffer (jw_take) or frees it (jw_free).
 */
#ifndef PGC_JSONW_H
#define PGC_JSONW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef struct {
	char *buf;
	size_t len, cap;
	bool comma; /* the next key or value needs a separator */
} JsonW;

void jw_init(JsonW *w);
void jw_free(JsonW *w);
/* Empties w for the next text, keeping its buffer. */
static inline void jw_clear(JsonW *w)
{
	w->len = 0;
	w->comma = false;
}
/* The NUL-terminated text; w is empty afterwards. */
char *jw_take(JsonW *w);

void jw_begin_object(JsonW *w);
void jw_end_object(JsonW *w);
void jw_begin_array(JsonW *w);
void jw_end_array(JsonW *w);
void jw_key(JsonW *w, const char *key);
/* A key that needs no escaping, given with its length (see JW_KEY): no pass over its bytes. */
void jw_key_plain_grow(JsonW *w, const char *key, size_t len);
static inline void jw_key_plain(JsonW *w, const char *key, size_t len)
{
	if (w->len + len + 5 > w->cap) {
		jw_key_plain_grow(w, key, len); /* the rare case: the buffer grows first */
		return;
	}
	char *p = w->buf + w->len;
	if (w->comma)
		*p++ = ',';
	*p++ = '"';
	memcpy(p, key, len); /* inlined: len is a constant at every JW_KEY */
	p += len;
	*p++ = '"';
	*p++ = ':';
	*p = 0;
	w->len = (size_t)(p - w->buf);
	w->comma = false;
}
#define JW_KEY(w, lit) jw_key_plain((w), (lit), sizeof(lit) - 1)

void jw_string(JsonW *w, const char *s); /* NULL writes null */
/* Bytes as a string when they are valid UTF-8 (and not binary), else as {"hex": ...}. */
void jw_text(JsonW *w, const uint8_t *s, size_t n, bool binary);
/*
 * jw_text for a text that may be longer than cap (0: no cap). A longer one is written as
 * {"head": its first cap bytes (up to a whole UTF-8 character), "bytes": its length,
 * "sha256": of all of it} (sha256: that hex when the caller has it, else NULL).
 */
void jw_text_cut(JsonW *w, const uint8_t *s, size_t n, bool binary, size_t cap, const char *sha256);
void jw_int(JsonW *w, int64_t v);
/* thousandths / 1000 with exactly three decimals (durations in ms from microseconds). */
void jw_fixed3(JsonW *w, int64_t thousandths);
void jw_bool(JsonW *w, bool v);
void jw_null(JsonW *w);
/* A value that is already JSON text. */
void jw_raw(JsonW *w, const char *json, size_t n);

bool jw_valid_utf8(const uint8_t *s, size_t n);
/* True when every byte is printable ASCII other than '"' and '\\': a JSON string as it is. */
bool jw_plain_ascii(const uint8_t *s, size_t n);

#endif
