/*
 * JWT and JWKS (src/auth/jwt.c): keys generated at test time with the OpenSSL EVP API (RSA 2048,
 * EC P-256, Ed25519) and published as JWK JSON built here; tokens signed here with EVP for
 * RS256, PS256, ES256 and EdDSA; every refusal path of jwt_verify; jwt_looks_like and
 * jwt_peek on hostile input. Verification runs at a fixed NOW, so nothing depends on the clock.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "auth/jwt.h"
#include "core/util.h"

#define NOW 1800000000LL
#define ISS "https://idp.test"
#define AUD "pgcordon"

static EVP_PKEY *rsa_k, *rsa2_k, *ec_k, *ec2_k, *ed_k, *rsa1024_k;

/* ---------------------------------------------------------------- helpers */

static char *xsprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *xsprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	assert_true(n >= 0);
	char *s = malloc((size_t)n + 1);
	assert_non_null(s);
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}

static char *b64url(const unsigned char *in, size_t n)
{
	char *out = malloc(util_b64_encoded_len(n) + 1);
	assert_non_null(out);
	util_b64_encode(in, n, out);
	size_t len = strlen(out);
	while (len && out[len - 1] == '=')
		out[--len] = 0;
	for (char *p = out; *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	return out;
}

static char *b64url_str(const char *s) { return b64url((const unsigned char *)s, strlen(s)); }

static char *bn_b64url(const BIGNUM *bn, int pad)
{
	int n = pad ? pad : BN_num_bytes(bn);
	unsigned char *buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(BN_bn2binpad(bn, buf, n), n);
	char *s = b64url(buf, (size_t)n);
	free(buf);
	return s;
}

/* A public JWK for pkey; extra: more members, e.g. "\"kid\":\"r1\"" (may be ""). */
static char *jwk_of(EVP_PKEY *k, const char *extra)
{
	const char *sep = extra && *extra ? "," : "";
	if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
		BIGNUM *n = NULL, *e = NULL;
		assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_N, &n), 1);
		assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_RSA_E, &e), 1);
		char *ns = bn_b64url(n, 0), *es = bn_b64url(e, 0);
		char *j = xsprintf("{\"kty\":\"RSA\",\"n\":\"%s\",\"e\":\"%s\"%s%s}", ns, es, sep, extra);
		free(ns);
		free(es);
		BN_free(n);
		BN_free(e);
		return j;
	}
	if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
		BIGNUM *x = NULL, *y = NULL;
		assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
		assert_int_equal(EVP_PKEY_get_bn_param(k, OSSL_PKEY_PARAM_EC_PUB_Y, &y), 1);
		char *xs = bn_b64url(x, 32), *ys = bn_b64url(y, 32);
		char *j = xsprintf("{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"%s\",\"y\":\"%s\"%s%s}", xs, ys, sep,
				   extra);
		free(xs);
		free(ys);
		BN_free(x);
		BN_free(y);
		return j;
	}
	assert_int_equal(EVP_PKEY_get_base_id(k), EVP_PKEY_ED25519);
	unsigned char raw[32];
	size_t rawlen = sizeof raw;
	assert_int_equal(EVP_PKEY_get_raw_public_key(k, raw, &rawlen), 1);
	char *xs = b64url(raw, rawlen);
	char *j = xsprintf("{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"%s\"%s%s}", xs, sep, extra);
	free(xs);
	return j;
}

/* {"keys":[a, b, ...]} from NULL-terminated JWK strings, which it frees. */
static char *jwks_doc(char *first, ...)
{
	va_list ap;
	size_t cap = 64;
	char *doc = malloc(cap);
	assert_non_null(doc);
	strcpy(doc, "{\"keys\":[");
	va_start(ap, first);
	int i = 0;
	for (char *j = first; j; j = va_arg(ap, char *), i++) {
		size_t need = strlen(doc) + strlen(j) + 4;
		if (need > cap) {
			cap = need * 2;
			doc = realloc(doc, cap);
			assert_non_null(doc);
		}
		if (i)
			strcat(doc, ",");
		strcat(doc, j);
		free(j);
	}
	va_end(ap);
	doc = realloc(doc, strlen(doc) + 3);
	assert_non_null(doc);
	strcat(doc, "]}");
	return doc;
}

static void parse_ok(const char *doc, JwtKeySet *ks)
{
	char err[200] = "";
	assert_true(jwks_parse(doc, strlen(doc), ks, err, sizeof err));
}

/* Signature over in with k for alg (raw R||S for ES256 unless der). */
static unsigned char *sign(EVP_PKEY *k, const char *alg, const char *in, size_t *siglen, int der)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	assert_non_null(md);
	if (strcmp(alg, "EdDSA") == 0) {
		assert_int_equal(EVP_DigestSignInit(md, NULL, NULL, NULL, k), 1);
	} else {
		assert_int_equal(EVP_DigestSignInit(md, &pctx, EVP_sha256(), NULL, k), 1);
		if (strcmp(alg, "PS256") == 0) {
			assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
			assert_int_equal(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
		}
	}
	size_t len = 0;
	assert_int_equal(EVP_DigestSign(md, NULL, &len, (const unsigned char *)in, strlen(in)), 1);
	unsigned char *sig = malloc(len);
	assert_non_null(sig);
	assert_int_equal(EVP_DigestSign(md, sig, &len, (const unsigned char *)in, strlen(in)), 1);
	EVP_MD_CTX_free(md);
	if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC && !der) {
		const unsigned char *p = sig;
		ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)len);
		assert_non_null(es);
		const BIGNUM *r, *s;
		ECDSA_SIG_get0(es, &r, &s);
		unsigned char *raw = malloc(64);
		assert_non_null(raw);
		assert_int_equal(BN_bn2binpad(r, raw, 32), 32);
		assert_int_equal(BN_bn2binpad(s, raw + 32, 32), 32);
		ECDSA_SIG_free(es);
		free(sig);
		sig = raw;
		len = 64;
	}
	*siglen = len;
	return sig;
}

/* header.claims.signature; k NULL: an empty signature. */
static char *token_ex(const char *header, const char *claims, EVP_PKEY *k, const char *sign_alg, int der)
{
	char *h = b64url_str(header), *c = b64url_str(claims);
	char *input = xsprintf("%s.%s", h, c);
	free(h);
	free(c);
	char *sigs = NULL;
	if (k) {
		size_t siglen;
		unsigned char *sig = sign(k, sign_alg, input, &siglen, der);
		sigs = b64url(sig, siglen);
		free(sig);
	}
	char *t = xsprintf("%s.%s", input, sigs ? sigs : "");
	free(sigs);
	free(input);
	return t;
}

