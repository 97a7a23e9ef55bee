/* Masking: content detectors, method and detector names, SQL masking expressions, the catalog and the rewriter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mask/mask.h"

/* ---- helpers ---- */

/* mask_detect_scrub over a C string; the result NUL-terminated (caller frees), or NULL when clean. */
static char *scrub(unsigned bits, const char *in)
{
	size_t outlen = (size_t)-1;
	uint8_t *o = mask_detect_scrub(bits, (const uint8_t *)in, strlen(in), &outlen);
	if (!o)
		return NULL;
	assert_true(outlen != (size_t)-1);
	char *s = malloc(outlen + 1);
	assert_non_null(s);
	memcpy(s, o, outlen);
	s[outlen] = 0;
	free(o);
	return s;
}

/* Asserts that scrubbing in with bits gives exactly want. */
static void expect_scrub(unsigned bits, const char *in, const char *want)
{
	char *got = scrub(bits, in);
	if (!got)
		fail_msg("nothing detected in \"%s\", expected \"%s\"", in, want);
	if (strcmp(got, want) != 0) {
		char msg[512];
		snprintf(msg, sizeof msg, "\"%s\" was scrubbed to \"%s\", expected \"%s\"", in, got, want);
		free(got); /* freed before failing: the suite runs under LeakSanitizer */
		fail_msg("%s", msg);
	}
	free(got);
}

/* Asserts that nothing is detected in in with bits. */
static void expect_clean(unsigned bits, const char *in)
{
	char *got = scrub(bits, in);
	if (got) {
		char msg[512];
		snprintf(msg, sizeof msg, "\"%s\" was scrubbed to \"%s\"", in, got);
		free(got);
		fail_msg("%s", msg);
	}
}

static char *to_hex(const char *s)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = strlen(s);
	char *h = malloc(2 * n + 1);
	assert_non_null(h);
	for (size_t i = 0; i < n; i++) {
		h[2 * i] = hex[(uint8_t)s[i] >> 4];
		h[2 * i + 1] = hex[(uint8_t)s[i] & 15];
	}
	h[2 * n] = 0;
	return h;
}

static bool starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), k = strlen(suffix);
	return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int count_of(const char *s, const char *needle)
{
	int n = 0;
	for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
		n++;
	return n;
}

#define ALL_DETECTORS                                                                                            \
	(DETECT_CREDIT_CARD | DETECT_US_SSN | DETECT_EMAIL | DETECT_IBAN | DETECT_AWS_ACCESS_KEY | DETECT_JWT | \
	 DETECT_PRIVATE_KEY)

/* ---- 1. detectors ---- */

static void test_detect_credit_card(void **state)
{
	(void)state;
	const unsigned cc = DETECT_CREDIT_CARD;
	expect_scrub(cc, "card 4111111111111111 ok", "card [REDACTED] ok");
	expect_scrub(cc, "card 4111 1111 1111 1111 ok", "card [REDACTED] ok");
	expect_scrub(cc, "card 4111-1111-1111-1111 ok", "card [REDACTED] ok");
	expect_scrub(cc, "amex 378282246310005.", "amex [REDACTED].");
	expect_scrub(cc, "5555555555554444", "[REDACTED]");
	expect_scrub(cc, "(5555555555554444)", "([REDACTED])");
	/* Luhn-invalid */
	expect_clean(cc, "card 4111111111111112 ok");
	expect_clean(cc, "card 4111 1111 1111 1112 ok");
	/* 25 digits: some other number, even though it starts with a valid card */
	expect_clean(cc, "id 4111111111111111000000000 ok");
	/* glued to letters on either side */
	expect_clean(cc, "x4111111111111111");
	expect_clean(cc, "4111111111111111x");
	expect_clean(cc, "ab4111111111111111cd");
	/* too short */
	expect_clean(cc, "42");
}

/*
 * Digit groups run on into what follows (a CVV, an expiry, a second card): the card is
 * still found (match_card retries shorter runs of whole groups).
 */
static void test_detect_credit_card_followed_by_number(void **state)
{
	(void)state;
	const unsigned cc = DETECT_CREDIT_CARD;
	expect_scrub(cc, "cards 4111111111111111 5555555555554444", "cards [REDACTED] [REDACTED]");
	expect_scrub(cc, "4111111111111111 123", "[REDACTED] 123");
	expect_scrub(cc, "card 4111111111111111 12/25", "card [REDACTED] 12/25");
	expect_scrub(cc, "4111 1111 1111 1111 2024", "[REDACTED] 2024");
	expect_scrub(cc | DETECT_US_SSN, "4111111111111111 123-45-6789", "[REDACTED] [REDACTED]");
}

static void test_luhn_and_iban_checks(void **state)
{
	(void)state;
	assert_true(mask_luhn_ok("4111111111111111", 16));
	assert_true(mask_luhn_ok("378282246310005", 15));
	assert_true(mask_luhn_ok("5555555555554444", 16));
	assert_false(mask_luhn_ok("4111111111111112", 16));
	assert_false(mask_luhn_ok("", 0));

	assert_true(mask_iban_ok("GB82WEST12345698765432", 22));
	assert_true(mask_iban_ok("DE89370400440532013000", 22));
	assert_false(mask_iban_ok("GB82WEST12345698765433", 22));
	assert_false(mask_iban_ok("GB82WEST12345698765442", 22));
	assert_false(mask_iban_ok("DE89370400440532013001", 22));
	assert_false(mask_iban_ok("DE89370400440532113000", 22));
	assert_false(mask_iban_ok("DE88370400440532013000", 22));
	/* lower case, separators and out-of-range lengths are not IBANs */
	assert_false(mask_iban_ok("gb82west12345698765432", 22));
	assert_false(mask_iban_ok("GB82 WEST12345698765432", 23));
	assert_false(mask_iban_ok("GB82WEST1234", 12));
	assert_false(mask_iban_ok("GB82WEST12345698765432000000000000000", 37));
}

static void test_detect_us_ssn(void **state)
{
	(void)state;
	const unsigned ssn = DETECT_US_SSN;
	expect_scrub(ssn, "ssn 123-45-6789 ok", "ssn [REDACTED] ok");
	expect_scrub(ssn, "123-45-6789", "[REDACTED]");
	expect_clean(ssn, "000-12-3456");
	expect_clean(ssn, "666-12-3456");
	expect_clean(ssn, "900-12-3456");
	expect_clean(ssn, "999-12-3456");
	expect_clean(ssn, "123-00-4567");
	expect_clean(ssn, "123-45-0000");
	expect_clean(ssn, "ssn 123456789 ok");
	/* part of a longer dashed or alphanumeric run */
	expect_clean(ssn, "1-123-45-6789");
	expect_clean(ssn, "123-45-6789-1");
	expect_clean(ssn, "a123-45-6789");
}

static void test_detect_email(void **state)
{
	(void)state;
	const unsigned em = DETECT_EMAIL;
	expect_scrub(em, "mail j.doe+x@example.co.uk now", "mail [REDACTED] now");
	expect_scrub(em, "write to a@b.com.", "write to [REDACTED].");
	expect_scrub(em, "<a@b.com>", "<[REDACTED]>");
	expect_clean(em, "not@an");
	expect_clean(em, "a@b.c"); /* one-letter top-level domain */
	expect_clean(em, "a@b.c0m");
	expect_clean(em, "@example.com");
	expect_clean(em, "no address here");
}

static void test_detect_iban(void **state)
{
	(void)state;
	const unsigned ib = DETECT_IBAN;
	expect_scrub(ib, "iban GB82WEST12345698765432 ok", "iban [REDACTED] ok");
	expect_scrub(ib, "iban GB82 WEST 1234 5698 7654 32 ok", "iban [REDACTED] ok");
	expect_scrub(ib, "DE89370400440532013000", "[REDACTED]");
	expect_clean(ib, "iban GB82WEST12345698765433 ok");
	expect_clean(ib, "iban DE89370400440532013001 ok");
	expect_clean(ib, "xGB82WEST12345698765432");
}

static void test_detect_aws_key(void **state)
{
	(void)state;
	const unsigned aws = DETECT_AWS_ACCESS_KEY;
	expect_scrub(aws, "key AKIAIOSFODNN7EXAMPLE ok", "key [REDACTED] ok");
	expect_scrub(aws, "AKIAIOSFODNN7EXAMPLE", "[REDACTED]");
	expect_clean(aws, "key AKIAIOSFODNN7EXAMPL ok");  /* AKIA + 15 */
	expect_clean(aws, "key AKIAIOSFODNN7EXAMPL");     /* AKIA + 15 at the end */
	expect_clean(aws, "key AKIAIOSFODNN7EXAMPLEX ok"); /* AKIA + 17 */
	expect_clean(aws, "key AKIAiosfodnn7example ok"); /* lower case */
	expect_clean(aws, "key XKIAIOSFODNN7EXAMPLE ok");
}

static void test_detect_jwt(void **state)
{
	(void)state;
	const unsigned jwt = DETECT_JWT;
	expect_scrub(jwt,
		     "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
		     "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c end",
		     "Bearer [REDACTED] end");
	expect_scrub(jwt, "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.", "[REDACTED]");
	expect_clean(jwt, "eyJhbGciOiJIUzI1NiJ9 alone");
	expect_clean(jwt, "eyJhbGciOiJIUzI1NiJ9.notjson.sig");
}

