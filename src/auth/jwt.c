/* JWT verification against a JWKS with OpenSSL 3 EVP; claims read with jansson. */
#include "auth/jwt.h"

#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

unsigned jwt_alg_bit(const char *name)
{
	if (!name)
		return 0;
	if (strcmp(name, "RS256") == 0)
		return JWT_ALG_RS256;
	if (strcmp(name, "PS256") == 0)
		return JWT_ALG_PS256;
	if (strcmp(name, "ES256") == 0)
		return JWT_ALG_ES256;
	if (strcmp(name, "EdDSA") == 0)
		return JWT_ALG_EDDSA;
	return 0;
}

/* base64url without padding → bytes; -1 on anything else. */
static int b64url_decode(const char *in, size_t len, unsigned char *out, size_t outmax)
{
	if (len % 4 == 1 || len > 4 * (outmax / 3 + 2))
		return -1;
	size_t padded = (len + 3) / 4 * 4;
	char *tmp = xmalloc(padded + 1);
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (c == '-')
			c = '+';
		else if (c == '_')
			c = '/';
		else if (c == '+' || c == '/' || c == '=')
			c = '!'; /* not base64url */
		tmp[i] = c;
	}
	for (size_t i = len; i < padded; i++)
		tmp[i] = '=';
	int n = util_b64_decode(tmp, padded, out, outmax);
	free(tmp);
	return n;
}

/* Decodes a base64url member of a JWK (n, e, x, y) into a malloc'd buffer. */
static unsigned char *jwk_bytes(json_t *jwk, const char *name, int *len)
{
	json_t *v = json_object_get(jwk, name);
	if (!json_is_string(v))
		return NULL;
	const char *s = json_string_value(v);
	size_t sl = strlen(s);
	if (sl > 2048)
		return NULL;
	unsigned char *buf = xmalloc(sl);
	*len = b64url_decode(s, sl, buf, sl);
	if (*len <= 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

static EVP_PKEY *rsa_key(json_t *jwk)
{
	int nlen, elen;
	unsigned char *n = jwk_bytes(jwk, "n", &nlen);
	unsigned char *e = jwk_bytes(jwk, "e", &elen);
	EVP_PKEY *pkey = NULL;
	if (n && e && nlen >= 256) { /* at least 2048-bit moduli */
		BIGNUM *bn = BN_bin2bn(n, nlen, NULL), *be = BN_bin2bn(e, elen, NULL);
		OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
		OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn);
		OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be);
		OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
		if (ctx && params && EVP_PKEY_fromdata_init(ctx) == 1)
			EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
		EVP_PKEY_CTX_free(ctx);
		OSSL_PARAM_free(params);
		OSSL_PARAM_BLD_free(bld);
		BN_free(bn);
		BN_free(be);
	}
	free(n);
	free(e);
	return pkey;
}

static EVP_PKEY *ec_key(json_t *jwk)
{
	json_t *crv = json_object_get(jwk, "crv");
	if (!json_is_string(crv) || strcmp(json_string_value(crv), "P-256") != 0)
		return NULL;
	int xlen, ylen;
	unsigned char *x = jwk_bytes(jwk, "x", &xlen);
	unsigned char *y = jwk_bytes(jwk, "y", &ylen);
	EVP_PKEY *pkey = NULL;
	if (x && y && xlen == 32 && ylen == 32) {
		unsigned char point[65];
		point[0] = 0x04; /* uncompressed */
		memcpy(point + 1, x, 32);
		memcpy(point + 33, y, 32);
		OSSL_PARAM params[] = {
			OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)"prime256v1", 0),
			OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, point, sizeof point),
			OSSL_PARAM_construct_end(),
		};
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
		if (ctx && EVP_PKEY_fromdata_init(ctx) == 1)
			EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params);
		EVP_PKEY_CTX_free(ctx);
	}
	free(x);
	free(y);
	return pkey;
}

static EVP_PKEY *okp_key(json_t *jwk)
{
	json_t *crv = json_object_get(jwk, "crv");
	if (!json_is_string(crv) || strcmp(json_string_value(crv), "Ed25519") != 0)
		return NULL;
	int xlen;
	unsigned char *x = jwk_bytes(jwk, "x", &xlen);
	EVP_PKEY *pkey = NULL;
	if (x && xlen == 32)
		pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, 32);
	free(x);
	return pkey;
}