static char *header_for(const char *alg, const char *kid)
{
	if (kid)
		return xsprintf("{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
	return xsprintf("{\"alg\":\"%s\",\"typ\":\"JWT\"}", alg);
}

static char *token(EVP_PKEY *k, const char *alg, const char *kid, const char *claims)
{
	char *h = header_for(alg, kid);
	char *t = token_ex(h, claims, k, alg, 0);
	free(h);
	return t;
}

/* Claims: every member has a default; OMIT leaves it out; other values are raw JSON. */
static const char OMIT[] = "omit";
typedef struct {
	const char *iss, *aud, *exp, *sub, *groups, *extra;
} Claims;

static char *claims_json(Claims c)
{
	char exp[32];
	snprintf(exp, sizeof exp, "%lld", NOW + 300);
	const char *names[] = {"iss", "aud", "exp", "sub", "groups"};
	const char *vals[] = {c.iss ? c.iss : "\"" ISS "\"", c.aud ? c.aud : "\"" AUD "\"", c.exp ? c.exp : exp,
			      c.sub ? c.sub : "\"alice\"", c.groups ? c.groups : "[\"g1\",\"g2\"]"};
	char *out = xsprintf("{\"iat\":%lld", NOW - 5);
	for (int i = 0; i < 5; i++) {
		if (vals[i] == OMIT)
			continue;
		char *n = xsprintf("%s,\"%s\":%s", out, names[i], vals[i]);
		free(out);
		out = n;
	}
	char *n = xsprintf("%s%s%s}", out, c.extra ? "," : "", c.extra ? c.extra : "");
	free(out);
	return n;
}

#define CLAIMS(...) claims_json((Claims){__VA_ARGS__})

static JwtRules rules(void)
{
	JwtRules r = {.issuer = ISS, .audience = AUD, .leeway_s = 30, .username_claim = "sub",
		      .groups_claim = "groups", .algs = JWT_ALG_ALL};
	return r;
}

/* The standard key set: r1 (RSA), e1 (EC), o1 (Ed25519). */
static char *std_jwks(void)
{
	return jwks_doc(jwk_of(rsa_k, "\"kid\":\"r1\",\"use\":\"sig\""), jwk_of(ec_k, "\"kid\":\"e1\""),
			jwk_of(ed_k, "\"kid\":\"o1\",\"use\":\"sig\""), NULL);
}

typedef struct {
	JwtKeySet ks;
} Fixture;

static int fixture_setup(void **state)
{
	Fixture *f = calloc(1, sizeof *f);
	assert_non_null(f);
	char *doc = std_jwks();
	parse_ok(doc, &f->ks);
	free(doc);
	assert_int_equal(f->ks.n, 3);
	*state = f;
	return 0;
}

static int fixture_teardown(void **state)
{
	Fixture *f = *state;
	jwks_free(&f->ks);
	free(f);
	return 0;
}

/*
 * Verifies token (freed here) and checks the result; on a refusal the error must name want_err
 * (a substring), must not contain any part of the signature or the claims, and the identity
 * must hold no groups.
 */
static void expect_rules(const JwtKeySet *ks, const JwtRules *r, char *tok, JwtResult want, const char *want_err)
{
	JwtIdentity id;
	char err[300] = "";
	JwtResult got = jwt_verify(tok, ks, r, NOW, &id, err, sizeof err);
	if (got != want)
		fail_msg("jwt_verify returned %d (err \"%s\"), expected %d; token %.120s", got, err, want, tok);
	if (want != JWT_OK) {
		assert_int_equal(id.ngroups, 0);
		if (want_err && !strstr(err, want_err))
			fail_msg("error \"%s\" does not contain \"%s\"", err, want_err);
		/* never echoes the token */
		const char *d1 = strchr(tok, '.');
		const char *d2 = d1 ? strchr(d1 + 1, '.') : NULL;
		if (d2 && strlen(d2 + 1) >= 8)
			assert_null(strstr(err, d2 + 1));
		if (d1 && d2 && d2 - d1 > 12) {
			char part[13];
			memcpy(part, d1 + 1, 12);
			part[12] = 0;
			assert_null(strstr(err, part));
		}
	}
	jwt_identity_free(&id);
	free(tok);
}

static void expect(const JwtKeySet *ks, char *tok, JwtResult want, const char *want_err)
{
	JwtRules r = rules();
	expect_rules(ks, &r, tok, want, want_err);
}

/* ---------------------------------------------------------------- setup */

static int group_setup(void **state)
{
	(void)state;
	rsa_k = EVP_RSA_gen(2048);
	rsa2_k = EVP_RSA_gen(2048);
	rsa1024_k = EVP_RSA_gen(1024);
	ec_k = EVP_EC_gen("P-256");
	ec2_k = EVP_EC_gen("P-256");
	ed_k = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	return rsa_k && rsa2_k && rsa1024_k && ec_k && ec2_k && ed_k ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	EVP_PKEY_free(rsa_k);
	EVP_PKEY_free(rsa2_k);
	EVP_PKEY_free(rsa1024_k);
	EVP_PKEY_free(ec_k);
	EVP_PKEY_free(ec2_k);
	EVP_PKEY_free(ed_k);
	return 0;
}

/* ---------------------------------------------------------------- algorithms and JWKS */

static void test_alg_bit(void **state)
{
	(void)state;
	assert_int_equal(jwt_alg_bit("RS256"), JWT_ALG_RS256);
	assert_int_equal(jwt_alg_bit("PS256"), JWT_ALG_PS256);
	assert_int_equal(jwt_alg_bit("ES256"), JWT_ALG_ES256);
	assert_int_equal(jwt_alg_bit("EdDSA"), JWT_ALG_EDDSA);
	const char *refused[] = {"none", "None", "NONE", "HS256", "HS384", "HS512", "RS384", "RS512", "PS384",
				 "ES384", "ES512", "ES256K", "rs256", "eddsa", "EDDSA", "Ed25519", "", " RS256",
				 "RS256 ", "RS2560", NULL};
	for (const char **a = refused; *a; a++)
		if (jwt_alg_bit(*a) != 0)
			fail_msg("algorithm \"%s\" has a bit", *a);
	assert_int_equal(jwt_alg_bit(NULL), 0);
}

static void test_jwks_parse_each_kind(void **state)
{
	(void)state;
	JwtKeySet ks;
	char *doc = std_jwks();
	parse_ok(doc, &ks);
	free(doc);
	assert_int_equal(ks.n, 3);
	assert_string_equal(ks.keys[0].kid, "r1");
	assert_int_equal(ks.keys[0].algs, JWT_ALG_RS256 | JWT_ALG_PS256);
	assert_string_equal(ks.keys[1].kid, "e1");
	assert_int_equal(ks.keys[1].algs, JWT_ALG_ES256);
	assert_string_equal(ks.keys[2].kid, "o1");
	assert_int_equal(ks.keys[2].algs, JWT_ALG_EDDSA);
	for (int i = 0; i < 3; i++)
		assert_non_null(ks.keys[i].pkey);
	assert_true(jwks_has_kid(&ks, "r1"));
	assert_true(jwks_has_kid(&ks, "e1"));
	assert_true(jwks_has_kid(&ks, "o1"));
	assert_false(jwks_has_kid(&ks, "r2"));
	assert_false(jwks_has_kid(&ks, ""));
	assert_false(jwks_has_kid(&ks, "R1"));
	jwks_free(&ks);
	assert_int_equal(ks.n, 0);
	assert_null(ks.keys);
	jwks_free(&ks); /* twice is harmless */
}

static void test_jwks_alg_pinning(void **state)
{
	(void)state;
	JwtKeySet ks;
	char *doc = jwks_doc(jwk_of(rsa_k, "\"kid\":\"ps\",\"alg\":\"PS256\""),
			     jwk_of(rsa_k, "\"kid\":\"rs\",\"alg\":\"RS256\""),
			     jwk_of(rsa_k, "\"kid\":\"hs\",\"alg\":\"HS256\""),     /* never an HMAC key */
			     jwk_of(ec_k, "\"kid\":\"ec-as-rsa\",\"alg\":\"RS256\""), /* contradiction */
			     jwk_of(ed_k, "\"kid\":\"ed\",\"alg\":\"EdDSA\""), NULL);
	parse_ok(doc, &ks);
	free(doc);
	assert_int_equal(ks.n, 3);
	assert_string_equal(ks.keys[0].kid, "ps");
	assert_int_equal(ks.keys[0].algs, JWT_ALG_PS256);
	assert_string_equal(ks.keys[1].kid, "rs");
	assert_int_equal(ks.keys[1].algs, JWT_ALG_RS256);
	assert_string_equal(ks.keys[2].kid, "ed");
	char *c = CLAIMS(0);
	/* a key pinned to PS256 verifies PS256 only */
	expect(&ks, token(rsa_k, "PS256", "ps", c), JWT_OK, NULL);
	expect(&ks, token(rsa_k, "RS256", "ps", c), JWT_UNKNOWN_KID, "no RS256 signing key with kid \"ps\"");
	expect(&ks, token(rsa_k, "RS256", "rs", c), JWT_OK, NULL);
	expect(&ks, token(rsa_k, "PS256", "rs", c), JWT_UNKNOWN_KID, "no PS256 signing key");
	expect(&ks, token(ed_k, "EdDSA", "ed", c), JWT_OK, NULL);
	free(c);
	jwks_free(&ks);
}

static void test_jwks_skips_unusable_keys(void **state)
{
	(void)state;
	/* an EC key whose point is not on the curve: the real x with y + 1 */
	BIGNUM *x = NULL, *y = NULL;
	assert_int_equal(EVP_PKEY_get_bn_param(ec_k, OSSL_PKEY_PARAM_EC_PUB_X, &x), 1);
	assert_int_equal(EVP_PKEY_get_bn_param(ec_k, OSSL_PKEY_PARAM_EC_PUB_Y, &y), 1);
	BN_add_word(y, 1);
	char *xs = bn_b64url(x, 32), *ys = bn_b64url(y, 32), *xs31 = NULL;
	{
		unsigned char b[32];
		BN_bn2binpad(x, b, 32);
		xs31 = b64url(b, 31);
	}
	BN_free(x);
	BN_free(y);
	char *off_curve = xsprintf("{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"off\",\"x\":\"%s\",\"y\":\"%s\"}", xs, ys);
	char *short_x = xsprintf("{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"short\",\"x\":\"%s\",\"y\":\"%s\"}", xs31, ys);
	char *p384 = xsprintf("{\"kty\":\"EC\",\"crv\":\"P-384\",\"kid\":\"p384\",\"x\":\"%s\",\"y\":\"%s\"}", xs, ys);
	char *rsa_no_e = xsprintf("{\"kty\":\"RSA\",\"kid\":\"noe\",\"n\":\"%s\"}", xs);
	free(xs);
	free(ys);
	free(xs31);
	char *doc = jwks_doc(jwk_of(rsa_k, "\"kid\":\"enc\",\"use\":\"enc\""), jwk_of(rsa1024_k, "\"kid\":\"small\""),
			     off_curve, short_x, p384, rsa_no_e,
			     xsprintf("{\"kty\":\"oct\",\"kid\":\"hmac\",\"k\":\"c2VjcmV0\"}"),
			     xsprintf("{\"kty\":\"OKP\",\"crv\":\"Ed448\",\"kid\":\"ed448\",\"x\":\"AAAA\"}"),
			     xsprintf("{\"kty\":\"OKP\",\"crv\":\"X25519\",\"kid\":\"x25519\",\"x\":"
				      "\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}"),
			     xsprintf("{\"kty\":\"RSA\",\"kid\":\"nnum\",\"n\":42,\"e\":\"AQAB\"}"),
			     xsprintf("{\"kty\":\"RSA\",\"kid\":\"bad64\",\"n\":\"!!!!\",\"e\":\"AQAB\"}"),
			     xsprintf("{\"kid\":\"nokty\"}"), xsprintf("{\"kty\":7,\"kid\":\"ktynum\"}"), xsprintf("42"),
			     xsprintf("\"str\""), xsprintf("null"), xsprintf("[]"),
			     jwk_of(ec_k, "\"kid\":\"good\",\"use\":\"sig\""), NULL);
	JwtKeySet ks;
	parse_ok(doc, &ks);
	free(doc);
	assert_int_equal(ks.n, 1);
	assert_string_equal(ks.keys[0].kid, "good");
	jwks_free(&ks);
}

static void test_jwks_parse_rejects_non_jwks(void **state)
{
	(void)state;
	const char *bad[] = {"", "null", "[]", "{}", "42", "{\"keys\":{}}", "{\"keys\":\"x\"}", "{\"keys\":null}",
			     "{\"keys\":[", "{\"keys\":[]", "\xff\xfe", NULL};
	for (const char **b = bad; *b; b++) {
		JwtKeySet ks;
		char err[200] = "";
		if (jwks_parse(*b, strlen(*b), &ks, err, sizeof err))
			fail_msg("jwks_parse accepted \"%s\"", *b);
		assert_true(err[0] != 0);
		assert_int_equal(ks.n, 0);
		jwks_free(&ks);
	}
	/* a length that stops inside the document */
	const char *doc = "{\"keys\":[]} trailing";
	JwtKeySet ks;
	char err[200];
	assert_false(jwks_parse(doc, 5, &ks, err, sizeof err));
	jwks_free(&ks);
	/* an empty key list is a valid (useless) JWKS */
	assert_true(jwks_parse("{\"keys\":[]}", 11, &ks, err, sizeof err));
	assert_int_equal(ks.n, 0);
	assert_false(jwks_has_kid(&ks, ""));
	jwks_free(&ks);
}

static void test_jwks_key_count_is_capped(void **state)
{
	(void)state;
	char *one = jwk_of(ed_k, "");
	size_t cap = (strlen(one) + 32) * 150 + 64;
	char *doc = malloc(cap);
	assert_non_null(doc);
	strcpy(doc, "{\"keys\":[");
	for (int i = 0; i < 150; i++) {
		char *j = jwk_of(ed_k, "");
		char *withkid = xsprintf("{\"kid\":\"k%d\",%s", i, j + 1);
		free(j);
		if (i)
			strcat(doc, ",");
		strcat(doc, withkid);
		free(withkid);
	}
	strcat(doc, "]}");
	free(one);
	JwtKeySet ks;
	parse_ok(doc, &ks);
	free(doc);
	assert_int_equal(ks.n, 100);
	assert_true(jwks_has_kid(&ks, "k99"));
	assert_false(jwks_has_kid(&ks, "k100"));
	jwks_free(&ks);
}

static void test_jwks_long_kid_truncated(void **state)
{
	(void)state;
	char kid[300];
	memset(kid, 'k', sizeof kid - 1);
	kid[sizeof kid - 1] = 0;
	char *extra = xsprintf("\"kid\":\"%s\"", kid);
	char *doc = jwks_doc(jwk_of(ec_k, extra), NULL);
	free(extra);
	JwtKeySet ks;
	parse_ok(doc, &ks);
	free(doc);
	assert_int_equal(ks.n, 1);
	assert_int_equal(strlen(ks.keys[0].kid), sizeof ks.keys[0].kid - 1);
	/* a token naming the full 299-character kid must not match the truncated one */
	char *c = CLAIMS(0);
	expect(&ks, token(ec_k, "ES256", kid, c), JWT_UNKNOWN_KID, "no ES256 signing key");
	free(c);
	jwks_free(&ks);
}

/* ---------------------------------------------------------------- accepted tokens */

static void test_verify_each_algorithm(void **state)
{
	Fixture *f = *state;
	struct {
		EVP_PKEY **k;
		const char *alg, *kid;
	} cases[] = {{&rsa_k, "RS256", "r1"}, {&rsa_k, "PS256", "r1"}, {&ec_k, "ES256", "e1"}, {&ed_k, "EdDSA", "o1"}};
	char *c = CLAIMS(.groups = "[\"g1\",\"g2\",\"g3\"]");
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char *tok = token(*cases[i].k, cases[i].alg, cases[i].kid, c);
		JwtRules r = rules();
		JwtIdentity id;
		char err[300] = "";
		JwtResult res = jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err);
		if (res != JWT_OK)
			fail_msg("%s: %d %s", cases[i].alg, res, err);
		assert_string_equal(id.username, "alice");
		assert_int_equal(id.ngroups, 3);
		assert_string_equal(id.groups[0], "g1");
		assert_string_equal(id.groups[2], "g3");
		assert_int_equal(id.exp, NOW + 300);
		assert_string_equal(id.kid, cases[i].kid);
		assert_string_equal(id.alg, cases[i].alg);
		jwt_identity_free(&id);
		assert_int_equal(id.ngroups, 0);
		assert_true(jwt_looks_like(tok));
		char iss[64], kid[16];
		assert_true(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
		assert_string_equal(iss, ISS);
		assert_string_equal(kid, cases[i].kid);
		free(tok);
	}
	free(c);
}