static void test_detect_private_key(void **state)
{
	(void)state;
	const unsigned pk = DETECT_PRIVATE_KEY;
	expect_scrub(pk,
		     "key: -----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n"
		     "KUpRKfFLfRYC9AIKjbJTWit+CqvjWYzvQwECAwEAAQ==\n-----END RSA PRIVATE KEY-----\nafter",
		     "key: [REDACTED]\nafter");
	expect_scrub(pk, "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----", "[REDACTED]");
	/* No END line: everything to the end of the text. */
	expect_scrub(pk, "x -----BEGIN EC PRIVATE KEY-----\nMHcCAQEE", "x [REDACTED]");
	expect_clean(pk, "-----BEGIN PUBLIC KEY-----\nMFwwDQYJKoZIhvcNAQEBBQADSwAwSAJBAKj34GkxFhD9\n-----END PUBLIC KEY-----");
	expect_clean(pk, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
}

static void test_detect_only_requested_bits(void **state)
{
	(void)state;
	const char *ssn = "ssn 123-45-6789";
	expect_clean(DETECT_EMAIL, ssn);
	expect_clean(0, ssn);
	expect_clean(DETECT_CREDIT_CARD | DETECT_IBAN | DETECT_JWT, ssn);
	expect_scrub(DETECT_US_SSN, ssn, "ssn [REDACTED]");
	expect_clean(DETECT_US_SSN, "card 4111111111111111");
	expect_clean(DETECT_CREDIT_CARD, "mail a@b.com");
	expect_clean(DETECT_EMAIL, "key AKIAIOSFODNN7EXAMPLE");
	expect_clean(ALL_DETECTORS & ~DETECT_IBAN, "iban GB82WEST12345698765432");
}

static void test_detect_several_and_empty(void **state)
{
	(void)state;
	expect_scrub(ALL_DETECTORS,
		     "ssn 123-45-6789, mail a@b.com, card 4111 1111 1111 1111, key AKIAIOSFODNN7EXAMPLE; done",
		     "ssn [REDACTED], mail [REDACTED], card [REDACTED], key [REDACTED]; done");
	expect_scrub(DETECT_US_SSN, "123-45-6789 123-45-6789 123-45-6789", "[REDACTED] [REDACTED] [REDACTED]");
	expect_scrub(DETECT_EMAIL, "a@b.com,c@d.org", "[REDACTED],[REDACTED]");

	size_t outlen = 12345;
	assert_null(mask_detect_scrub(ALL_DETECTORS, (const uint8_t *)"", 0, &outlen));
	expect_clean(ALL_DETECTORS, "nothing sensitive in here, 12345, user@host");

	/* Only the n bytes given are looked at. */
	const char *s = "a@b.com 123-45-6789";
	assert_null(mask_detect_scrub(DETECT_US_SSN, (const uint8_t *)s, 8, &outlen));
	uint8_t *o = mask_detect_scrub(DETECT_EMAIL, (const uint8_t *)s, 7, &outlen);
	assert_non_null(o);
	assert_int_equal(outlen, strlen(MASK_REDACTED));
	assert_memory_equal(o, MASK_REDACTED, outlen);
	free(o);

	/* Embedded NUL bytes are passed through. */
	const uint8_t bin[] = {'x', 0, '1', '2', '3', '-', '4', '5', '-', '6', '7', '8', '9', 0, 'y'};
	o = mask_detect_scrub(DETECT_US_SSN, bin, sizeof bin, &outlen);
	assert_non_null(o);
	const uint8_t want[] = {'x', 0, '[', 'R', 'E', 'D', 'A', 'C', 'T', 'E', 'D', ']', 0, 'y'};
	assert_int_equal(outlen, sizeof want);
	assert_memory_equal(o, want, sizeof want);
	free(o);
}

/* ---- 2. names ---- */

static void test_method_names(void **state)
{
	(void)state;
	const MaskMethod all[] = {MASK_REDACT, MASK_PARTIAL, MASK_HASH, MASK_NULL, MASK_EMAIL, MASK_FIXED};
	const char *const names[] = {"redact", "partial", "hash", "null", "email", "fixed"};
	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
		assert_string_equal(mask_method_name(all[i]), names[i]);
		MaskMethod m = MASK_REDACT;
		assert_true(mask_method_from_name(names[i], &m));
		assert_int_equal(m, all[i]);
		assert_true(mask_method_from_name(mask_method_name(all[i]), &m));
		assert_int_equal(m, all[i]);
	}
	MaskMethod m = MASK_FIXED;
	assert_false(mask_method_from_name("scramble", &m));
	assert_false(mask_method_from_name("", &m));
	assert_false(mask_method_from_name("Redact", &m));
	assert_int_equal(m, MASK_FIXED); /* untouched on failure */
}

static void test_detector_names(void **state)
{
	(void)state;
	assert_int_equal(mask_detector_from_name("credit_card"), DETECT_CREDIT_CARD);
	assert_int_equal(mask_detector_from_name("us_ssn"), DETECT_US_SSN);
	assert_int_equal(mask_detector_from_name("email"), DETECT_EMAIL);
	assert_int_equal(mask_detector_from_name("iban"), DETECT_IBAN);
	assert_int_equal(mask_detector_from_name("aws_access_key"), DETECT_AWS_ACCESS_KEY);
	assert_int_equal(mask_detector_from_name("jwt"), DETECT_JWT);
	assert_int_equal(mask_detector_from_name("private_key"), DETECT_PRIVATE_KEY);
	assert_int_equal(mask_detector_from_name("ssn"), 0);
	assert_int_equal(mask_detector_from_name(""), 0);
	assert_int_equal(mask_detector_from_name("EMAIL"), 0);
}

/* ---- 3. SQL masking expressions ---- */

static const uint8_t HASH_KEY[] = "0123456789abcdef0123456789abcdef";
static const char FIXED_VALUE[] = "O'Brien'; DROP TABLE x; --";

/* Rules by index: 0 redact, 1 partial(2, 4), 2 hash, 3 null, 4 email, 5 fixed. */
static MaskRule expr_rules[6];
static const MaskRule *expr_rule_ptrs[6];

static void init_expr_rules(void)
{
	memset(expr_rules, 0, sizeof expr_rules);
	const MaskMethod all[] = {MASK_REDACT, MASK_PARTIAL, MASK_HASH, MASK_NULL, MASK_EMAIL, MASK_FIXED};
	for (int i = 0; i < 6; i++) {
		expr_rules[i].method = all[i];
		expr_rule_ptrs[i] = &expr_rules[i];
	}
	expr_rules[1].keep_first = 2;
	expr_rules[1].keep_last = 4;
	expr_rules[5].value = (char *)FIXED_VALUE;
}

static void check_expr_shape(const char *e, const MaskColumn *col, const MaskRule *r, const char *ref)
{
	if (r->method == MASK_NULL) {
		char want[128];
		snprintf(want, sizeof want, "CAST(NULL AS %s)", col->type);
		assert_string_equal(e, want);
		return;
	}
	/* A type without any placeholder: NULL is the only value that fits. */
	if (starts_with(e, "CAST(NULL AS "))
		return;
	char head[128], tail[128];
	snprintf(head, sizeof head, "CASE WHEN %s IS NULL THEN NULL ELSE CAST(", ref);
	snprintf(tail, sizeof tail, " AS %s) END", col->type);
	if (!starts_with(e, "CASE WHEN") || !strstr(e, "IS NULL THEN NULL") || !starts_with(e, head) || !ends_with(e, tail))
		fail_msg("method %s on %s: unexpected shape: %s", mask_method_name(r->method), col->type, e);
}

static void test_sql_expr_every_method_and_type(void **state)
{
	(void)state;
	init_expr_rules();
	MaskColumn cols[] = {
		{"c_text", "text", 'S', 0, 1},
		{"c_varchar", "character varying(40)", 'S', 0, 1},
		{"c_int", "integer", 'N', 0, 1},
		{"c_small", "smallint", 'N', 0, 1},
		{"c_big", "bigint", 'N', 0, 1},
		{"c_num", "numeric(10,2)", 'N', 0, 1},
		{"c_bool", "boolean", 'B', 0, 1},
		{"c_inet", "inet", 'I', 0, 1},
		{"c_arr", "text[]", 'A', 0, 1},
		{"c_date", "date", 'D', 0, 1},
		{"c_ts", "timestamp with time zone", 'D', 0, 1},
		{"c_time", "time without time zone", 'D', 0, 1},
		{"c_interval", "interval", 'D', 0, 1},
		{"c_uuid", "uuid", 'U', 0, 1},
		{"c_json", "jsonb", 'U', 0, 1},
		{"c_bytea", "bytea", 'U', 0, 1},
	};
	for (int withkey = 0; withkey < 2; withkey++) {
		MaskCatalog *c = mask_catalog_new(expr_rule_ptrs, 6, withkey ? HASH_KEY : NULL, withkey ? 32 : 0);
		assert_non_null(c);
		assert_int_equal(c->has_key, withkey != 0);
		for (int r = 0; r < 6; r++) {
			for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++) {
				cols[i].rule = r;
				char ref[64];
				snprintf(ref, sizeof ref, "\"%s\"", cols[i].name);
				char *e = mask_sql_expr(c, &cols[i], ref);
				assert_non_null(e);
				check_expr_shape(e, &cols[i], &expr_rules[r], ref);
				/* The fixed value never reaches the SQL as text. */
				assert_null(strstr(e, "DROP"));
				assert_null(strstr(e, "O'Brien"));
				/* Without a key, hash falls back to a placeholder: no hash of an empty key. */
				if (!withkey)
					assert_null(strstr(e, "sha256("));
				free(e);
			}
		}
		mask_catalog_free(c);
	}
}