bool jwks_parse(const char *json, size_t len, JwtKeySet *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	json_error_t jerr;
	json_t *root = json_loadb(json, len, 0, &jerr);
	json_t *keys = root ? json_object_get(root, "keys") : NULL;
	if (!json_is_array(keys)) {
		snprintf(err, errlen, "not a JWKS document (no \"keys\" array)");
		json_decref(root);
		return false;
	}
	size_t n = json_array_size(keys);
	if (n > 100)
		n = 100;
	out->keys = xcalloc(n ? n : 1, sizeof *out->keys);
	for (size_t i = 0; i < n; i++) {
		json_t *jwk = json_array_get(keys, i);
		const char *kty = json_string_value(json_object_get(jwk, "kty"));
		const char *use = json_string_value(json_object_get(jwk, "use"));
		const char *alg = json_string_value(json_object_get(jwk, "alg"));
		const char *kid = json_string_value(json_object_get(jwk, "kid"));
		if (!kty || (use && strcmp(use, "sig") != 0))
			continue;
		JwtKey k = {0};
		if (strcmp(kty, "RSA") == 0) {
			k.pkey = rsa_key(jwk);
			k.algs = JWT_ALG_RS256 | JWT_ALG_PS256;
		} else if (strcmp(kty, "EC") == 0) {
			k.pkey = ec_key(jwk);
			k.algs = JWT_ALG_ES256;
		} else if (strcmp(kty, "OKP") == 0) {
			k.pkey = okp_key(jwk);
			k.algs = JWT_ALG_EDDSA;
		}
		if (alg)
			k.algs &= jwt_alg_bit(alg); /* a key pinned to one algorithm verifies only that */
		if (!k.pkey || !k.algs) {
			EVP_PKEY_free(k.pkey);
			continue;
		}
		snprintf(k.kid, sizeof k.kid, "%s", kid ? kid : "");
		out->keys[out->n++] = k;
	}
	json_decref(root);
	return true;
}

void jwks_free(JwtKeySet *ks)
{
	for (int i = 0; i < ks->n; i++)
		EVP_PKEY_free(ks->keys[i].pkey);
	free(ks->keys);
	memset(ks, 0, sizeof *ks);
}

bool jwks_has_kid(const JwtKeySet *ks, const char *kid)
{
	for (int i = 0; i < ks->n; i++)
		if (strcmp(ks->keys[i].kid, kid) == 0)
			return true;
	return false;
}

bool jwt_looks_like(const char *token)
{
	/* Shape only (a JSON header always encodes to "ey...", and three dot-separated parts):
	 * anything token-shaped goes to verification and gets a precise refusal. */
	int dots = 0;
	for (const char *p = token; *p; p++) {
		if (*p <= ' ' || *p > '~')
			return false; /* spaces, controls, non-ASCII: a password, not a token */
		dots += *p == '.';
	}
	return dots == 2 && token[0] == 'e' && token[1] == 'y';
}

typedef struct {
	const char *parts[3];
	size_t lens[3];
} Split;

static bool b64url_chars(const char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!((p[i] >= 'A' && p[i] <= 'Z') || (p[i] >= 'a' && p[i] <= 'z') || (p[i] >= '0' && p[i] <= '9') ||
		      p[i] == '-' || p[i] == '_'))
			return false;
	return true;
}

static bool split_token(const char *token, Split *s)
{
	const char *p = token;
	for (int i = 0; i < 3; i++) {
		const char *dot = i < 2 ? strchr(p, '.') : p + strlen(p);
		if (!dot)
			return false;
		s->parts[i] = p;
		s->lens[i] = (size_t)(dot - p);
		p = dot + 1;
	}
	if (!s->lens[0] || !s->lens[1] || strchr(s->parts[2], '.'))
		return false;
	for (int i = 0; i < 3; i++)
		if (!b64url_chars(s->parts[i], s->lens[i]))
			return false; /* standard base64 (+ /), padding, spaces: not a compact JWS */
	return true;
}

static json_t *decode_json_part(const char *part, size_t len)
{
	unsigned char *buf = xmalloc(len + 4);
	int n = b64url_decode(part, len, buf, len + 3);
	json_t *j = NULL;
	if (n > 0) {
		json_error_t jerr;
		j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
		if (j && !json_is_object(j)) {
			json_decref(j);
			j = NULL;
		}
	}
	free(buf);
	return j;
}

bool jwt_peek(const char *token, char *iss, size_t isslen, char *kid, size_t kidlen)
{
	Split s;
	iss[0] = kid[0] = 0;
	if (strlen(token) > JWT_MAX_TOKEN || !split_token(token, &s))
		return false;
	json_t *h = decode_json_part(s.parts[0], s.lens[0]);
	json_t *c = decode_json_part(s.parts[1], s.lens[1]);
	bool ok = h && c;
	if (ok) {
		const char *i = json_string_value(json_object_get(c, "iss"));
		const char *k = json_string_value(json_object_get(h, "kid"));
		snprintf(iss, isslen, "%s", i ? i : "");
		snprintf(kid, kidlen, "%s", k ? k : "");
	}
	json_decref(h);
	json_decref(c);
	return ok;
}

