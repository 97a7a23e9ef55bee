/*
 * Masking methods as SQL: the expression that replaces a masked column inside the
 * statement. Every expression keeps the column's type (so text and binary results decode
 * in any driver) and keeps NULL as NULL. Values from the config reach the SQL hex-encoded,
 * never quoted, so no config value can change the statement around it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "mask/mask.h"

static const char *const method_names[] = {
	[MASK_REDACT] = "redact", [MASK_PARTIAL] = "partial", [MASK_HASH] = "hash",
	[MASK_NULL] = "null",     [MASK_EMAIL] = "email",     [MASK_FIXED] = "fixed",
};

bool mask_method_from_name(const char *name, MaskMethod *out)
{
	for (size_t i = 0; i < sizeof method_names / sizeof method_names[0]; i++)
		if (strcmp(name, method_names[i]) == 0) {
			*out = (MaskMethod)i;
			return true;
		}
	return false;
}

const char *mask_method_name(MaskMethod m) { return method_names[m]; }

char *mask__sql_text(const char *s)
{
	size_t n = strlen(s);
	char *h = xmalloc(2 * n + 1);
	util_hex_encode(s, n, h);
	char *out = xasprintf("convert_from(decode('%s', 'hex'), 'UTF8')", h);
	free(h);
	return out;
}

static bool starts(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* A fixed placeholder of the column's type, or NULL when the type has none. */
static const char *placeholder(const MaskColumn *col)
{
	switch (col->category) {
	case 'S': return "'" MASK_REDACTED "'";
	case 'N': return "'0'";
	case 'B': return "'false'";
	case 'I': return "'0.0.0.0'";
	case 'A': return "'{}'";
	case 'D':
		if (starts(col->type, "date") || starts(col->type, "timestamp"))
			return "'1970-01-01'";
		if (starts(col->type, "time"))
			return "'00:00:00'";
		if (starts(col->type, "interval"))
			return "'0'";
		return NULL;
	case 'U':
		if (strcmp(col->type, "uuid") == 0)
			return "'00000000-0000-0000-0000-000000000000'";
		if (strcmp(col->type, "json") == 0 || strcmp(col->type, "jsonb") == 0)
			return "'\"" MASK_REDACTED "\"'";
		return NULL;
	default: return NULL;
	}
}

/* HMAC-SHA-256 of the value's text under the configured key, in hex (64 digits). */
static char *hmac_hex(const MaskCatalog *c, const char *ref)
{
	char ipad[129], opad[129];
	util_hex_encode(c->hash_ipad, 64, ipad);
	util_hex_encode(c->hash_opad, 64, opad);
	return xasprintf("encode(sha256(decode('%s', 'hex') || sha256(decode('%s', 'hex') || convert_to(%s::text, 'UTF8'))),"
			 " 'hex')",
			 opad, ipad, ref);
}

/* A hash of the column's type: text, integers, uuid, json, dates; NULL where none fits. */
static char *hash_value(const MaskCatalog *c, const MaskColumn *col, const char *ref)
{
	char *h = hmac_hex(c, ref), *v = NULL;
	switch (col->category) {
	case 'S': v = xasprintf("'h:' || left(%s, 16)", h); break;
	case 'N':
		/* At most 9 digits: a hash must never look like a card number to the detectors. */
		if (strcmp(col->type, "smallint") == 0)
			v = xasprintf("('x' || left(%s, 3))::bit(12)::int", h);
		else
			v = xasprintf("('x' || left(%s, 7))::bit(28)::int", h);
		break;
	case 'B': v = xasprintf("(('x' || left(%s, 1))::bit(4)::int %% 2 = 1)", h); break;
	case 'D':
		if (starts(col->type, "date") || starts(col->type, "timestamp"))
			v = xasprintf("DATE '1970-01-01' + (('x' || left(%s, 7))::bit(28)::int %% 36500)", h);
		break;
	case 'U':
		if (strcmp(col->type, "uuid") == 0)
			v = xasprintf("left(%s, 32)", h);
		else if (strcmp(col->type, "json") == 0 || strcmp(col->type, "jsonb") == 0)
			v = xasprintf("to_json('h:' || left(%s, 16))::text", h);
		break;
	default: break;
	}
	free(h);
	return v;
}

/*
 * Masks the text of a value character by character: ASCII letters and digits and every
 * non-ASCII character become '*' (whatever the database's locale calls a letter; the
 * gateway's own masking in rowmask.c does the same).
 */
static char *stars(const char *text)
{
	return xasprintf("regexp_replace(%s, '[[:alnum:]]|[^\x01-\x7f]', '*', 'g')", text);
}

char *mask_sql_expr(const MaskCatalog *c, const MaskColumn *col, const char *ref)
{
	const MaskRule *r = c->rules[col->rule];
	char *value = NULL; /* an expression of any type that casts to the column's type */
	bool texty = col->category == 'S';
	MaskMethod m = r->method;
	if (m == MASK_HASH && !c->has_key)
		m = MASK_REDACT; /* config validation requires a key; never pass a value unmasked */
	switch (m) {
	case MASK_NULL: return xasprintf("CAST(NULL AS %s)", col->type);
	case MASK_FIXED: value = mask__sql_text(r->value ? r->value : ""); break;
	case MASK_HASH: value = hash_value(c, col, ref); break;
	case MASK_PARTIAL:
		if (texty) {
			char *t = xasprintf("%s::text", ref);
			int keep = r->keep_first + r->keep_last;
			char *all = stars(t);
			char *mid = xasprintf("substr(%s, %d, length(%s) - %d)", t, r->keep_first + 1, t, keep);
			char *mid_stars = stars(mid);
			value = xasprintf("CASE WHEN length(%s) <= %d THEN %s ELSE left(%s, %d) || %s || right(%s, %d) END", t,
					  keep, all, t, r->keep_first, mid_stars, t, r->keep_last);
			free(all);
			free(mid);
			free(mid_stars);
			free(t);
		}
		break;
	case MASK_EMAIL:
		if (texty) {
			char *t = xasprintf("%s::text", ref);
			char *all = stars(t);
			value = xasprintf("CASE WHEN strpos(%s, '@') > 1 THEN left(%s, 1) || '***' || substr(%s, strpos(%s, '@'))"
					  " ELSE %s END",
					  t, t, t, t, all);
			free(all);
			free(t);
		}
		break;
	case MASK_REDACT: break;
	}
	if (!value) {
		const char *p = placeholder(col);
		if (!p)
			return xasprintf("CAST(NULL AS %s)", col->type);
		value = xstrdup(p);
	}
	char *e = xasprintf("CASE WHEN %s IS NULL THEN NULL ELSE CAST(%s AS %s) END", ref, value, col->type);
	free(value);
	return e;
}