static void test_sql_expr_specifics(void **state)
{
	(void)state;
	init_expr_rules();
	MaskCatalog *c = mask_catalog_new(expr_rule_ptrs, 6, HASH_KEY, 32);
	char *e;

	/* null */
	MaskColumn col = {"v", "text", 'S', 3, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CAST(NULL AS text)");
	free(e);

	/* redact: the placeholder of the type */
	col = (MaskColumn){"v", "text", 'S', 0, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('[REDACTED]' AS text) END");
	free(e);
	col = (MaskColumn){"v", "integer", 'N', 0, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('0' AS integer) END");
	free(e);
	col = (MaskColumn){"v", "bytea", 'U', 0, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CAST(NULL AS bytea)");
	free(e);

	/* fixed: hex-encoded */
	col = (MaskColumn){"v", "text", 'S', 5, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	char *hex = to_hex(FIXED_VALUE);
	char want[512];
	snprintf(want, sizeof want,
		 "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST(convert_from(decode('%s', 'hex'), 'UTF8') AS text) END", hex);
	assert_string_equal(e, want);
	assert_null(strchr(hex, '\''));
	assert_null(strstr(e, "'; DROP"));
	assert_null(strstr(e, "--"));
	free(hex);
	free(e);

	/* hash with a key */
	col = (MaskColumn){"v", "text", 'S', 2, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_non_null(strstr(e, "sha256("));
	assert_non_null(strstr(e, "'h:' || left("));
	assert_true(ends_with(e, " AS text) END"));
	free(e);
	col = (MaskColumn){"v", "uuid", 'U', 2, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_true(starts_with(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST("));
	assert_non_null(strstr(e, "sha256("));
	assert_non_null(strstr(e, ", 32)"));
	assert_true(ends_with(e, " AS uuid) END"));
	free(e);
	col = (MaskColumn){"v", "integer", 'N', 2, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_non_null(strstr(e, "sha256("));
	assert_non_null(strstr(e, "::bit(28)::int"));
	free(e);
	/* A different key gives a different expression (the pads are in it). */
	{
		MaskCatalog *c2 = mask_catalog_new(expr_rule_ptrs, 6, (const uint8_t *)"another key", 11);
		col = (MaskColumn){"v", "text", 'S', 2, 1};
		char *e1 = mask_sql_expr(c, &col, "\"v\"");
		char *e2 = mask_sql_expr(c2, &col, "\"v\"");
		assert_string_not_equal(e1, e2);
		free(e1);
		free(e2);
		mask_catalog_free(c2);
	}
	/* hash without a key: redacted, never the value */
	{
		MaskCatalog *nokey = mask_catalog_new(expr_rule_ptrs, 6, NULL, 0);
		col = (MaskColumn){"v", "text", 'S', 2, 1};
		e = mask_sql_expr(nokey, &col, "\"v\"");
		assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('[REDACTED]' AS text) END");
		free(e);
		mask_catalog_free(nokey);
	}

	/* partial keeps the first and last characters */
	col = (MaskColumn){"v", "text", 'S', 1, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_non_null(strstr(e, "right(\"v\"::text, 4)"));
	assert_non_null(strstr(e, "left(\"v\"::text, 2)"));
	assert_non_null(strstr(e, "length(\"v\"::text) <= 6"));
	assert_non_null(strstr(e, "regexp_replace("));
	free(e);
	/* partial on a number: the placeholder '0' */
	col = (MaskColumn){"v", "integer", 'N', 1, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('0' AS integer) END");
	free(e);
	col = (MaskColumn){"v", "numeric(10,2)", 'N', 1, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('0' AS numeric(10,2)) END");
	free(e);

	/* email keeps the domain */
	col = (MaskColumn){"v", "text", 'S', 4, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_non_null(strstr(e, "strpos(\"v\"::text, '@')"));
	assert_non_null(strstr(e, "'***'"));
	free(e);
	col = (MaskColumn){"v", "inet", 'I', 4, 1};
	e = mask_sql_expr(c, &col, "\"v\"");
	assert_string_equal(e, "CASE WHEN \"v\" IS NULL THEN NULL ELSE CAST('0.0.0.0' AS inet) END");
	free(e);

	mask_catalog_free(c);
}

/* ---- 4. the catalog ---- */

static void test_catalog_sql(void **state)
{
	(void)state;
	char *cols[] = {"public.customers.ssn", "*.email"};
	char *types[] = {"inet"};
	MaskRule by_column = {.columns = cols, .ncolumns = 2, .method = MASK_REDACT};
	MaskRule by_type = {.types = types, .ntypes = 1, .method = MASK_NULL};
	MaskRule detect_only = {.detect = DETECT_EMAIL, .method = MASK_REDACT};
	const MaskRule *rules[] = {&by_column, &by_type, &detect_only};

	char *sql = mask_catalog_sql(rules, 3);
	assert_non_null(sql);
	assert_null(strstr(sql, "customers"));
	assert_null(strstr(sql, "email"));
	assert_null(strstr(sql, "'inet'"));
	assert_non_null(strstr(sql, "ESCAPE '!'"));
	assert_int_equal(count_of(sql, "LIKE convert_from(decode('"), 2);
	/* the patterns, as LIKE patterns, hex-encoded */
	char *h1 = to_hex("public.customers.ssn"), *h2 = to_hex("%.email"), *h3 = to_hex("inet");
	assert_non_null(strstr(sql, h1));
	assert_non_null(strstr(sql, h2));
	assert_non_null(strstr(sql, h3));
	free(h1);
	free(h2);
	free(h3);
	/* rule numbers: the detect-only rule has none */
	assert_non_null(strstr(sql, "THEN 0"));
	assert_non_null(strstr(sql, "THEN 1"));
	assert_null(strstr(sql, "THEN 2"));
	free(sql);

	/* LIKE wildcards of a pattern are escaped */
	char *wild[] = {"public.a_b.c%d!e"};
	MaskRule w = {.columns = wild, .ncolumns = 1, .method = MASK_REDACT};
	const MaskRule *wrules[] = {&w};
	sql = mask_catalog_sql(wrules, 1);
	char *hw = to_hex("public.a!_b.c!%d!!e");
	assert_non_null(strstr(sql, hw));
	free(hw);
	free(sql);

	/* Only detect rules: no column is masked. */
	const MaskRule *donly[] = {&detect_only};
	sql = mask_catalog_sql(donly, 1);
	assert_non_null(strstr(sql, "NULL::int"));
	free(sql);
}

static bool add_row(MaskCatalog *c, const char *a, const char *b, const char *rel, const char *attnum,
		    const char *col, const char *type, const char *cat, const char *rule, const char *derived)
{
	/* a relation's oid, made up from its name (NULL for function rows) */
	char oid[16];
	unsigned h = 16384;
	for (const char *p = rel ? rel : ""; *p; p++)
		h = h * 31 + (unsigned char)*p;
	snprintf(oid, sizeof oid, "%u", h % 1000000 + 16384);
	const char *v[] = {a, b, rel, attnum, col, type, cat, rule, derived, strcmp(a ? a : "", "c") == 0 ? oid : NULL};
	return mask_catalog_add_row(c, v, MASK_CATALOG_COLUMNS);
}

static void test_catalog_rows(void **state)
{
	(void)state;
	MaskRule partial = {.method = MASK_PARTIAL, .keep_last = 4};
	const MaskRule *rules[] = {&partial};
	MaskCatalog *c = mask_catalog_new(rules, 1, NULL, 0);
	assert_non_null(c);
	assert_int_equal(c->nrules, 1);
	assert_false(c->has_key);

	assert_true(add_row(c, "c", "public", "customers", "00001", "id", "integer", "N", "-1", "false"));
	assert_true(add_row(c, "c", "public", "customers", "00002", "ssn", "text", "S", "0", "false"));
	assert_true(add_row(c, "c", "public", "customer_view", "00001", "ssn", "text", "S", "-1", "true"));
	assert_true(add_row(c, "f", NULL, "myfunc", NULL, NULL, NULL, NULL, NULL, NULL));
	assert_true(add_row(c, "f", NULL, "otherfunc", NULL, NULL, NULL, NULL, NULL, NULL));

	const MaskRelation *r = mask_catalog_find(c, "public", "customers");
	assert_non_null(r);
	assert_string_equal(r->schema, "public");
	assert_string_equal(r->name, "customers");
	assert_false(r->derived);
	assert_int_equal(r->ncols, 2);
	assert_string_equal(r->cols[0].name, "id");
	assert_string_equal(r->cols[0].type, "integer");
	assert_int_equal(r->cols[0].category, 'N');
	assert_int_equal(r->cols[0].rule, -1);
	assert_string_equal(r->cols[1].name, "ssn");
	assert_string_equal(r->cols[1].type, "text");
	assert_int_equal(r->cols[1].category, 'S');
	assert_int_equal(r->cols[1].rule, 0);

	const MaskRelation *v = mask_catalog_find(c, "public", "customer_view");
	assert_non_null(v);
	assert_true(v->derived);
	assert_int_equal(v->ncols, 1);

	assert_null(mask_catalog_find(c, "other", "customers"));
	assert_null(mask_catalog_find(c, "public", "orders"));
	assert_true(mask_catalog_has_function(c, "myfunc"));
	assert_true(mask_catalog_has_function(c, "otherfunc"));
	assert_false(mask_catalog_has_function(c, "myfun"));
	assert_false(mask_catalog_has_function(c, "upper"));
	assert_int_equal(c->nfunctions, 2);

	/* malformed rows */
	const char *short_row[] = {"c", "public", "customers", "00003", "email", "text", "S", "0"};
	assert_false(mask_catalog_add_row(c, short_row, 8));
	const char *long_row[] = {"c", "public", "customers", "00003", "email", "text", "S", "0", "false", "16384", "x"};
	assert_false(mask_catalog_add_row(c, long_row, 11));
	const char *bad_oid[] = {"c", "public", "customers", "00003", "email", "text", "S", "0", "false", "x"};
	assert_false(mask_catalog_add_row(c, bad_oid, 10));
	const char *bad_attnum[] = {"c", "public", "customers", "0", "email", "text", "S", "0", "false", "16384"};
	assert_false(mask_catalog_add_row(c, bad_attnum, 10));
	assert_false(add_row(c, "c", "public", "customers", "00003", "email", "text", "S", "1", "false"));
	assert_false(add_row(c, "c", "public", "customers", "00003", "email", "text", "S", "-2", "false"));
	assert_false(add_row(c, "x", "public", "customers", "00003", "email", "text", "S", "0", "false"));
	assert_false(add_row(c, NULL, "public", "customers", "00003", "email", "text", "S", "0", "false"));
	assert_false(add_row(c, "c", NULL, "customers", "00003", "email", "text", "S", "0", "false"));
	assert_false(add_row(c, "c", "public", NULL, "00003", "email", "text", "S", "0", "false"));
	assert_false(add_row(c, "c", "public", "customers", "00003", NULL, "text", "S", "0", "false"));
	assert_false(add_row(c, "c", "public", "customers", "00003", "email", NULL, "S", "0", "false"));
	assert_false(add_row(c, "f", NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL));
	/* The good rows are unchanged by the bad ones. */
	r = mask_catalog_find(c, "public", "customers");
	assert_non_null(r);
	assert_int_equal(r->ncols, 2);

	mask_catalog_free(c);
	mask_catalog_free(NULL);
}

/* A rejected row (rule index out of range) adds no relation. */
static void test_catalog_rejected_row_adds_nothing(void **state)
{
	(void)state;
	MaskRule partial = {.method = MASK_PARTIAL, .keep_last = 4};
	const MaskRule *rules[] = {&partial};
	MaskCatalog *c = mask_catalog_new(rules, 1, NULL, 0);
	assert_true(add_row(c, "c", "public", "customers", "00001", "ssn", "text", "S", "0", "false"));
	assert_false(add_row(c, "c", "public", "orders", "00001", "card", "text", "S", "7", "false"));
	int nrels = c->nrels;
	const MaskRelation *r = mask_catalog_find(c, "public", "orders");
	mask_catalog_free(c);
	assert_int_equal(nrels, 1);
	assert_null(r);
}

/* Many relations and functions: the arrays grow. */
static void test_catalog_grows(void **state)
{
	(void)state;
	MaskRule redact = {.method = MASK_REDACT};
	const MaskRule *rules[] = {&redact};
	MaskCatalog *c = mask_catalog_new(rules, 1, (const uint8_t *)"k", 1);
	assert_true(c->has_key);
	char rel[32], col[32], fn[32];
	for (int i = 0; i < 40; i++) {
		snprintf(rel, sizeof rel, "t%d", i);
		for (int k = 0; k < 20; k++) {
			snprintf(col, sizeof col, "c%d", k);
			assert_true(add_row(c, "c", "s", rel, "00001", col, "text", "S", k % 2 ? "0" : "-1", "false"));
		}
	}
	for (int i = 0; i < 130; i++) {
		snprintf(fn, sizeof fn, "f%d", i);
		assert_true(add_row(c, "f", NULL, fn, NULL, NULL, NULL, NULL, NULL, NULL));
	}
	assert_int_equal(c->nrels, 40);
	const MaskRelation *r = mask_catalog_find(c, "s", "t39");
	assert_non_null(r);
	assert_int_equal(r->ncols, 20);
	assert_string_equal(r->cols[19].name, "c19");
	assert_int_equal(r->cols[19].rule, 0);
	assert_true(mask_catalog_has_function(c, "f129"));
	assert_false(mask_catalog_has_function(c, "f130"));
	mask_catalog_free(c);
}

/* ---- 5. rewriting ---- */

typedef struct {
	MaskRule rules[2];
	const MaskRule *ptrs[2];
	MaskCatalog *c;
} RwFixture;

static int rw_setup(void **state)
{
	RwFixture *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	f->rules[0] = (MaskRule){.method = MASK_PARTIAL, .keep_last = 4};
	f->rules[1] = (MaskRule){.method = MASK_EMAIL};
	f->ptrs[0] = &f->rules[0];
	f->ptrs[1] = &f->rules[1];
	f->c = mask_catalog_new(f->ptrs, 2, HASH_KEY, 32);
	bool ok = add_row(f->c, "c", "public", "customers", "00001", "id", "integer", "N", "-1", "false") &&
		  add_row(f->c, "c", "public", "customers", "00002", "name", "text", "S", "-1", "false") &&
		  add_row(f->c, "c", "public", "customers", "00003", "ssn", "text", "S", "0", "false") &&
		  add_row(f->c, "c", "public", "customers", "00004", "email", "text", "S", "1", "false") &&
		  add_row(f->c, "c", "public", "customer_names", "00001", "name", "text", "S", "-1", "true") &&
		  add_row(f->c, "f", NULL, "leak_fn", NULL, NULL, NULL, NULL, NULL, NULL);
	*state = f;
	return ok ? 0 : -1;
}

static int rw_teardown(void **state)
{
	RwFixture *f = *state;
	mask_catalog_free(f->c);
	free(f);
	return 0;
}

/* The masking subquery the rewriter should put in place of public.customers, in buf. */
static const char *expected_subquery(const MaskCatalog *c, char *buf, size_t n)
{
	const MaskRelation *r = mask_catalog_find(c, "public", "customers");
	assert_non_null(r);
	char *ssn = mask_sql_expr(c, &r->cols[2], "\"ssn\"");
	char *email = mask_sql_expr(c, &r->cols[3], "\"email\"");
	int len = snprintf(buf, n, "(SELECT \"id\", \"name\", %s AS \"ssn\", %s AS \"email\" FROM \"public\".\"customers\")",
			   ssn, email);
	free(ssn);
	free(email);
	assert_true(len > 0 && (size_t)len < n);
	return buf;
}

/* Runs the rewriter; out must be NULL unless DONE, reason non-empty iff REFUSE. Returns out (caller frees). */
static char *rewrite(const MaskCatalog *c, bool block, const char *sql, RewriteResult want)
{
	char *out = (char *)"sentinel";
	char reason[256];
	memset(reason, 'x', sizeof reason);
	RewriteOptions o = {.predicate_block = block};
	RewriteResult got = mask_rewrite(c, &o, sql, &out, reason, sizeof reason);
	if (got != want) {
		char msg[600];
		snprintf(msg, sizeof msg, "%s (block=%d): got %d, want %d; reason \"%.200s\"", sql, block, got, want,
			 got == REWRITE_REFUSE ? reason : "");
		free(got == REWRITE_DONE ? out : NULL);
		fail_msg("%s", msg);
	}
	assert_non_null(memchr(reason, 0, sizeof reason));
	if (want == REWRITE_DONE) {
		assert_non_null(out);
		assert_string_equal(reason, "");
	} else {
		assert_null(out);
	}
	if (want == REWRITE_REFUSE)
		assert_true(strlen(reason) > 0);
	if (want == REWRITE_PASS)
		assert_string_equal(reason, "");
	return out;
}

/* A rewrite that must be DONE, copied into buf (so no failing assertion leaks it). */
static const char *rewrite_done(const MaskCatalog *c, bool block, const char *sql, char *buf, size_t n)
{
	char *out = rewrite(c, block, sql, REWRITE_DONE);
	size_t len = strlen(out);
	if (len >= n) {
		free(out);
		fail_msg("rewrite of %s is %zu bytes, more than the test expects", sql, len);
	}
	memcpy(buf, out, len + 1);
	free(out);
	return buf;
}

static void expect_rw(const MaskCatalog *c, bool block, const char *sql, RewriteResult want)
{
	char *out = rewrite(c, block, sql, want);
	free(out);
}

static void test_rewrite_pass(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		expect_rw(c, block, "SELECT 1", REWRITE_PASS);
		expect_rw(c, block, "SELECT * FROM orders", REWRITE_PASS);
		expect_rw(c, block, "SELECT * FROM other.customers", REWRITE_PASS);
		expect_rw(c, block, "SELECT upper('ssn')", REWRITE_PASS);
		/* a syntax error: the server rejects it without reading anything */
		expect_rw(c, block, "SELEC ssn FROM customers", REWRITE_PASS);
		expect_rw(c, block, "", REWRITE_PASS);
	}
}

static void test_rewrite_select(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	char subbuf[4096];
	const char *sub = expected_subquery(c, subbuf, sizeof subbuf);
	char want[8192];

	rewrite_done(c, false, "SELECT ssn FROM customers", got, sizeof got);
	assert_non_null(strstr(got, "(SELECT \"id\""));
	assert_non_null(strstr(got, "AS \"customers\""));
	assert_true(starts_with(got, "SELECT ssn FROM (SELECT \"id\""));
	assert_true(ends_with(got, " AS \"customers\""));
	snprintf(want, sizeof want, "SELECT ssn FROM %s AS \"customers\"", sub);
	assert_string_equal(got, want);
	assert_non_null(strstr(got, "right(\"ssn\"::text, 4)"));

	rewrite_done(c, false, "SELECT ssn FROM customers WHERE id > 1 ORDER BY id", got, sizeof got);
	snprintf(want, sizeof want, "SELECT ssn FROM %s AS \"customers\" WHERE id > 1 ORDER BY id", sub);
	assert_string_equal(got, want);

	rewrite_done(c, true, "SELECT upper(c.ssn) FROM public.customers c WHERE c.id = 1", got, sizeof got);
	snprintf(want, sizeof want, "SELECT upper(c.ssn) FROM %s c WHERE c.id = 1", sub);
	assert_string_equal(got, want);
	assert_true(ends_with(got, " c WHERE c.id = 1"));

	/* quoted, spaced and upper-case names */
	rewrite_done(c, false, "SELECT * FROM \"public\" . \"customers\" AS x", got, sizeof got);
	snprintf(want, sizeof want, "SELECT * FROM %s AS x", sub);
	assert_string_equal(got, want);
	rewrite_done(c, false, "SELECT * FROM CUSTOMERS;", got, sizeof got);
	snprintf(want, sizeof want, "SELECT * FROM %s AS \"customers\";", sub);
	assert_string_equal(got, want);

	/* subqueries and set operations */
	rewrite_done(c, false, "SELECT x.n FROM (SELECT name AS n FROM customers) x UNION SELECT 'a'", got, sizeof got);
	assert_int_equal(count_of(got, "FROM \"public\".\"customers\")"), 1);
}

static void test_rewrite_two_references(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	char subbuf[4096];
	const char *sub = expected_subquery(c, subbuf, sizeof subbuf);
	char want[16384];
	for (int block = 0; block < 2; block++) {
		rewrite_done(c, block, "SELECT * FROM customers a JOIN customers b ON a.id = b.id", got, sizeof got);
		assert_int_equal(count_of(got, "FROM \"public\".\"customers\")"), 2);
		snprintf(want, sizeof want, "SELECT * FROM %s a JOIN %s b ON a.id = b.id", sub, sub);
		assert_string_equal(got, want);
	}
	rewrite_done(c, false, "SELECT * FROM customers, public.customers c2 WHERE customers.id = c2.id", got,
		     sizeof got);
	snprintf(want, sizeof want, "SELECT * FROM %s AS \"customers\", %s c2 WHERE customers.id = c2.id", sub, sub);
	assert_string_equal(got, want);
}

static void test_rewrite_predicates(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	expect_rw(c, true, "SELECT id FROM customers WHERE ssn LIKE '1%'", REWRITE_REFUSE);
	expect_rw(c, false, "SELECT id FROM customers WHERE ssn LIKE '1%'", REWRITE_DONE);
	expect_rw(c, true, "SELECT id FROM customers ORDER BY email", REWRITE_REFUSE);
	expect_rw(c, false, "SELECT id FROM customers ORDER BY email", REWRITE_DONE);
	expect_rw(c, true, "SELECT count(*) FROM customers GROUP BY ssn", REWRITE_REFUSE);
	expect_rw(c, true, "SELECT * FROM customers a JOIN customers b ON a.ssn = b.ssn", REWRITE_REFUSE);
	expect_rw(c, true, "SELECT id FROM customers WHERE name = 'x' ORDER BY id", REWRITE_DONE);
}

static void test_rewrite_refusals(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		/* a CTE named like a masked table */
		expect_rw(c, block, "WITH customers AS (SELECT 1) SELECT * FROM customers", REWRITE_REFUSE);
		/* functions whose body is unknown or that run SQL given as text */
		expect_rw(c, block, "SELECT leak_fn()", REWRITE_REFUSE);
		expect_rw(c, block, "SELECT myschema.anything()", REWRITE_REFUSE);
		expect_rw(c, block, "SELECT query_to_xml('select ssn from customers', true, true, '')", REWRITE_REFUSE);
		/* statistics views */
		expect_rw(c, block, "SELECT * FROM pg_stats", REWRITE_REFUSE);
		expect_rw(c, block, "SELECT * FROM pg_catalog.pg_stats", REWRITE_REFUSE);
		expect_rw(c, block, "SELECT * FROM pg_statistic", REWRITE_REFUSE);
		/* code run by the server */
		expect_rw(c, block, "DO $$BEGIN END$$", REWRITE_REFUSE);
		expect_rw(c, block, "EXPLAIN SELECT * FROM customers", REWRITE_REFUSE);
		expect_rw(c, block, "SELECT * FROM ONLY customers", REWRITE_REFUSE);
		/* a view over masked columns */
		expect_rw(c, block, "SELECT * FROM customer_names", REWRITE_REFUSE);
		/* a database-qualified name */
		expect_rw(c, block, "SELECT * FROM db.public.customers", REWRITE_REFUSE);
	}
	/* EXPLAIN of something else is fine. */
	expect_rw(c, false, "EXPLAIN SELECT * FROM orders", REWRITE_PASS);
}

/*
 * DML targets and COPY: pg_query writes the "relation" field of InsertStmt, UpdateStmt,
 * DeleteStmt, MergeStmt and CopyStmt as the bare RangeVar body, not wrapped as
 * {"RangeVar": {...}}; these tests catch a rewriter that only looks for the wrapped form
 * (everything here would then come back REWRITE_PASS, COPY customers TO STDOUT unmasked).
 */

/* Statements that write a masked relation without reading masked values: passed as they are. */
static void test_rewrite_dml_pass(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	for (int block = 0; block < 2; block++) {
		expect_rw(c, block, "UPDATE customers SET name = 'x' WHERE id = 1", REWRITE_PASS);
		expect_rw(c, block, "INSERT INTO customers (id) VALUES (1) RETURNING id", REWRITE_PASS);
		expect_rw(c, block, "INSERT INTO customers (id, ssn) VALUES (1, 'x')", REWRITE_PASS);
		expect_rw(c, block, "DELETE FROM customers WHERE id = 1", REWRITE_PASS);
		expect_rw(c, block, "TRUNCATE customers", REWRITE_PASS);
	}
	/* The target is not rewritten: a WHERE on its masked columns would be an oracle in either mode. */
	expect_rw(c, false, "DELETE FROM customers WHERE ssn = '1'", REWRITE_REFUSE);

	/* A masked relation read in the statement is rewritten there. */
	rewrite_done(c, false, "INSERT INTO orders SELECT id, ssn FROM customers", got, sizeof got);
	assert_true(starts_with(got, "INSERT INTO orders SELECT id, ssn FROM (SELECT \"id\""));
	assert_true(ends_with(got, " AS \"customers\""));
}

static void test_rewrite_update_copying_masked(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		expect_rw(c, block, "UPDATE customers SET name = ssn", REWRITE_REFUSE);
		expect_rw(c, block, "UPDATE customers x SET name = x.email WHERE id = 1", REWRITE_REFUSE);
	}
}

static void test_rewrite_returning_masked(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		expect_rw(c, block, "INSERT INTO customers (id) VALUES (1) RETURNING ssn", REWRITE_REFUSE);
		expect_rw(c, block, "INSERT INTO customers (id) VALUES (1) RETURNING *", REWRITE_REFUSE);
		expect_rw(c, block, "DELETE FROM customers WHERE id = 1 RETURNING customers", REWRITE_REFUSE);
		expect_rw(c, block, "UPDATE customers SET name = 'x' RETURNING upper(email)", REWRITE_REFUSE);
	}
}

static void test_rewrite_dml_predicate_block(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	expect_rw(c, true, "DELETE FROM customers WHERE ssn = '1'", REWRITE_REFUSE);
	expect_rw(c, true, "UPDATE customers SET name = 'x' WHERE email LIKE '%@x.com'", REWRITE_REFUSE);
}

static void test_rewrite_dml_unsupported(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		expect_rw(c, block, "MERGE INTO customers t USING orders o ON t.id = o.id WHEN MATCHED THEN DELETE",
			  REWRITE_REFUSE);
		expect_rw(c, block, "INSERT INTO customers (id) VALUES (1) ON CONFLICT DO NOTHING", REWRITE_REFUSE);
		expect_rw(c, block, "UPDATE customer_names SET name = 'x'", REWRITE_REFUSE);
	}
}

static void test_rewrite_copy_table(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	char subbuf[4096];
	const char *sub = expected_subquery(c, subbuf, sizeof subbuf);
	char want[8192];
	snprintf(want, sizeof want, "COPY (SELECT * FROM %s AS \"customers\") TO STDOUT", sub);
	rewrite_done(c, false, "COPY customers TO STDOUT", got, sizeof got);
	assert_true(starts_with(got, "COPY (SELECT * FROM (SELECT"));
	assert_string_equal(got, want);
}

static void test_rewrite_copy_columns(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	char subbuf[4096];
	const char *sub = expected_subquery(c, subbuf, sizeof subbuf);
	char want[8192];
	/* the column list is written anew from the parsed names, quoted */
	snprintf(want, sizeof want, "COPY (SELECT \"id\", \"ssn\" FROM %s AS \"customers\") TO STDOUT WITH (FORMAT csv)",
		 sub);
	rewrite_done(c, false, "COPY customers (id, ssn) TO STDOUT WITH (FORMAT csv)", got, sizeof got);
	assert_string_equal(got, want);
	rewrite_done(c, false, "COPY customers (\"id\" /* ) */, SSN) TO STDOUT WITH (FORMAT csv)", got, sizeof got);
	assert_string_equal(got, want);
}

static void test_rewrite_copy_binary(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	expect_rw(c, false, "COPY customers TO STDOUT WITH (FORMAT binary)", REWRITE_REFUSE);
	expect_rw(c, false, "COPY customers TO STDOUT (FORMAT 'binary')", REWRITE_REFUSE);
	expect_rw(c, false, "COPY customer_names TO STDOUT", REWRITE_REFUSE);
}

static void test_rewrite_copy_pass(void **state)
{
	const MaskCatalog *c = ((RwFixture *)*state)->c;
	char got[16384];
	expect_rw(c, false, "COPY customers FROM STDIN", REWRITE_PASS);
	expect_rw(c, false, "COPY customers (id, ssn) FROM STDIN WITH (FORMAT binary)", REWRITE_PASS);
	expect_rw(c, false, "COPY orders TO STDOUT", REWRITE_PASS);

	char subbuf[4096];
	const char *sub = expected_subquery(c, subbuf, sizeof subbuf);
	char want[8192];
	snprintf(want, sizeof want, "COPY (SELECT ssn FROM %s AS \"customers\") TO STDOUT", sub);
	rewrite_done(c, false, "COPY (SELECT ssn FROM customers) TO STDOUT", got, sizeof got);
	assert_string_equal(got, want);
}


/* ---- 6. results masked in the gateway (REWRITE_ROWS, mask/rowmask.c) ---- */

#include <openssl/hmac.h>
#include <openssl/sha.h>

#define OID_INT4 23
#define OID_TEXT 25
#define OID_VARCHAR 1043

/* Rules by index for the row-mask tests. */
enum { RR_KL4, RR_KF2KL2, RR_EMAIL, RR_HASH, RR_NULL, RR_FIXED, RR_REDACT, RR_FIXED_UTF8, RR_KEEP0, RR_KF3, RR_N };

typedef struct {
	MaskRule rules[RR_N];
	const MaskRule *ptrs[RR_N];
	MaskCatalog *c;     /* with the hash key */
	MaskCatalog *nokey; /* the same rows, no key */
	uint32_t people, accounts;
} RowsFixture;

/* public.people: attnum, name, type, rule (-1: not masked). */
static const struct {
	const char *attnum, *name, *type, *rule;
} PEOPLE[] = {
	{"00001", "id", "integer", "-1"},         {"00002", "ssn", "text", "0"},
	{"00003", "card", "text", "1"},           {"00004", "email", "text", "2"},
	{"00005", "secret", "text", "3"},         {"00006", "tag", "text", "4"},
	{"00007", "code", "character varying(6)", "5"}, {"00008", "note", "character varying(5)", "6"},
	{"00009", "pname", "text", "6"},           {"00010", "ft", "text", "7"},
	{"00011", "p0", "text", "8"},             {"00012", "p3", "text", "9"},
	{"00013", "plain", "text", "-1"},         {"00014", "num", "integer", "6"},
	{"00015", "hv", "character varying(8)", "3"}, {"00016", "ft3", "character varying(3)", "7"},
};
enum { A_ID = 1, A_SSN, A_CARD, A_EMAIL, A_SECRET, A_TAG, A_CODE, A_NOTE, A_NAME, A_FT, A_P0, A_P3, A_PLAIN, A_NUM, A_HV, A_FT3 };

static bool add_people(MaskCatalog *c)
{
	bool ok = true;
	for (size_t i = 0; i < sizeof PEOPLE / sizeof PEOPLE[0]; i++)
		ok = ok && add_row(c, "c", "public", "people", PEOPLE[i].attnum, PEOPLE[i].name, PEOPLE[i].type,
				   strncmp(PEOPLE[i].type, "integer", 7) == 0 ? "N" : "S", PEOPLE[i].rule, "false");
	/* accounts: a masked column that is not text */
	ok = ok && add_row(c, "c", "public", "accounts", "00001", "id", "integer", "N", "-1", "false") &&
	     add_row(c, "c", "public", "accounts", "00002", "owner", "text", "S", "-1", "false") &&
	     add_row(c, "c", "public", "accounts", "00003", "balance", "numeric", "N", "6", "false");
	/* customers and a view built on it that no rule names */
	ok = ok && add_row(c, "c", "public", "customers", "00001", "id", "integer", "N", "-1", "false") &&
	     add_row(c, "c", "public", "customers", "00002", "name", "text", "S", "-1", "false") &&
	     add_row(c, "c", "public", "customers", "00003", "ssn", "text", "S", "0", "false") &&
	     add_row(c, "c", "public", "customers", "00004", "email", "character varying(40)", "S", "2", "false") &&
	     add_row(c, "c", "public", "customer_names", "00001", "name", "text", "S", "-1", "true") &&
	     add_row(c, "f", NULL, "leak_fn", NULL, NULL, NULL, NULL, NULL, NULL);
	return ok;
}

static const uint8_t ROWS_KEY[] = "rows-test-key-0123456789-abcdef!";

static int rows_setup(void **state)
{
	RowsFixture *f = calloc(1, sizeof *f);
	if (!f)
		return -1;
	f->rules[RR_KL4] = (MaskRule){.method = MASK_PARTIAL, .keep_last = 4};
	f->rules[RR_KF2KL2] = (MaskRule){.method = MASK_PARTIAL, .keep_first = 2, .keep_last = 2};
	f->rules[RR_EMAIL] = (MaskRule){.method = MASK_EMAIL};
	f->rules[RR_HASH] = (MaskRule){.method = MASK_HASH};
	f->rules[RR_NULL] = (MaskRule){.method = MASK_NULL};
	f->rules[RR_FIXED] = (MaskRule){.method = MASK_FIXED, .value = (char *)"FIXED-VALUE"};
	f->rules[RR_REDACT] = (MaskRule){.method = MASK_REDACT};
	f->rules[RR_FIXED_UTF8] = (MaskRule){.method = MASK_FIXED, .value = (char *)"\xce\xa9mega \xe2\x9c\x93"};
	f->rules[RR_KEEP0] = (MaskRule){.method = MASK_PARTIAL};
	f->rules[RR_KF3] = (MaskRule){.method = MASK_PARTIAL, .keep_first = 3};
	for (int i = 0; i < RR_N; i++)
		f->ptrs[i] = &f->rules[i];
	f->c = mask_catalog_new(f->ptrs, RR_N, ROWS_KEY, sizeof ROWS_KEY - 1);
	f->nokey = mask_catalog_new(f->ptrs, RR_N, NULL, 0);
	*state = f;
	if (!add_people(f->c) || !add_people(f->nokey))
		return -1;
	const MaskRelation *p = mask_catalog_find(f->c, "public", "people");
	const MaskRelation *a = mask_catalog_find(f->c, "public", "accounts");
	if (!p || !a || p->oid == a->oid)
		return -1;
	f->people = p->oid;
	f->accounts = a->oid;
	return 0;
}

static int rows_teardown(void **state)
{
	RowsFixture *f = *state;
	mask_catalog_free(f->c);
	mask_catalog_free(f->nokey);
	free(f);
	return 0;
}

/* A row mask with one field: people.attnum as a text (or varchar(n): typmod n + 4) result. */
static RowMask *one_field(const MaskCatalog *c, uint32_t relid, int attnum, uint32_t typoid, int32_t typmod)
{
	RowMask *m = mask_rowmask_new(c, 1);
	assert_non_null(m);
	if (!mask_rowmask_field(m, c, 0, relid, attnum, typoid, typmod)) {
		mask_rowmask_free(m);
		fail_msg("attnum %d (type %u, typmod %d) was rejected", attnum, typoid, typmod);
	}
	return m;
}

/* The masked value of in (NUL-terminated copy, caller frees), or NULL for SQL NULL. */
static char *rm_value(const RowMask *m, int i, const char *in)
{
	MaskBuf b = {0};
	bool notnull = mask_rowmask_value(m, i, (const uint8_t *)in, strlen(in), &b);
	if (!notnull) {
		free(b.buf);
		return NULL;
	}
	char *s = malloc(b.len + 1);
	assert_non_null(s);
	if (b.len)
		memcpy(s, b.buf, b.len);
	s[b.len] = 0;
	free(b.buf);
	assert_int_equal(strlen(s), b.len); /* no NUL inside */
	return s;
}

/* Asserts that field i of m masks in to want (NULL: SQL NULL). */
static void expect_rm(const RowMask *m, int i, const char *in, const char *want)
{
	char *got = rm_value(m, i, in);
	if ((got == NULL) != (want == NULL) || (got && strcmp(got, want) != 0)) {
		char msg[600];
		snprintf(msg, sizeof msg, "field %d: \"%s\" was masked to %s%s%s, expected %s%s%s", i, in,
			 got ? "\"" : "", got ? got : "NULL", got ? "\"" : "", want ? "\"" : "", want ? want : "NULL",
			 want ? "\"" : "");
		free(got);
		fail_msg("%s", msg);
	}
	free(got);
}

/* One field of people, masked: the value of in. */
static void expect_col(const MaskCatalog *c, uint32_t relid, int attnum, uint32_t typoid, int32_t typmod, const char *in,
		       const char *want)
{
	RowMask *m = one_field(c, relid, attnum, typoid, typmod);
	assert_true(m->fields[0].masked);
	expect_rm(m, 0, in, want);
	mask_rowmask_free(m);
}

static void test_rowmask_fields(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	/* a RowDescription of 20 fields, every kind of origin */
	RowMask *m = mask_rowmask_new(c, 20);
	assert_non_null(m);
	assert_int_equal(m->nfields, 20);
	assert_int_equal(m->nmasked, 0);
	assert_true(m->has_key);
	assert_true(mask_rowmask_field(m, c, 0, f->people, A_ID, OID_INT4, -1));        /* not masked */
	assert_true(mask_rowmask_field(m, c, 1, f->people, A_SSN, OID_TEXT, -1));       /* partial */
	assert_true(mask_rowmask_field(m, c, 2, f->people, A_CARD, OID_TEXT, -1));      /* partial 2/2 */
	assert_true(mask_rowmask_field(m, c, 3, f->people, A_EMAIL, OID_TEXT, -1));     /* email */
	assert_true(mask_rowmask_field(m, c, 4, f->people, A_SECRET, OID_TEXT, -1));    /* hash */
	assert_true(mask_rowmask_field(m, c, 5, f->people, A_TAG, OID_TEXT, -1));       /* null */
	assert_true(mask_rowmask_field(m, c, 6, f->people, A_CODE, OID_VARCHAR, 6 + 4)); /* fixed, varchar(6) */
	assert_true(mask_rowmask_field(m, c, 7, f->people, A_NOTE, OID_VARCHAR, 5 + 4)); /* redact, varchar(5) */
	assert_true(mask_rowmask_field(m, c, 8, f->people, A_PLAIN, OID_TEXT, -1));     /* not masked */
	assert_true(mask_rowmask_field(m, c, 9, 0, 0, OID_TEXT, -1));                   /* an expression */
	assert_true(mask_rowmask_field(m, c, 10, 987654321u, A_SSN, OID_TEXT, -1));     /* a relation not in the catalog */
	assert_true(mask_rowmask_field(m, c, 11, f->people, 99, OID_TEXT, -1));         /* an attnum not in it */
	assert_true(mask_rowmask_field(m, c, 12, f->people, -1, OID_TEXT, -1));         /* a system column */
	assert_true(mask_rowmask_field(m, c, 13, f->people, 0, OID_TEXT, -1));
	assert_true(mask_rowmask_field(m, c, 14, 0, A_SSN, OID_TEXT, -1));              /* no relation */
	assert_true(mask_rowmask_field(m, c, 15, f->accounts, 2, OID_TEXT, -1));        /* accounts.owner: not masked */
	assert_true(mask_rowmask_field(m, c, 16, f->accounts, A_SSN, OID_TEXT, -1));    /* attnum 2 of the other relation */
	assert_true(mask_rowmask_field(m, c, 17, f->people, A_HV, OID_VARCHAR, -1));    /* varchar without a length */
	assert_true(mask_rowmask_field(m, c, 18, f->people, A_NAME, OID_VARCHAR, 4));   /* typmod 4: no length */
	assert_true(mask_rowmask_field(m, c, 19, f->people, A_FT, OID_TEXT, -1));
	const bool masked[20] = {false, true, true, true, true, true, true, true, false, false,
				 false, false, false, false, false, false, false, true, true, true};
	int n = 0;
	for (int i = 0; i < 20; i++) {
		if (m->fields[i].masked != masked[i])
			fail_msg("field %d: masked %d, expected %d", i, m->fields[i].masked, masked[i]);
		n += masked[i];
	}
	assert_int_equal(m->nmasked, n);
	assert_int_equal(m->fields[1].method, MASK_PARTIAL);
	assert_int_equal(m->fields[1].keep_first, 0);
	assert_int_equal(m->fields[1].keep_last, 4);
	assert_int_equal(m->fields[2].keep_first, 2);
	assert_int_equal(m->fields[2].keep_last, 2);
	assert_int_equal(m->fields[3].method, MASK_EMAIL);
	assert_int_equal(m->fields[4].method, MASK_HASH);
	assert_int_equal(m->fields[5].method, MASK_NULL);
	assert_int_equal(m->fields[6].method, MASK_FIXED);
	assert_string_equal(m->fields[6].value, "FIXED-VALUE");
	assert_int_equal(m->fields[6].max_chars, 6);
	assert_int_equal(m->fields[7].method, MASK_REDACT);
	assert_int_equal(m->fields[7].max_chars, 5);
	assert_int_equal(m->fields[1].max_chars, 0);
	assert_int_equal(m->fields[17].max_chars, 0);
	assert_int_equal(m->fields[18].max_chars, 0);
	/* Unmasked fields pass as they are (the relay never asks for their value). */
	mask_rowmask_free(m);
	mask_rowmask_free(NULL);

	/* Zero fields (a RowDescription of no columns). */
	m = mask_rowmask_new(c, 0);
	assert_non_null(m);
	assert_int_equal(m->nmasked, 0);
	mask_rowmask_free(m);
}

/* A masked column whose result is not text cannot be masked here: the rows must not be sent. */
static void test_rowmask_rejects_non_text(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	RowMask *m = mask_rowmask_new(c, 4);
	assert_false(mask_rowmask_field(m, c, 0, f->people, A_NUM, OID_INT4, -1));       /* a masked integer */
	assert_false(mask_rowmask_field(m, c, 1, f->accounts, 3, 1700, -1));              /* masked numeric */
	assert_false(mask_rowmask_field(m, c, 2, f->people, A_SSN, OID_INT4, -1));       /* text column, int result */
	assert_false(mask_rowmask_field(m, c, 3, f->people, A_SSN, 17, -1));              /* bytea */
	assert_false(mask_rowmask_field(m, c, 3, f->people, A_EMAIL, 1042, 24));          /* bpchar */
	assert_false(mask_rowmask_field(m, c, 3, f->people, A_EMAIL, 19, -1));            /* name */
	/* unmasked columns of any type are fine */
	assert_true(mask_rowmask_field(m, c, 3, f->accounts, 1, OID_INT4, -1));
	assert_false(m->fields[3].masked);
	mask_rowmask_free(m);
}

static void test_rowmask_partial(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	/* keep_last 4 */
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "123-45-6789", "***-**-6789");
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "", "");
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "12", "**");
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "6789", "****");   /* no longer than what is kept */
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "1-2345", "*-2345");
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "a b_c.d/e(f)+g h1234", "* *_*.*/*(*)+* *1234");
	/* keep_first 2, keep_last 2 */
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "4111111111111111", "41************11");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "abc", "***");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "abcd", "****");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "abcde", "ab*de");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "ab-cd-e", "ab-**-e");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "a", "*");
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "--", "--");
	/* keep nothing: letters and digits become '*', separators stay */
	expect_col(c, f->people, A_P0, OID_TEXT, -1, "abc-12 Z", "***-** *");
	expect_col(c, f->people, A_P0, OID_TEXT, -1, "", "");
	/* keep_first 3 only */
	expect_col(c, f->people, A_P3, OID_TEXT, -1, "abcdef", "abc***");
	expect_col(c, f->people, A_P3, OID_TEXT, -1, "abc", "***");
	expect_col(c, f->people, A_P3, OID_TEXT, -1, "abcd", "abc*");
}