/* Follows a dot path ("realm_access.roles") into the claims. */
static json_t *claim_at(json_t *claims, const char *path)
{
	char buf[256];
	snprintf(buf, sizeof buf, "%s", path);
	json_t *cur = claims;
	char *save = NULL;
	for (char *part = strtok_r(buf, ".", &save); part && cur; part = strtok_r(NULL, ".", &save))
		cur = json_is_object(cur) ? json_object_get(cur, part) : NULL;
	return cur;
}

static bool verify_signature(EVP_PKEY *pkey, unsigned alg, const unsigned char *input, size_t inlen,
			     const unsigned char *sig, size_t siglen)
{
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pctx = NULL;
	unsigned char *der = NULL;
	bool ok = false;
	if (!md)
		return false;
	if (alg == JWT_ALG_EDDSA) {
		ok = EVP_DigestVerifyInit(md, NULL, NULL, NULL, pkey) == 1 &&
		     EVP_DigestVerify(md, sig, siglen, input, inlen) == 1;
		EVP_MD_CTX_free(md);
		return ok;
	}
	if (EVP_DigestVerifyInit(md, &pctx, EVP_sha256(), NULL, pkey) != 1)
		goto done;
	if (alg == JWT_ALG_PS256 && (EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) != 1 ||
				     EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) != 1))
		goto done;
	if (alg == JWT_ALG_ES256) {
		/* JWS carries R || S (32 bytes each); OpenSSL wants DER. */
		if (siglen != 64)
			goto done;
		ECDSA_SIG *es = ECDSA_SIG_new();
		BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
		if (!es || !r || !s || ECDSA_SIG_set0(es, r, s) != 1) {
			BN_free(r);
			BN_free(s);
			ECDSA_SIG_free(es);
			goto done;
		}
		int dlen = i2d_ECDSA_SIG(es, &der);
		ECDSA_SIG_free(es);
		if (dlen <= 0)
			goto done;
		ok = EVP_DigestVerify(md, der, (size_t)dlen, input, inlen) == 1;
		goto done;
	}
	ok = EVP_DigestVerify(md, sig, siglen, input, inlen) == 1;
done:
	OPENSSL_free(der);
	EVP_MD_CTX_free(md);
	return ok;
}

static JwtResult fail(JwtResult r, char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static JwtResult fail(JwtResult r, char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return r;
}

static bool audience_ok(json_t *aud, const char *want)
{
	if (json_is_string(aud))
		return strcmp(json_string_value(aud), want) == 0;
	size_t i;
	json_t *v;
	json_array_foreach(aud, i, v)
	{
		if (json_is_string(v) && strcmp(json_string_value(v), want) == 0)
			return true;
	}
	return false;
}

/* A NumericDate claim, clamped to ±2^62 so arithmetic with leeways and clocks cannot overflow. */
static bool numeric_claim(json_t *claims, const char *name, int64_t *out)
{
	const int64_t limit = (int64_t)1 << 62;
	json_t *v = json_object_get(claims, name);
	if (!json_is_number(v))
		return false;
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);
		*out = i > limit ? limit : i < -limit ? -limit : (int64_t)i;
	} else {
		double d = json_real_value(v);
		*out = !(d == d) ? -limit : d > (double)limit ? limit : d < (double)-limit ? -limit : (int64_t)d;
	}
	return true;
}