static void test_verify_without_kid(void **state)
{
	(void)state;
	char *c = CLAIMS(0);
	JwtKeySet ks;
	/* one key per algorithm, no kids: a token without kid finds it */
	char *doc = jwks_doc(jwk_of(rsa_k, ""), jwk_of(ec_k, ""), NULL);
	parse_ok(doc, &ks);
	free(doc);
	assert_true(jwks_has_kid(&ks, ""));
	expect(&ks, token(rsa_k, "RS256", NULL, c), JWT_OK, NULL);
	expect(&ks, token(ec_k, "ES256", NULL, c), JWT_OK, NULL);
	expect(&ks, token(rsa_k, "RS256", "r1", c), JWT_UNKNOWN_KID, "kid \"r1\"");
	jwks_free(&ks);
	/* two candidates and no kid: ambiguous, refused rather than guessed */
	doc = jwks_doc(jwk_of(rsa_k, "\"kid\":\"a\""), jwk_of(rsa2_k, "\"kid\":\"b\""), NULL);
	parse_ok(doc, &ks);
	free(doc);
	expect(&ks, token(rsa_k, "RS256", NULL, c), JWT_UNKNOWN_KID, "no RS256 signing key with kid \"\"");
	expect(&ks, token(rsa2_k, "RS256", "b", c), JWT_OK, NULL);
	jwks_free(&ks);
	free(c);
}