/* Characters, not bytes: what is kept is whole UTF-8 characters, counted as characters. */
static void test_rowmask_partial_utf8(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	/* "abc-ÄÖÜß": 8 characters, 12 bytes; the last 4 characters are kept whole */
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "abc-\xc3\x84\xc3\x96\xc3\x9c\xc3\x9f",
		   "***-\xc3\x84\xc3\x96\xc3\x9c\xc3\x9f");
	/* "ÄÖ12-34ÜÖ": keep the first 2 and last 2 characters (4 bytes each) */
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "\xc3\x84\xc3\x96" "12-34\xc3\x9c\xc3\x96",
		   "\xc3\x84\xc3\x96**-**\xc3\x9c\xc3\x96");
	/* "ÄÖxßÜ": 5 characters (9 bytes) > 4: one starred in the middle */
	expect_col(c, f->people, A_CARD, OID_TEXT, -1, "\xc3\x84\xc3\x96x\xc3\x9f\xc3\x9c", "\xc3\x84\xc3\x96*\xc3\x9f\xc3\x9c");
	/* "€€ab": 4 characters, 8 bytes: no longer than what is kept, so all of it is starred (bytes would say 8 > 4) */
	{
		RowMask *m = one_field(c, f->people, A_CARD, OID_TEXT, -1);
		char *got = rm_value(m, 0, "\xe2\x82\xac\xe2\x82\xac" "ab");
		mask_rowmask_free(m);
		bool keeps_ends = got && strstr(got, "ab") != NULL;
		free(got);
		assert_false(keeps_ends);
	}
	/* 3-byte and 4-byte characters at the kept ends */
	expect_col(c, f->people, A_P3, OID_TEXT, -1, "\xe2\x82\xac\xf0\x9f\x98\x80" "a12", "\xe2\x82\xac\xf0\x9f\x98\x80" "a**");
	expect_col(c, f->people, A_SSN, OID_TEXT, -1, "ab12\xf0\x9f\x98\x80\xe2\x82\xac\xc3\xa9z",
		   "****\xf0\x9f\x98\x80\xe2\x82\xac\xc3\xa9z");
}