JwtResult jwt_verify(const char *token, const JwtKeySet *keys, const JwtRules *rules, int64_t now,
		     JwtIdentity *out, char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	if (strlen(token) > JWT_MAX_TOKEN)
		return fail(JWT_TOO_LARGE, err, errlen, "token too large (over %d bytes)", JWT_MAX_TOKEN);
	Split sp;
	if (!split_token(token, &sp))
		return fail(JWT_MALFORMED, err, errlen, "malformed token: not three base64url parts");
	/* (checked before anything is decoded: no parser sees a part that is not base64url) */
	json_t *header = decode_json_part(sp.parts[0], sp.lens[0]);
	json_t *claims = decode_json_part(sp.parts[1], sp.lens[1]);
	JwtResult r = JWT_OK;
	unsigned char *sig = NULL;
	if (!header || !claims) {
		r = fail(JWT_MALFORMED, err, errlen, "malformed token: header or claims are not base64url JSON");
		goto out;
	}
	const char *alg = json_string_value(json_object_get(header, "alg"));
	unsigned bit = jwt_alg_bit(alg);
	if (!bit || !(bit & rules->algs)) {
		r = fail(JWT_BAD_ALG, err, errlen, "algorithm \"%.20s\" is not accepted", alg ? alg : "(none)");
		goto out;
	}
	snprintf(out->alg, sizeof out->alg, "%s", alg);
	const char *kid = json_string_value(json_object_get(header, "kid"));
	snprintf(out->kid, sizeof out->kid, "%s", kid ? kid : "");
	const JwtKey *key = NULL;
	int candidates = 0;
	for (int i = 0; i < keys->n; i++) {
		if (!(keys->keys[i].algs & bit))
			continue;
		if (kid ? strcmp(keys->keys[i].kid, kid) == 0 : true) {
			key = &keys->keys[i];
			candidates++;
		}
	}
	if (!key || (!kid && candidates != 1)) {
		r = fail(JWT_UNKNOWN_KID, err, errlen, "no %s signing key with kid \"%.64s\"", alg, kid ? kid : "");
		goto out;
	}
	sig = xmalloc(sp.lens[2] + 4);
	int siglen = b64url_decode(sp.parts[2], sp.lens[2], sig, sp.lens[2] + 3);
	size_t inlen = sp.lens[0] + 1 + sp.lens[1];
	if (siglen <= 0 || !verify_signature(key->pkey, bit, (const unsigned char *)token, inlen, sig, (size_t)siglen)) {
		r = fail(JWT_BAD_SIGNATURE, err, errlen, "signature does not verify (kid \"%.64s\")", out->kid);
		goto out;
	}
	/* Signed by a key we trust: now the claims. */
	const char *iss = json_string_value(json_object_get(claims, "iss"));
	if (!iss || strcmp(iss, rules->issuer) != 0) {
		r = fail(JWT_BAD_ISSUER, err, errlen, "issuer \"%.100s\" is not \"%.100s\"", iss ? iss : "", rules->issuer);
		goto out;
	}
	if (!audience_ok(json_object_get(claims, "aud"), rules->audience)) {
		r = fail(JWT_BAD_AUDIENCE, err, errlen, "audience does not include \"%.100s\"", rules->audience);
		goto out;
	}
	int64_t exp, nbf, iat;
	if (!numeric_claim(claims, "exp", &exp)) {
		r = fail(JWT_MISSING_CLAIM, err, errlen, "token has no exp claim");
		goto out;
	}
	if (now > exp + rules->leeway_s) {
		r = fail(JWT_EXPIRED, err, errlen, "token expired %.0f s ago", (double)now - (double)exp);
		goto out;
	}
	if (numeric_claim(claims, "nbf", &nbf) && nbf > now + rules->leeway_s) {
		r = fail(JWT_NOT_YET_VALID, err, errlen, "token not valid for another %.0f s", (double)nbf - (double)now);
		goto out;
	}
	if (numeric_claim(claims, "iat", &iat) && iat > now + rules->leeway_s) {
		r = fail(JWT_NOT_YET_VALID, err, errlen, "token issued %.0f s in the future", (double)iat - (double)now);
		goto out;
	}
	out->exp = exp;
	json_t *user = claim_at(claims, rules->username_claim);
	if (!json_is_string(user) || !*json_string_value(user) || strlen(json_string_value(user)) >= sizeof out->username) {
		r = fail(JWT_MISSING_CLAIM, err, errlen, "token has no usable \"%.64s\" claim", rules->username_claim);
		goto out;
	}
	snprintf(out->username, sizeof out->username, "%s", json_string_value(user));
	json_t *groups = claim_at(claims, rules->groups_claim);
	if (json_is_string(groups)) {
		out->groups[out->ngroups++] = xstrdup(json_string_value(groups));
	} else if (json_is_array(groups)) {
		size_t i;
		json_t *g;
		json_array_foreach(groups, i, g)
		{
			if (json_is_string(g) && out->ngroups < JWT_MAX_GROUPS && strlen(json_string_value(g)) < 256)
				out->groups[out->ngroups++] = xstrdup(json_string_value(g));
		}
	}
out:
	free(sig);
	json_decref(header);
	json_decref(claims);
	if (r != JWT_OK)
		jwt_identity_free(out);
	return r;
}

void jwt_identity_free(JwtIdentity *id)
{
	for (int i = 0; i < id->ngroups; i++)
		free(id->groups[i]);
	id->ngroups = 0;
}