static void test_claims_paths_and_groups(void **state)
{
	Fixture *f = *state;
	JwtRules r = rules();
	r.username_claim = "realm.person.email";
	r.groups_claim = "realm.roles";
	char *c = CLAIMS(.sub = "\"not-this\"", .groups = OMIT,
			 .extra = "\"realm\":{\"person\":{\"email\":\"a@b.c\"},\"roles\":[\"x\",1,null,{\"y\":1},\"z\"]}");
	char *tok = token(ed_k, "EdDSA", "o1", c);
	free(c);
	JwtIdentity id;
	char err[300];
	assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_OK);
	assert_string_equal(id.username, "a@b.c");
	assert_int_equal(id.ngroups, 2); /* only the strings */
	assert_string_equal(id.groups[0], "x");
	assert_string_equal(id.groups[1], "z");
	jwt_identity_free(&id);
	free(tok);

	/* a single group as a string; absent or odd groups: none */
	r = rules();
	const char *shapes[] = {"\"solo\"", OMIT, "{\"a\":\"b\"}", "42", "[]", "null"};
	int want[] = {1, 0, 0, 0, 0, 0};
	for (int i = 0; i < 6; i++) {
		c = CLAIMS(.groups = shapes[i]);
		tok = token(ec_k, "ES256", "e1", c);
		free(c);
		assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_OK);
		assert_int_equal(id.ngroups, want[i]);
		jwt_identity_free(&id);
		free(tok);
	}

	/* at most JWT_MAX_GROUPS groups; a group of 256+ bytes is dropped */
	size_t cap = 300 * 12 + 600;
	char *groups = malloc(cap);
	assert_non_null(groups);
	strcpy(groups, "[");
	char longg[300];
	memset(longg, 'L', 299);
	longg[299] = 0;
	size_t o = strlen(groups);
	o += (size_t)snprintf(groups + o, cap - o, "\"%s\"", longg);
	for (int i = 0; i < 300; i++)
		o += (size_t)snprintf(groups + o, cap - o, ",\"g%d\"", i);
	snprintf(groups + o, cap - o, "]");
	c = CLAIMS(.groups = groups);
	free(groups);
	tok = token(rsa_k, "RS256", "r1", c);
	free(c);
	assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_OK);
	assert_int_equal(id.ngroups, JWT_MAX_GROUPS);
	assert_string_equal(id.groups[0], "g0");
	jwt_identity_free(&id);
	free(tok);
}

static void test_audience_forms(void **state)
{
	Fixture *f = *state;
	const char *ok[] = {"\"" AUD "\"", "[\"other\",\"" AUD "\"]", "[\"" AUD "\"]", NULL};
	for (const char **a = ok; *a; a++) {
		char *c = CLAIMS(.aud = *a);
		expect(&f->ks, token(rsa_k, "RS256", "r1", c), JWT_OK, NULL);
		free(c);
	}
	const char *bad[] = {OMIT, "\"other\"", "\"pgcordon \"", "\"PGCORDON\"", "\"pgcordonx\"", "[]",
			     "[\"other\"]", "[1,2]", "42", "null", "{\"pgcordon\":true}", "[[\"pgcordon\"]]", NULL};
	for (const char **a = bad; *a; a++) {
		char *c = CLAIMS(.aud = *a);
		expect(&f->ks, token(rsa_k, "RS256", "r1", c), JWT_BAD_AUDIENCE, "audience does not include \"pgcordon\"");
		free(c);
	}
}