static void test_rowmask_email(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "jane.doe@example.com", "j***@example.com");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "a@b", "a***@b");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "a@b@c", "a***@b@c"); /* the first '@' */
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "@example.com", "@*******.***");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "noatsign", "********");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "no-at.sign", "**-**.****");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "", "");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "x@", "x***@");
	/* a multi-byte first character is kept whole; the domain as it is */
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "\xc3\x9cn\xc3\xaf@x.org", "\xc3\x9c***@x.org");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "\xf0\x9f\x98\x80@x.org", "\xf0\x9f\x98\x80***@x.org");
	expect_col(c, f->people, A_EMAIL, OID_TEXT, -1, "x@ex\xc3\xa4mple.com", "x***@ex\xc3\xa4mple.com");
	/* in a varchar(n) result the masked text is cut like the SQL cast does */
	expect_col(c, f->people, A_EMAIL, OID_VARCHAR, 8 + 4, "jane.doe@example.com", "j***@exa");
}

/* 'h:' and the first 16 hex digits of HMAC-SHA-256(SHA-256(configured key), value), computed here with OpenSSL. */
static void expected_hash(const char *value, char *out)
{
	uint8_t k[SHA256_DIGEST_LENGTH], mac[EVP_MAX_MD_SIZE];
	unsigned len = 0;
	SHA256(ROWS_KEY, sizeof ROWS_KEY - 1, k);
	assert_non_null(HMAC(EVP_sha256(), k, sizeof k, (const unsigned char *)value, strlen(value), mac, &len));
	assert_int_equal(len, 32);
	strcpy(out, "h:");
	for (int i = 0; i < 8; i++)
		snprintf(out + 2 + 2 * i, 3, "%02x", mac[i]);
}