static void test_time_claims_and_leeway(void **state)
{
	Fixture *f = *state;
	char v[64];
	/* exp: valid up to exp + leeway inclusive */
	snprintf(v, sizeof v, "%lld", NOW - 30);
	char *c = CLAIMS(.exp = v);
	expect(&f->ks, token(ec_k, "ES256", "e1", c), JWT_OK, NULL);
	free(c);
	snprintf(v, sizeof v, "%lld", NOW - 31);
	c = CLAIMS(.exp = v);
	expect(&f->ks, token(ec_k, "ES256", "e1", c), JWT_EXPIRED, "token expired 31 s ago");
	free(c);
	snprintf(v, sizeof v, "%lld.5", NOW + 100);
	c = CLAIMS(.exp = v); /* a fractional NumericDate */
	expect(&f->ks, token(ec_k, "ES256", "e1", c), JWT_OK, NULL);
	free(c);
	/* leeway 0 */
	JwtRules r = rules();
	r.leeway_s = 0;
	snprintf(v, sizeof v, "%lld", NOW - 1);
	c = CLAIMS(.exp = v);
	expect_rules(&f->ks, &r, token(ec_k, "ES256", "e1", c), JWT_EXPIRED, "token expired 1 s ago");
	free(c);
	snprintf(v, sizeof v, "%lld", NOW);
	c = CLAIMS(.exp = v);
	expect_rules(&f->ks, &r, token(ec_k, "ES256", "e1", c), JWT_OK, NULL);
	free(c);

	/* nbf and iat in the future beyond leeway */
	char extra[80];
	snprintf(extra, sizeof extra, "\"nbf\":%lld", NOW + 30);
	c = CLAIMS(.extra = extra);
	expect(&f->ks, token(ed_k, "EdDSA", "o1", c), JWT_OK, NULL);
	free(c);
	snprintf(extra, sizeof extra, "\"nbf\":%lld", NOW + 31);
	c = CLAIMS(.extra = extra);
	expect(&f->ks, token(ed_k, "EdDSA", "o1", c), JWT_NOT_YET_VALID, "not valid for another 31 s");
	free(c);
	c = CLAIMS(.extra = "\"nbf\":\"tomorrow\""); /* not a number: not a constraint */
	expect(&f->ks, token(ed_k, "EdDSA", "o1", c), JWT_OK, NULL);
	free(c);
	/* iat: the claims builder puts iat first; a second iat would be a duplicate member */
	char *h = header_for("RS256", "r1");
	char *cl = xsprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"alice\",\"exp\":%lld,\"iat\":%lld}",
			    NOW + 300, NOW + 31);
	expect(&f->ks, token_ex(h, cl, rsa_k, "RS256", 0), JWT_NOT_YET_VALID, "issued 31 s in the future");
	free(cl);
	cl = xsprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"alice\",\"exp\":%lld,\"iat\":%lld}",
		      NOW + 300, NOW + 30);
	expect(&f->ks, token_ex(h, cl, rsa_k, "RS256", 0), JWT_OK, NULL);
	free(cl);
	free(h);

	/* exp missing or not a number */
	const char *noexp[] = {OMIT, "\"1900000000\"", "null", "true", "[1900000000]", NULL};
	for (const char **e = noexp; *e; e++) {
		c = CLAIMS(.exp = *e);
		expect(&f->ks, token(rsa_k, "PS256", "r1", c), JWT_MISSING_CLAIM, "token has no exp claim");
		free(c);
	}
}

/*
 * exp at the ends of the int64 range (valid JSON integers): no arithmetic overflow in the
 * checks (exp + leeway) or in the message (now - exp).
 */
static void test_exp_largest(void **state)
{
	Fixture *f = *state;
	/* the largest JSON integer jansson reads: a token that never expires */
	char *c = CLAIMS(.exp = "9223372036854775807");
	expect(&f->ks, token(rsa_k, "RS256", "r1", c), JWT_OK, NULL);
	free(c);
}

static void test_exp_smallest(void **state)
{
	Fixture *f = *state;
	/* the smallest: expired, and the age in the message is not negative */
	char *c = CLAIMS(.exp = "-9223372036854775808");
	char *tok = token(rsa_k, "RS256", "r1", c);
	free(c);
	JwtRules r = rules();
	JwtIdentity id;
	char err[300] = "";
	assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_EXPIRED);
	free(tok);
	if (strchr(err, '-'))
		fail_msg("expiry message with a negative age: \"%s\"", err);
}

/* ---------------------------------------------------------------- refusals */

static void test_refuse_too_large(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(0);
	char *good = token(rsa_k, "RS256", "r1", c);
	free(c);
	size_t n = JWT_MAX_TOKEN + 1;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'A', n);
	memcpy(big, good, strlen(good));
	big[n] = 0;
	free(good);
	expect(&f->ks, big, JWT_TOO_LARGE, "token too large");
	/* a correctly signed token that is too large */
	char *pad = malloc(13000);
	assert_non_null(pad);
	memset(pad, 'p', 12999);
	pad[12999] = 0;
	char *extra = xsprintf("\"pad\":\"%s\"", pad);
	free(pad);
	c = CLAIMS(.extra = extra);
	free(extra);
	char *tok = token(ec_k, "ES256", "e1", c);
	free(c);
	assert_true(strlen(tok) > JWT_MAX_TOKEN);
	char iss[64], kid[16];
	assert_false(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
	expect(&f->ks, tok, JWT_TOO_LARGE, "over 16384 bytes");
}

static void test_refuse_malformed(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(0);
	char *good = token(rsa_k, "RS256", "r1", c);
	char *h = strdup(good);
	char *p = strchr(h, '.');
	*p = 0;
	char *cl = strdup(p + 1);
	*strchr(cl, '.') = 0;
	char *sig = strdup(strrchr(good, '.') + 1);
	const char *shapes[] = {"", ".", "..", "...", "abc", "a.b", "a.b.c.d", NULL};
	for (const char **s = shapes; *s; s++)
		expect(&f->ks, strdup(*s), JWT_MALFORMED, "malformed token");
	expect(&f->ks, xsprintf(".%s.%s", cl, sig), JWT_MALFORMED, "malformed token");
	expect(&f->ks, xsprintf("%s..%s", h, sig), JWT_MALFORMED, "malformed token");
	expect(&f->ks, xsprintf("%s.%s.%s.%s", h, cl, sig, sig), JWT_MALFORMED, "malformed token");
	expect(&f->ks, xsprintf("%sA.%s.%s", h, cl, sig), JWT_MALFORMED, "malformed token"); /* len % 4 == 1 */
	expect(&f->ks, xsprintf("%s.%sA.%s", h, cl, sig), JWT_MALFORMED, "malformed token");
	expect(&f->ks, xsprintf("%s=.%s.%s", h, cl, sig), JWT_MALFORMED, "malformed token"); /* padding */
	expect(&f->ks, xsprintf("%s.%s+.%s", h, cl, sig), JWT_MALFORMED, "malformed token"); /* base64, not url */
	expect(&f->ks, xsprintf("%s.%s!.%s", h, cl, sig), JWT_MALFORMED, "malformed token");
	char *b;
	expect(&f->ks, xsprintf("%s.%s.%s", b = b64url_str("{not json"), cl, sig), JWT_MALFORMED, "malformed");
	free(b);
	expect(&f->ks, xsprintf("%s.%s.%s", b = b64url_str("[\"RS256\"]"), cl, sig), JWT_MALFORMED, "malformed");
	free(b);
	expect(&f->ks, xsprintf("%s.%s.%s", h, b = b64url_str("\"claims\""), sig), JWT_MALFORMED, "malformed");
	free(b);
	expect(&f->ks, xsprintf("%s.%s.%s", h, b = b64url_str("{\"sub\":\"a\"} trailing"), sig), JWT_MALFORMED,
	       "malformed");
	free(b);
	expect(&f->ks, xsprintf("%s.%s.%s", h, b = b64url_str(""), sig), JWT_MALFORMED, "malformed");
	free(b);
	/* duplicate members are refused (a parser that takes the first would see another token) */
	char *dup = xsprintf("{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"exp\":%lld,\"sub\":\"alice\",\"sub\":\"root\"}",
			     NOW + 300);
	char *hj = header_for("RS256", "r1");
	expect(&f->ks, token_ex(hj, dup, rsa_k, "RS256", 0), JWT_MALFORMED, "malformed");
	free(hj);
	free(dup);
	hj = xsprintf("{\"alg\":\"RS256\",\"alg\":\"none\",\"kid\":\"r1\"}");
	expect(&f->ks, token_ex(hj, c, rsa_k, "RS256", 0), JWT_MALFORMED, "malformed");
	free(hj);
	/* binary garbage that decodes */
	unsigned char junk[48];
	for (int i = 0; i < 48; i++)
		junk[i] = (unsigned char)(i * 37 + 11);
	char *j64 = b64url(junk, sizeof junk);
	expect(&f->ks, xsprintf("%s.%s.%s", j64, j64, j64), JWT_MALFORMED, "malformed");
	free(j64);
	free(h);
	free(cl);
	free(sig);
	free(good);
	free(c);
}

static void test_refuse_algorithms(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(0);
	/* alg none, with and without a signature, with and without a kid */
	expect(&f->ks, token_ex("{\"alg\":\"none\",\"typ\":\"JWT\"}", c, NULL, NULL, 0), JWT_BAD_ALG,
	       "algorithm \"none\" is not accepted");
	expect(&f->ks, token_ex("{\"alg\":\"none\",\"kid\":\"r1\"}", c, NULL, NULL, 0), JWT_BAD_ALG,
	       "algorithm \"none\" is not accepted");
	expect(&f->ks, token_ex("{\"alg\":\"none\",\"kid\":\"r1\"}", c, rsa_k, "RS256", 0), JWT_BAD_ALG, "\"none\"");
	const char *names[] = {"None", "NONE", "nOnE", "HS256", "HS384", "HS512", "RS384", "RS512", "PS512", "ES384",
			       "ES512", "rs256", "EdDSA ", "", NULL};
	for (const char **n = names; *n; n++) {
		char *hj = xsprintf("{\"alg\":\"%s\",\"kid\":\"r1\"}", *n);
		char *want = xsprintf("algorithm \"%s\" is not accepted", *n);
		expect(&f->ks, token_ex(hj, c, rsa_k, "RS256", 0), JWT_BAD_ALG, want);
		free(hj);
		free(want);
	}
	/* alg missing or not a string */
	const char *headers[] = {"{\"kid\":\"r1\"}", "{\"alg\":null,\"kid\":\"r1\"}", "{\"alg\":256,\"kid\":\"r1\"}",
				 "{\"alg\":[\"RS256\"],\"kid\":\"r1\"}", "{\"ALG\":\"RS256\",\"kid\":\"r1\"}", NULL};
	for (const char **hh = headers; *hh; hh++)
		expect(&f->ks, token_ex(*hh, c, rsa_k, "RS256", 0), JWT_BAD_ALG, "algorithm \"(none)\" is not accepted");
	/* a long alg name is cut in the message */
	char longalg[200];
	memset(longalg, 'A', sizeof longalg - 1);
	longalg[sizeof longalg - 1] = 0;
	char *hj = xsprintf("{\"alg\":\"%s\"}", longalg);
	JwtRules r = rules();
	JwtIdentity id;
	char err[300];
	char *tok = token_ex(hj, c, NULL, NULL, 0);
	assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_BAD_ALG);
	assert_true(strlen(err) < 80);
	free(tok);
	free(hj);

	/*
	 * HS256 with the RSA public key as the HMAC secret (the classic key-confusion forgery):
	 * refused by algorithm before any key is looked at.
	 */
	unsigned char *der = NULL;
	int derlen = i2d_PUBKEY(rsa_k, &der);
	assert_true(derlen > 0);
	char *hh = b64url_str("{\"alg\":\"HS256\",\"kid\":\"r1\",\"typ\":\"JWT\"}");
	char *cc = b64url_str(c);
	char *input = xsprintf("%s.%s", hh, cc);
	unsigned char mac[32];
	size_t maclen = sizeof mac;
	assert_non_null(EVP_Q_mac(NULL, "HMAC", NULL, "SHA256", NULL, der, (size_t)derlen,
				  (const unsigned char *)input, strlen(input), mac, sizeof mac, &maclen));
	char *m64 = b64url(mac, maclen);
	expect(&f->ks, xsprintf("%s.%s", input, m64), JWT_BAD_ALG, "algorithm \"HS256\" is not accepted");
	OPENSSL_free(der);
	free(hh);
	free(cc);
	free(input);
	free(m64);

	/* an algorithm pgcordon knows but the issuer's allow-list does not have */
	r = rules();
	r.algs = JWT_ALG_ES256 | JWT_ALG_EDDSA;
	expect_rules(&f->ks, &r, token(rsa_k, "RS256", "r1", c), JWT_BAD_ALG, "algorithm \"RS256\" is not accepted");
	expect_rules(&f->ks, &r, token(rsa_k, "PS256", "r1", c), JWT_BAD_ALG, "algorithm \"PS256\" is not accepted");
	expect_rules(&f->ks, &r, token(ec_k, "ES256", "e1", c), JWT_OK, NULL);
	r.algs = 0;
	expect_rules(&f->ks, &r, token(ed_k, "EdDSA", "o1", c), JWT_BAD_ALG, "\"EdDSA\" is not accepted");
	free(c);
}