static void test_rowmask_hash(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	const char *values[] = {"s3cr3t-one", "", "Zo\xc3\xab \xc3\x9cn\xc3\xaf" "code", "123-45-6789",
				"a much longer value than one block of the hash function, so that it spans more than sixty-four bytes"};
	for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
		char want[32];
		expected_hash(values[i], want);
		assert_int_equal(strlen(want), 18);
		expect_col(c, f->people, A_SECRET, OID_TEXT, -1, values[i], want);
		/* varchar(8): cut to 8 characters */
		want[8] = 0;
		expect_col(c, f->people, A_HV, OID_VARCHAR, 8 + 4, values[i], want);
	}
	/* deterministic, and different values give different hashes */
	RowMask *m = one_field(c, f->people, A_SECRET, OID_TEXT, -1);
	char *a = rm_value(m, 0, "value-a"), *a2 = rm_value(m, 0, "value-a"), *b = rm_value(m, 0, "value-b");
	bool same = strcmp(a, a2) == 0, differ = strcmp(a, b) != 0;
	free(a);
	free(a2);
	free(b);
	mask_rowmask_free(m);
	assert_true(same);
	assert_true(differ);

	/* another key, another hash */
	const MaskRule *rules[RR_N];
	for (int i = 0; i < RR_N; i++)
		rules[i] = f->c->rules[i];
	MaskCatalog *c2 = mask_catalog_new(rules, RR_N, (const uint8_t *)"another key of 16+ bytes", 24);
	assert_true(add_people(c2));
	const MaskRelation *p2 = mask_catalog_find(c2, "public", "people");
	char want[32];
	expected_hash("s3cr3t-one", want);
	RowMask *m2 = one_field(c2, p2->oid, A_SECRET, OID_TEXT, -1);
	char *other = rm_value(m2, 0, "s3cr3t-one");
	bool differs = strncmp(other, "h:", 2) == 0 && strlen(other) == 18 && strcmp(other, want) != 0;
	free(other);
	mask_rowmask_free(m2);
	mask_catalog_free(c2);
	assert_true(differs);

	/* without a key, hash falls back to redact: never the value, never a hash of an empty key */
	RowMask *nk = mask_rowmask_new(f->nokey, 2);
	assert_false(nk->has_key);
	assert_true(mask_rowmask_field(nk, f->nokey, 0, f->people, A_SECRET, OID_TEXT, -1));
	assert_true(mask_rowmask_field(nk, f->nokey, 1, f->people, A_HV, OID_VARCHAR, 8 + 4));
	assert_int_equal(nk->fields[0].method, MASK_REDACT);
	expect_rm(nk, 0, "s3cr3t-one", "[REDACTED]");
	expect_rm(nk, 1, "s3cr3t-one", "[REDACTE");
	mask_rowmask_free(nk);
}