static void test_refuse_unknown_kid(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(0);
	expect(&f->ks, token(rsa_k, "RS256", "nope", c), JWT_UNKNOWN_KID, "no RS256 signing key with kid \"nope\"");
	expect(&f->ks, token(rsa_k, "RS256", "R1", c), JWT_UNKNOWN_KID, "kid \"R1\"");
	expect(&f->ks, token(rsa_k, "RS256", "", c), JWT_UNKNOWN_KID, "kid \"\"");
	/* a kid naming a key of another type: no cross-type use of keys */
	expect(&f->ks, token(ec_k, "ES256", "r1", c), JWT_UNKNOWN_KID, "no ES256 signing key with kid \"r1\"");
	expect(&f->ks, token(rsa_k, "RS256", "e1", c), JWT_UNKNOWN_KID, "no RS256 signing key with kid \"e1\"");
	expect(&f->ks, token(rsa_k, "PS256", "o1", c), JWT_UNKNOWN_KID, "no PS256 signing key with kid \"o1\"");
	expect(&f->ks, token(ed_k, "EdDSA", "e1", c), JWT_UNKNOWN_KID, "no EdDSA signing key with kid \"e1\"");
	/* no kid with one key per algorithm in the standard set: found */
	expect(&f->ks, token(ed_k, "EdDSA", NULL, c), JWT_OK, NULL);
	/* kid not a string: treated as absent */
	expect(&f->ks, token_ex("{\"alg\":\"ES256\",\"kid\":7}", c, ec_k, "ES256", 0), JWT_OK, NULL);
	/* a long kid is cut in the message */
	char kid[500];
	memset(kid, 'z', sizeof kid - 1);
	kid[sizeof kid - 1] = 0;
	JwtRules r = rules();
	JwtIdentity id;
	char err[300];
	char *tok = token(rsa_k, "RS256", kid, c);
	assert_int_equal(jwt_verify(tok, &f->ks, &r, NOW, &id, err, sizeof err), JWT_UNKNOWN_KID);
	assert_true(strlen(err) < 120);
	free(tok);
	/* an empty key set */
	JwtKeySet none;
	char e2[100];
	assert_true(jwks_parse("{\"keys\":[]}", 11, &none, e2, sizeof e2));
	expect(&none, token(rsa_k, "RS256", "r1", c), JWT_UNKNOWN_KID, "no RS256 signing key");
	expect(&none, token(rsa_k, "RS256", NULL, c), JWT_UNKNOWN_KID, "no RS256 signing key");
	jwks_free(&none);
	free(c);
}

static void test_refuse_bad_signature(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(0);
	struct {
		EVP_PKEY **k, **other;
		const char *alg, *kid;
	} cases[] = {{&rsa_k, &rsa2_k, "RS256", "r1"},
		     {&rsa_k, &rsa2_k, "PS256", "r1"},
		     {&ec_k, &ec2_k, "ES256", "e1"},
		     {&ed_k, NULL, "EdDSA", "o1"}};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const char *alg = cases[i].alg, *kid = cases[i].kid;
		char *want = xsprintf("signature does not verify (kid \"%s\")", kid);
		char *tok = token(*cases[i].k, alg, kid, c);
		char *dot1 = strchr(tok, '.'), *dot2 = strrchr(tok, '.');
		/* tampered claims: another user, same header and signature */
		char *other_claims = CLAIMS(.sub = "\"root\"");
		char *oc64 = b64url_str(other_claims);
		*dot1 = 0;
		expect(&f->ks, xsprintf("%s.%s%s", tok, oc64, dot2), JWT_BAD_SIGNATURE, want);
		*dot1 = '.';
		free(oc64);
		free(other_claims);
		/* a flipped signature character (not the last: its low bits may be padding) */
		char *t2 = strdup(tok);
		char *s = strrchr(t2, '.') + 3;
		*s = *s == 'A' ? 'B' : 'A';
		expect(&f->ks, t2, JWT_BAD_SIGNATURE, want);
		/* no signature, a truncated one, one of another length */
		expect(&f->ks, xsprintf("%.*s.", (int)(dot2 - tok), tok), JWT_BAD_SIGNATURE, want);
		expect(&f->ks, xsprintf("%.*s", (int)(strlen(tok) - 4), tok), JWT_BAD_SIGNATURE, want);
		expect(&f->ks, xsprintf("%sAAAA", tok), JWT_BAD_SIGNATURE, want);
		/* the signature is not base64url: refused before any decoding, as malformed */
		expect(&f->ks, xsprintf("%.*s.!!!!", (int)(dot2 - tok), tok), JWT_MALFORMED, "malformed token");
		/* signed by another key of the same type under this kid */
		if (cases[i].other)
			expect(&f->ks, token(*cases[i].other, alg, kid, c), JWT_BAD_SIGNATURE, want);
		free(tok);
		free(want);
	}
	/* another Ed25519 key */
	EVP_PKEY *ed2 = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	assert_non_null(ed2);
	expect(&f->ks, token(ed2, "EdDSA", "o1", c), JWT_BAD_SIGNATURE, "kid \"o1\"");
	EVP_PKEY_free(ed2);
	/* RSA padding confusion: a PKCS#1 v1.5 signature presented as PS256 and the reverse */
	char *hp = header_for("PS256", "r1"), *hr = header_for("RS256", "r1");
	expect(&f->ks, token_ex(hp, c, rsa_k, "RS256", 0), JWT_BAD_SIGNATURE, "kid \"r1\"");
	expect(&f->ks, token_ex(hr, c, rsa_k, "PS256", 0), JWT_BAD_SIGNATURE, "kid \"r1\"");
	free(hp);
	free(hr);
	/* ES256 needs R||S: an ASN.1 DER signature (what OpenSSL makes) is refused */
	char *he = header_for("ES256", "e1");
	expect(&f->ks, token_ex(he, c, ec_k, "ES256", 1), JWT_BAD_SIGNATURE, "kid \"e1\"");
	/* R||S of zeros */
	char *tok = token(ec_k, "ES256", "e1", c);
	char *zeros;
	{
		unsigned char z[64] = {0};
		zeros = b64url(z, sizeof z);
	}
	expect(&f->ks, xsprintf("%.*s.%s", (int)(strrchr(tok, '.') - tok), tok, zeros), JWT_BAD_SIGNATURE, "e1");
	free(zeros);
	free(tok);
	free(he);
	free(c);
}

static void test_refuse_issuer(void **state)
{
	Fixture *f = *state;
	const char *bad[] = {OMIT, "\"https://idp.evil\"", "\"https://idp.test/\"", "\"https://idp.test.evil\"",
			     "\"HTTPS://IDP.TEST\"", "\"\"", "42", "null", "[\"" ISS "\"]", NULL};
	for (const char **i = bad; *i; i++) {
		char *c = CLAIMS(.iss = *i);
		expect(&f->ks, token(ec_k, "ES256", "e1", c), JWT_BAD_ISSUER, "is not \"" ISS "\"");
		free(c);
	}
	char *c = CLAIMS(.iss = "\"https://idp.evil\"");
	expect(&f->ks, token(ec_k, "ES256", "e1", c), JWT_BAD_ISSUER, "issuer \"https://idp.evil\" is not \"" ISS "\"");
	free(c);
}

static void test_refuse_username(void **state)
{
	Fixture *f = *state;
	char u256[300];
	memset(u256, 'u', 256);
	u256[256] = 0;
	char *long_user = xsprintf("\"%s\"", u256);
	const char *bad[] = {OMIT, "\"\"", "42", "null", "[\"alice\"]", "{\"name\":\"alice\"}", long_user, NULL};
	for (const char **u = bad; *u; u++) {
		char *c = CLAIMS(.sub = *u);
		expect(&f->ks, token(rsa_k, "RS256", "r1", c), JWT_MISSING_CLAIM, "token has no usable \"sub\" claim");
		free(c);
	}
	free(long_user);
	/* 255 bytes fit */
	u256[255] = 0;
	char *ok = xsprintf("\"%s\"", u256);
	char *c = CLAIMS(.sub = ok);
	expect(&f->ks, token(rsa_k, "RS256", "r1", c), JWT_OK, NULL);
	free(c);
	free(ok);
	/* a dotted path that stops at a non-object */
	JwtRules r = rules();
	r.username_claim = "sub.name";
	c = CLAIMS(0);
	expect_rules(&f->ks, &r, token(rsa_k, "RS256", "r1", c), JWT_MISSING_CLAIM, "\"sub.name\"");
	free(c);
	/* a literal member named "a.b" is not the path a.b */
	r.username_claim = "a.b";
	c = CLAIMS(.extra = "\"a.b\":\"alice\"");
	expect_rules(&f->ks, &r, token(rsa_k, "RS256", "r1", c), JWT_MISSING_CLAIM, "\"a.b\"");
	free(c);
}

/* The order of checks: signature before claims, so an unsigned claim is never reported. */
static void test_signature_checked_before_claims(void **state)
{
	Fixture *f = *state;
	char *c = CLAIMS(.iss = "\"https://idp.evil\"", .aud = "\"x\"", .exp = "1");
	char *tok = token(rsa2_k, "RS256", "r1", c);
	free(c);
	expect(&f->ks, tok, JWT_BAD_SIGNATURE, "signature does not verify");
}

/* ---------------------------------------------------------------- looks_like and peek */

static void test_looks_like_hostile(void **state)
{
	(void)state;
	/* The shape check is deliberately loose: a token-shaped password goes to jwt_verify, which
	 * refuses it with a precise reason (malformed base64, empty parts, ...). */
	const char *yes[] = {"eyJhbGci.eyJzdWIi.c2ln", "eyJhbGciOiJub25lIn0.eyJ9.", "eyJ.eyJzdWIiOjF9.x",
			     "eyJhbGci..eyJzdWIi", "eyJ.eyJ.x", "eyJhb+ci.eyJzdWIi.c2ln", "eyJhb/ci.eyJzdWIi.c2ln",
			     NULL};
	for (const char **s = yes; *s; s++)
		if (!jwt_looks_like(*s))
			fail_msg("\"%s\" should look like a JWT", *s);
	const char *no[] = {"", "e", "ey", "eyJhbGci.eyJzdWIi", "eyJhbGci.eyJ.zdW.Ii",
			    "xyJhbGci.eyJzdWIi.c2ln", "EyJhbGci.eyJzdWIi.c2ln", "eyJhb Gci.eyJzdWIi.c2ln",
			    "eyJhbGci.eyJzdWIi.c2ln\n",
			    "eyJhbGci.eyJzdWIi.c2l\xc3\xa9", "pgc_abcdefghijklmnopqrstuvwxyz", "password123",
			    "eyJhbGci\teyJzdWIi.c2ln", NULL};
	for (const char **s = no; *s; s++)
		if (jwt_looks_like(*s))
			fail_msg("\"%s\" should not look like a JWT", *s);
	/* a megabyte of base64url with two dots: cheap, and true; jwt_peek refuses it by size */
	size_t n = 1 << 20;
	char *big = malloc(n + 1);
	assert_non_null(big);
	memset(big, 'A', n);
	big[0] = 'e';
	big[1] = 'y';
	big[100] = '.';
	big[200] = '.';
	big[n] = 0;
	assert_true(jwt_looks_like(big));
	char iss[32], kid[32];
	assert_false(jwt_peek(big, iss, sizeof iss, kid, sizeof kid));
	assert_string_equal(iss, "");
	assert_string_equal(kid, "");
	free(big);
}

static void test_peek_hostile(void **state)
{
	(void)state;
	char iss[64], kid[16];
	char *c = CLAIMS(0);
	char *tok = token(rsa_k, "RS256", "r1", c);
	assert_true(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
	assert_string_equal(iss, ISS);
	assert_string_equal(kid, "r1");
	/* small buffers: cut and terminated */
	char small[5], k2[2];
	assert_true(jwt_peek(tok, small, sizeof small, k2, sizeof k2));
	assert_string_equal(small, "http");
	assert_string_equal(k2, "r");
	free(tok);
	/* no kid, kid and iss not strings */
	tok = token_ex("{\"alg\":\"RS256\"}", c, NULL, NULL, 0);
	assert_true(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
	assert_string_equal(kid, "");
	free(tok);
	tok = token_ex("{\"alg\":\"RS256\",\"kid\":{\"a\":1}}", "{\"iss\":[1]}", NULL, NULL, 0);
	assert_true(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
	assert_string_equal(iss, "");
	assert_string_equal(kid, "");
	free(tok);
	/* a long kid and iss are cut */
	char longs[400];
	memset(longs, 'q', sizeof longs - 1);
	longs[sizeof longs - 1] = 0;
	char *hj = xsprintf("{\"alg\":\"RS256\",\"kid\":\"%s\"}", longs);
	char *cj = xsprintf("{\"iss\":\"%s\"}", longs);
	tok = token_ex(hj, cj, NULL, NULL, 0);
	assert_true(jwt_peek(tok, iss, sizeof iss, kid, sizeof kid));
	assert_int_equal(strlen(iss), sizeof iss - 1);
	assert_int_equal(strlen(kid), sizeof kid - 1);
	free(tok);
	free(hj);
	free(cj);
	/* refused shapes leave both empty */
	char *b1 = b64url_str("{\"alg\":\"RS256\"}"), *b2 = b64url_str("[]"), *b3 = b64url_str("{\"a\":\"\\u0000\"}");
	char *bad[] = {strdup(""), strdup("."), strdup(".."), strdup("a.b"), xsprintf("%s.%s.x.y", b1, b1),
		       xsprintf("%s.%s.x", b1, b2), xsprintf("%s.%s.x", b2, b1), xsprintf("%s.%sA.x", b1, b1),
		       xsprintf("%s.%s.x", b1, b3), xsprintf("%s..x", b1), xsprintf(".%s.x", b1), NULL};
	for (char **b = bad; *b; b++) {
		strcpy(iss, "stale");
		strcpy(kid, "stale");
		if (jwt_peek(*b, iss, sizeof iss, kid, sizeof kid))
			fail_msg("jwt_peek accepted \"%s\"", *b);
		assert_string_equal(iss, "");
		assert_string_equal(kid, "");
		free(*b);
	}
	free(b1);
	free(b2);
	free(b3);
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_alg_bit),
		cmocka_unit_test(test_jwks_parse_each_kind),
		cmocka_unit_test(test_jwks_alg_pinning),
		cmocka_unit_test(test_jwks_skips_unusable_keys),
		cmocka_unit_test(test_jwks_parse_rejects_non_jwks),
		cmocka_unit_test(test_jwks_key_count_is_capped),
		cmocka_unit_test(test_jwks_long_kid_truncated),
		cmocka_unit_test_setup_teardown(test_verify_each_algorithm, fixture_setup, fixture_teardown),
		cmocka_unit_test(test_verify_without_kid),
		cmocka_unit_test_setup_teardown(test_claims_paths_and_groups, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_audience_forms, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_time_claims_and_leeway, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_too_large, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_malformed, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_algorithms, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_unknown_kid, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_bad_signature, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_issuer, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_refuse_username, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_signature_checked_before_claims, fixture_setup, fixture_teardown),
		cmocka_unit_test(test_looks_like_hostile),
		cmocka_unit_test(test_peek_hostile),
		/* last: on a UBSan build a signed overflow in jwt_verify aborts the binary */
		cmocka_unit_test_setup_teardown(test_exp_largest, fixture_setup, fixture_teardown),
		cmocka_unit_test_setup_teardown(test_exp_smallest, fixture_setup, fixture_teardown),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