/* The hash in the gateway is the hash of the SQL method: the HMAC pads the SQL uses come from the same key. */
static void test_rowmask_hash_matches_sql_pads(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	uint8_t k[SHA256_DIGEST_LENGTH];
	SHA256(ROWS_KEY, sizeof ROWS_KEY - 1, k);
	for (int i = 0; i < 64; i++) {
		assert_int_equal(c->hash_ipad[i], (i < 32 ? k[i] : 0) ^ 0x36);
		assert_int_equal(c->hash_opad[i], (i < 32 ? k[i] : 0) ^ 0x5c);
	}
	RowMask *m = mask_rowmask_new(c, 1);
	assert_memory_equal(m->hash_key, k, 32);
	mask_rowmask_free(m);
}

static void test_rowmask_null_fixed_redact(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	/* null: NULL whatever the value */
	expect_col(c, f->people, A_TAG, OID_TEXT, -1, "vip-1", NULL);
	expect_col(c, f->people, A_TAG, OID_TEXT, -1, "", NULL);
	/* fixed, cut to varchar(6) */
	expect_col(c, f->people, A_CODE, OID_VARCHAR, 6 + 4, "c1", "FIXED-");
	expect_col(c, f->people, A_CODE, OID_VARCHAR, 6 + 4, "", "FIXED-");
	expect_col(c, f->people, A_CODE, OID_TEXT, -1, "c1", "FIXED-VALUE");
	expect_col(c, f->people, A_CODE, OID_VARCHAR, 40 + 4, "c1", "FIXED-VALUE");
	/* a multi-byte fixed value, whole and cut to 3 characters (4 bytes) */
	expect_col(c, f->people, A_FT, OID_TEXT, -1, "anything", "\xce\xa9mega \xe2\x9c\x93");
	expect_col(c, f->people, A_FT3, OID_VARCHAR, 3 + 4, "anything", "\xce\xa9me");
	expect_col(c, f->people, A_FT3, OID_VARCHAR, 6 + 4, "anything", "\xce\xa9mega ");
	expect_col(c, f->people, A_FT3, OID_VARCHAR, 7 + 4, "anything", "\xce\xa9mega \xe2\x9c\x93");
	expect_col(c, f->people, A_FT3, OID_VARCHAR, 8 + 4, "anything", "\xce\xa9mega \xe2\x9c\x93");
	/* redact, on text and cut to varchar(5); varchar without a length is not cut */
	expect_col(c, f->people, A_NAME, OID_TEXT, -1, "Jane Doe", "[REDACTED]");
	expect_col(c, f->people, A_NAME, OID_TEXT, -1, "", "[REDACTED]");
	expect_col(c, f->people, A_NOTE, OID_VARCHAR, 5 + 4, "hello", "[REDA");
	expect_col(c, f->people, A_NOTE, OID_VARCHAR, 1 + 4, "hello", "[");
	expect_col(c, f->people, A_NOTE, OID_VARCHAR, -1, "hello", "[REDACTED]");
	/* varchar(n) cuts partial results too, by characters */
	expect_col(c, f->people, A_SSN, OID_VARCHAR, 5 + 4, "123-45-6789", "***-*");
	expect_col(c, f->people, A_SSN, OID_VARCHAR, 5 + 4, "abc-\xc3\x84\xc3\x96\xc3\x9c\xc3\x9f", "***-\xc3\x84");
}

/* Several fields of one row, each masked by its own method; the value never comes back as it was. */
static void test_rowmask_row(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	const int attnums[] = {A_SSN, A_CARD, A_EMAIL, A_SECRET, A_CODE, A_NOTE, A_NAME, A_FT};
	const uint32_t types[] = {OID_TEXT, OID_TEXT, OID_TEXT, OID_TEXT, OID_VARCHAR, OID_VARCHAR, OID_TEXT, OID_TEXT};
	const int32_t typmods[] = {-1, -1, -1, -1, 10, 9, -1, -1};
	/* no '@': the email method keeps everything from the first '@' on */
	const char *raw = "123-45-6789 jane.doe 4111111111111111";
	RowMask *m = mask_rowmask_new(c, 8);
	for (int i = 0; i < 8; i++)
		assert_true(mask_rowmask_field(m, c, i, f->people, attnums[i], types[i], typmods[i]));
	assert_int_equal(m->nmasked, 8);
	for (int i = 0; i < 8; i++) {
		char *got = rm_value(m, i, raw);
		bool leaked = got && (strstr(got, "123-45") || strstr(got, "jane.doe") || strstr(got, "41111111"));
		free(got);
		if (leaked)
			fail_msg("field %d returned part of the raw value", i);
	}
	mask_rowmask_free(m);
}

/* One buffer reused across fields and rows, as the relay does: each value replaces the last. */
static void test_rowmask_buffer_reuse(void **state)
{
	RowsFixture *f = *state;
	const MaskCatalog *c = f->c;
	RowMask *m = mask_rowmask_new(c, 3);
	assert_true(mask_rowmask_field(m, c, 0, f->people, A_CARD, OID_TEXT, -1));
	assert_true(mask_rowmask_field(m, c, 1, f->people, A_NOTE, OID_VARCHAR, 5 + 4));
	assert_true(mask_rowmask_field(m, c, 2, f->people, A_TAG, OID_TEXT, -1));
	MaskBuf b = {0};
	const char *in[] = {"4111111111111111andalongtailoftext", "ab", "x", "abcde", ""};
	const char *want0[] = {"41******************************xt", "**", "*", "ab*de", ""};
	bool ok = true;
	char msg[300] = "";
	for (size_t k = 0; ok && k < sizeof in / sizeof in[0]; k++) {
		ok = mask_rowmask_value(m, 0, (const uint8_t *)in[k], strlen(in[k]), &b) && b.len == strlen(want0[k]) &&
		     (b.len == 0 || memcmp(b.buf, want0[k], b.len) == 0);
		if (!ok)
			snprintf(msg, sizeof msg, "value %zu of field 0 (reused buffer): %.*s", k, (int)b.len, b.buf ? (char *)b.buf : "");
		ok = ok && mask_rowmask_value(m, 1, (const uint8_t *)in[k], strlen(in[k]), &b) && b.len == 5 &&
		     memcmp(b.buf, "[REDA", 5) == 0;
		if (!ok && !msg[0])
			snprintf(msg, sizeof msg, "value %zu of field 1 (reused buffer)", k);
		ok = ok && !mask_rowmask_value(m, 2, (const uint8_t *)in[k], strlen(in[k]), &b);
		if (!ok && !msg[0])
			snprintf(msg, sizeof msg, "value %zu of field 2 (null) was not NULL", k);
	}
	free(b.buf);
	mask_rowmask_free(m);
	if (!ok)
		fail_msg("%s", msg);
}

/* REWRITE_ROWS: out stays NULL and reason empty. */
static void expect_rows_rw(const MaskCatalog *c, bool block, bool gateway, const char *sql, RewriteResult want)
{
	char *out = (char *)"sentinel";
	char reason[256];
	memset(reason, 'x', sizeof reason);
	RewriteOptions o = {.predicate_block = block, .rows_in_gateway = gateway};
	RewriteResult got = mask_rewrite(c, &o, sql, &out, reason, sizeof reason);
	if (got != want) {
		char msg[700];
		snprintf(msg, sizeof msg, "%s (block=%d, rows_in_gateway=%d): got %d, want %d; reason \"%.200s\"", sql, block,
			 gateway, got, want, got == REWRITE_REFUSE ? reason : "");
		free(got == REWRITE_DONE ? out : NULL);
		fail_msg("%s", msg);
	}
	assert_non_null(memchr(reason, 0, sizeof reason));
	if (want == REWRITE_DONE) {
		assert_non_null(out);
		assert_non_null(strstr(out, "(SELECT "));
		free(out);
	} else {
		assert_null(out);
	}
	if (want == REWRITE_ROWS || want == REWRITE_PASS)
		assert_string_equal(reason, "");
	if (want == REWRITE_REFUSE)
		assert_true(strlen(reason) > 0);
}

/* Plain reads of one masked relation whose masked columns are only output as they are. */
static const char *const ROWS_STATEMENTS[] = {
	"SELECT ssn FROM customers",
	"SELECT id, name, ssn, email FROM customers",
	"SELECT * FROM customers",
	"SELECT c.* FROM customers c",
	"SELECT c.ssn, c.id FROM customers AS c WHERE c.id = 1 ORDER BY c.id",
	"SELECT ssn FROM public.customers WHERE name = 'x' ORDER BY id DESC NULLS LAST LIMIT 10 OFFSET 5",
	"SELECT ssn, upper(name), id + 1 FROM customers",
	"SELECT ssn AS s, email AS e FROM customers ORDER BY id",
	"SELECT ssn FROM customers WHERE id = $1",
	"SELECT ssn FROM customers ORDER BY id FETCH FIRST 3 ROWS ONLY",
	"SELECT id FROM customers",
	"SELECT \"ssn\", \"email\" FROM \"customers\"",
	"select ssn from customers where id in (1, 2, 3) and name like 'a%';",
	"SELECT id, owner FROM accounts",
	"SELECT ssn, name || '!' AS n FROM customers ORDER BY name",
	/* a window over unmasked columns next to a bare masked column */
	"SELECT ssn, row_number() OVER (ORDER BY id) FROM customers",
	/* system columns are columns, not functions of the row */
	"SELECT c.ctid, c.ssn FROM customers c WHERE c.xmin IS NOT NULL",
};

/* What must not be masked in the gateway: rewritten (DONE) or refused, by mode. */
static const struct {
	const char *sql;
	RewriteResult allow, block;
} NOT_ROWS[] = {
	{"SELECT upper(ssn) FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn || '' FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn::varchar(20) FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT DISTINCT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT DISTINCT id FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers ORDER BY 1", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id, ssn FROM customers ORDER BY 2", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id, ssn FROM customers ORDER BY 1", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn AS s FROM customers ORDER BY s", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT ssn AS id FROM customers ORDER BY id", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id AS s, ssn FROM customers ORDER BY s", REWRITE_DONE, REWRITE_DONE},
	{"SELECT id FROM customers WHERE ssn = 'x'", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id FROM customers ORDER BY ssn", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id FROM customers ORDER BY customers.email", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id FROM customers LIMIT (SELECT count(*) FROM customers)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT c FROM customers c", REWRITE_DONE, REWRITE_DONE},
	{"SELECT customers FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT (c).ssn FROM customers c", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers c WHERE c IS NOT NULL", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers c WHERE c.* IS NOT NULL", REWRITE_DONE, REWRITE_DONE},
	{"SELECT row_to_json(c) FROM customers c", REWRITE_DONE, REWRITE_DONE},
	/* alias.function is the function of the whole row */
	{"SELECT c.row_to_json FROM customers c", REWRITE_DONE, REWRITE_DONE},
	{"SELECT customers.to_json FROM public.customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT public.customers.to_jsonb FROM public.customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT \"c\".\"row_to_json\" FROM customers \"c\"", REWRITE_DONE, REWRITE_DONE},
	{"SELECT id, ssn FROM customers c WHERE c.to_jsonb->>'ssn' = 'x'", REWRITE_DONE, REWRITE_DONE},
	{"SELECT id FROM customers c ORDER BY c.to_jsonb->>'ssn'", REWRITE_DONE, REWRITE_DONE},
	{"SELECT (SELECT ssn FROM customers LIMIT 1)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers WHERE id IN (SELECT id FROM customers)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers WHERE EXISTS (SELECT 1)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn, (SELECT 1) FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT a.ssn FROM customers a JOIN customers b USING (id)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers, orders", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers, accounts", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM (SELECT * FROM customers) x", REWRITE_DONE, REWRITE_DONE},
	{"WITH x AS (SELECT * FROM customers) SELECT ssn FROM x", REWRITE_DONE, REWRITE_DONE},
	{"WITH x AS (SELECT 1) SELECT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers UNION SELECT 'a'", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers UNION ALL SELECT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT id, count(*) FROM customers GROUP BY id", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn, count(*) FROM customers GROUP BY ssn", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT id FROM customers GROUP BY id HAVING count(*) > 1", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn, count(*) OVER (PARTITION BY ssn) FROM customers", REWRITE_DONE, REWRITE_REFUSE},
	{"SELECT ssn, lag(ssn) OVER (ORDER BY id) FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers WINDOW w AS (ORDER BY id)", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers FOR UPDATE", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn INTO TEMP t2 FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"SELECT balance FROM accounts", REWRITE_DONE, REWRITE_DONE},
	{"SELECT * FROM accounts", REWRITE_DONE, REWRITE_DONE},
	{"SELECT a.* FROM accounts a", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM customers; SELECT 1", REWRITE_DONE, REWRITE_DONE},
	{"DECLARE c CURSOR FOR SELECT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"PREPARE p AS SELECT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"CREATE TABLE t3 AS SELECT ssn FROM customers", REWRITE_DONE, REWRITE_DONE},
	{"COPY (SELECT ssn FROM customers) TO STDOUT", REWRITE_DONE, REWRITE_DONE},
	{"SELECT ssn FROM ONLY customers", REWRITE_REFUSE, REWRITE_REFUSE},
	{"SELECT * FROM customer_names", REWRITE_REFUSE, REWRITE_REFUSE},
	{"SELECT ssn, leak_fn() FROM customers", REWRITE_REFUSE, REWRITE_REFUSE},
	{"SELECT ssn FROM customers WHERE id = leak_fn()", REWRITE_REFUSE, REWRITE_REFUSE},
};

static void test_rewrite_rows(void **state)
{
	const MaskCatalog *c = ((RowsFixture *)*state)->c;
	for (int block = 0; block < 2; block++) {
		for (size_t i = 0; i < sizeof ROWS_STATEMENTS / sizeof ROWS_STATEMENTS[0]; i++) {
			expect_rows_rw(c, block, true, ROWS_STATEMENTS[i], REWRITE_ROWS);
			/* without rows_in_gateway (a client encoding other than UTF8) they are rewritten */
			expect_rows_rw(c, block, false, ROWS_STATEMENTS[i], REWRITE_DONE);
		}
	}
}

static void test_rewrite_not_rows(void **state)
{
	const MaskCatalog *c = ((RowsFixture *)*state)->c;
	for (size_t i = 0; i < sizeof NOT_ROWS / sizeof NOT_ROWS[0]; i++) {
		expect_rows_rw(c, false, true, NOT_ROWS[i].sql, NOT_ROWS[i].allow);
		expect_rows_rw(c, true, true, NOT_ROWS[i].sql, NOT_ROWS[i].block);
		expect_rows_rw(c, false, false, NOT_ROWS[i].sql, NOT_ROWS[i].allow);
		expect_rows_rw(c, true, false, NOT_ROWS[i].sql, NOT_ROWS[i].block);
	}
}

/* Nothing masked is read: PASS whatever rows_in_gateway says. */
static void test_rewrite_rows_pass(void **state)
{
	const MaskCatalog *c = ((RowsFixture *)*state)->c;
	const char *pass[] = {"SELECT 1", "SELECT * FROM orders", "SELECT * FROM other.customers",
			      "SELECT 'ssn' AS ssn", "FETCH ALL FROM c", "SELECT x FROM orders ORDER BY 1"};
	for (int block = 0; block < 2; block++)
		for (size_t i = 0; i < sizeof pass / sizeof pass[0]; i++)
			expect_rows_rw(c, block, true, pass[i], REWRITE_PASS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_detect_credit_card),
		cmocka_unit_test(test_detect_credit_card_followed_by_number),
		cmocka_unit_test(test_luhn_and_iban_checks),
		cmocka_unit_test(test_detect_us_ssn),
		cmocka_unit_test(test_detect_email),
		cmocka_unit_test(test_detect_iban),
		cmocka_unit_test(test_detect_aws_key),
		cmocka_unit_test(test_detect_jwt),
		cmocka_unit_test(test_detect_private_key),
		cmocka_unit_test(test_detect_only_requested_bits),
		cmocka_unit_test(test_detect_several_and_empty),
		cmocka_unit_test(test_method_names),
		cmocka_unit_test(test_detector_names),
		cmocka_unit_test(test_sql_expr_every_method_and_type),
		cmocka_unit_test(test_sql_expr_specifics),
		cmocka_unit_test(test_catalog_sql),
		cmocka_unit_test(test_catalog_rows),
		cmocka_unit_test(test_catalog_rejected_row_adds_nothing),
		cmocka_unit_test(test_catalog_grows),
		cmocka_unit_test_setup_teardown(test_rewrite_pass, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_select, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_two_references, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_predicates, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_refusals, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_dml_pass, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_update_copying_masked, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_returning_masked, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_dml_predicate_block, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_dml_unsupported, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_copy_table, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_copy_columns, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_copy_binary, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_copy_pass, rw_setup, rw_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_fields, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_rejects_non_text, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_partial, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_partial_utf8, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_email, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_hash, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_hash_matches_sql_pads, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_null_fixed_redact, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_row, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rowmask_buffer_reuse, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_rows, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_not_rows, rows_setup, rows_teardown),
		cmocka_unit_test_setup_teardown(test_rewrite_rows_pass, rows_setup, rows_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
