/* SCRAM-SHA-256 server and client, verifiers, and the md5 password response. */
#include "auth/scram.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static char *test_server_nonce;

void scram_server_set_nonce_for_test(const char *nonce)
{
	free(test_server_nonce);
	test_server_nonce = nonce ? xstrdup(nonce) : NULL;
}

static void hmac(const uint8_t *key, size_t keylen, const void *data, size_t n, uint8_t out[32])
{
	unsigned int outlen = 32;
	HMAC(EVP_sha256(), key, (int)keylen, data, n, out, &outlen);
}

static void sha256(const uint8_t *data, size_t n, uint8_t out[32]) { SHA256(data, n, out); }

static bool salted_password(const char *password, const uint8_t *salt, int saltlen, int iterations,
			    uint8_t out[32])
{
	return PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, saltlen, iterations,
				 EVP_sha256(), 32, out) == 1;
}

/* Random printable nonce: base64 of 18 random bytes (24 chars, no ',' by construction). */
static void make_nonce(char out[25])
{
	uint8_t raw[18];
	util_random(raw, sizeof raw);
	util_b64_encode(raw, sizeof raw, out);
}

bool scram_parse_verifier(const char *text, ScramVerifier *out)
{
	memset(out, 0, sizeof *out);
	if (strncmp(text, "SCRAM-SHA-256$", 14) != 0)
		return false;
	const char *p = text + 14;
	char *end;
	long iter = strtol(p, &end, 10);
	if (end == p || *end != ':' || iter < 1 || iter > SCRAM_MAX_ITERATIONS)
		return false;
	out->iterations = (int)iter;
	const char *salt = end + 1;
	const char *dollar = strchr(salt, '$');
	if (!dollar)
		return false;
	out->saltlen = util_b64_decode(salt, (size_t)(dollar - salt), out->salt, sizeof out->salt);
	if (out->saltlen <= 0)
		return false;
	const char *stored = dollar + 1;
	const char *colon = strchr(stored, ':');
	if (!colon)
		return false;
	if (util_b64_decode(stored, (size_t)(colon - stored), out->stored_key, SCRAM_KEY_LEN) != SCRAM_KEY_LEN)
		return false;
	const char *server = colon + 1;
	if (util_b64_decode(server, strlen(server), out->server_key, SCRAM_KEY_LEN) != SCRAM_KEY_LEN)
		return false;
	return true;
}

bool scram_verifier_from_password(const char *password, const uint8_t *salt, int saltlen, int iterations,
				  ScramVerifier *out)
{
	uint8_t sp[32], client_key[32];
	memset(out, 0, sizeof *out);
	if (saltlen <= 0 || saltlen > SCRAM_MAX_SALT || iterations < 1 || iterations > SCRAM_MAX_ITERATIONS ||
	    !salted_password(password, salt, saltlen, iterations, sp))
		return false;
	out->iterations = iterations;
	out->saltlen = saltlen;
	memcpy(out->salt, salt, (size_t)saltlen);
	hmac(sp, 32, "Client Key", 10, client_key);
	sha256(client_key, 32, out->stored_key);
	hmac(sp, 32, "Server Key", 10, out->server_key);
	OPENSSL_cleanse(sp, sizeof sp);
	OPENSSL_cleanse(client_key, sizeof client_key);
	return true;
}

char *scram_make_verifier(const char *password, int iterations)
{
	uint8_t salt[16];
	ScramVerifier v;
	char salt64[32], stored64[48], server64[48];
	util_random(salt, sizeof salt);
	if (!scram_verifier_from_password(password, salt, sizeof salt, iterations, &v))
		return NULL;
	util_b64_encode(v.salt, (size_t)v.saltlen, salt64);
	util_b64_encode(v.stored_key, SCRAM_KEY_LEN, stored64);
	util_b64_encode(v.server_key, SCRAM_KEY_LEN, server64);
	size_t n = 64 + strlen(salt64) + strlen(stored64) + strlen(server64);
	char *out = xmalloc(n);
	snprintf(out, n, "SCRAM-SHA-256$%d:%s$%s:%s", iterations, salt64, stored64, server64);
	return out;
}

static uint8_t mock_secret[32];
static pthread_once_t mock_once = PTHREAD_ONCE_INIT;

static void mock_secret_init(void) { util_random(mock_secret, sizeof mock_secret); }

void scram_mock_verifier(const char *user, ScramVerifier *out)
{
	/* A per-process secret gives a stable fake salt per name; the keys match nothing. */
	pthread_once(&mock_once, mock_secret_init);
	memset(out, 0, sizeof *out);
	out->iterations = SCRAM_DEFAULT_ITERATIONS;
	uint8_t h[32];
	hmac(mock_secret, sizeof mock_secret, user, strlen(user), h);
	out->saltlen = 16;
	memcpy(out->salt, h, 16);
	util_random(out->stored_key, SCRAM_KEY_LEN);
	util_random(out->server_key, SCRAM_KEY_LEN);
}

/* Finds "k=" attribute at the start of s (the caller walks comma-separated parts). */
static const char *attr(const char *part, char k)
{
	return part[0] == k && part[1] == '=' ? part + 2 : NULL;
}

/* Splits a copy of msg on ',' into parts; returns count or -1 on overflow. */
static int split(char *buf, char **parts, int max)
{
	int n = 0;
	char *p = buf;
	for (;;) {
		if (n == max)
			return -1;
		parts[n++] = p;
		char *c = strchr(p, ',');
		if (!c)
			break;
		*c = 0;
		p = c + 1;
	}
	return n;
}

static bool printable_nonce(const char *s)
{
	if (!*s)
		return false;
	for (; *s; s++)
		if (*s < 0x21 || *s > 0x7e || *s == ',')
			return false;
	return true;
}

void scram_server_init(ScramServer *s, const ScramVerifier *v)
{
	memset(s, 0, sizeof *s);
	s->verifier = *v;
	s->state = SCRAM_INIT;
}

bool scram_server_first(ScramServer *s, const char *msg, size_t len, char *out, size_t outlen,
			char *err, size_t errlen)
{
	char buf[SCRAM_MSG_MAX];
	char *parts[16];
	if (s->state != SCRAM_INIT || len == 0 || len >= sizeof buf || memchr(msg, 0, len)) {
		snprintf(err, errlen, "malformed SCRAM message (length)");
		return false;
	}
	memcpy(buf, msg, len);
	buf[len] = 0;
	/* gs2-header: "n,," or "y,,"; "p=..." asks for channel binding we did not offer. */
	if (buf[0] == 'p') {
		snprintf(err, errlen, "channel binding was requested but SCRAM-SHA-256-PLUS was not offered");
		return false;
	}
	if ((buf[0] != 'n' && buf[0] != 'y') || buf[1] != ',') {
		snprintf(err, errlen, "malformed SCRAM message (gs2 header)");
		return false;
	}
	const char *authzid_end = strchr(buf + 2, ',');
	if (!authzid_end || authzid_end != buf + 2) {
		snprintf(err, errlen, "malformed SCRAM message (authzid is not supported)");
		return false;
	}
	size_t gs2len = (size_t)(authzid_end - buf) + 1;
	memcpy(s->gs2_header, buf, gs2len);
	s->gs2_header[gs2len] = 0;
	const char *bare = buf + gs2len;
	snprintf(s->client_first_bare, sizeof s->client_first_bare, "%s", bare);

	char copy[SCRAM_MSG_MAX];
	snprintf(copy, sizeof copy, "%s", bare);
	int n = split(copy, parts, 16);
	if (n < 2 || !attr(parts[0], 'n') || !attr(parts[1], 'r') || !printable_nonce(attr(parts[1], 'r'))) {
		snprintf(err, errlen, "malformed SCRAM message (client-first)");
		return false;
	}
	if (parts[0][0] == 'm') {
		snprintf(err, errlen, "malformed SCRAM message (mandatory extension)");
		return false;
	}
	char snonce[64];
	if (test_server_nonce)
		snprintf(snonce, sizeof snonce, "%s", test_server_nonce);
	else
		make_nonce(snonce);
	snprintf(s->nonce, sizeof s->nonce, "%s%s", attr(parts[1], 'r'), snonce);
	char salt64[SCRAM_MAX_SALT * 2];
	util_b64_encode(s->verifier.salt, s->verifier.saltlen, salt64);
	int w = snprintf(s->server_first, sizeof s->server_first, "r=%s,s=%s,i=%d", s->nonce, salt64,
			 s->verifier.iterations);
	if (w < 0 || (size_t)w >= sizeof s->server_first || (size_t)w >= outlen) {
		snprintf(err, errlen, "malformed SCRAM message (nonce too long)");
		return false;
	}
	memcpy(out, s->server_first, (size_t)w + 1);
	s->state = SCRAM_SENT_FIRST;
	return true;
}

bool scram_server_final(ScramServer *s, const char *msg, size_t len, bool *ok, char *out,
			size_t outlen, char *err, size_t errlen)
{
	char buf[SCRAM_MSG_MAX];
	char *parts[16];
	*ok = false;
	if (s->state != SCRAM_SENT_FIRST || len == 0 || len >= sizeof buf || memchr(msg, 0, len)) {
		snprintf(err, errlen, "malformed SCRAM message (length)");
		return false;
	}
	memcpy(buf, msg, len);
	buf[len] = 0;
	/* The proof is the last attribute; AuthMessage takes everything before ",p=". */
	char *pp = strstr(buf, ",p=");
	if (!pp) {
		snprintf(err, errlen, "malformed SCRAM message (no proof)");
		return false;
	}
	size_t without_proof_len = (size_t)(pp - buf);
	int n = split(buf, parts, 16);
	if (n < 3 || !attr(parts[0], 'c') || !attr(parts[1], 'r') || !attr(parts[n - 1], 'p')) {
		snprintf(err, errlen, "malformed SCRAM message (client-final)");
		return false;
	}
	char expect_cb[16];
	util_b64_encode((const uint8_t *)s->gs2_header, strlen(s->gs2_header), expect_cb);
	if (strcmp(attr(parts[0], 'c'), expect_cb) != 0) {
		snprintf(err, errlen, "SCRAM channel binding check failed");
		return false;
	}
	if (strcmp(attr(parts[1], 'r'), s->nonce) != 0) {
		snprintf(err, errlen, "SCRAM nonce mismatch");
		return false;
	}
	uint8_t proof[SCRAM_KEY_LEN + 4];
	const char *p64 = attr(parts[n - 1], 'p');
	if (util_b64_decode(p64, strlen(p64), proof, sizeof proof) != SCRAM_KEY_LEN) {
		snprintf(err, errlen, "malformed SCRAM message (proof)");
		return false;
	}
	/* AuthMessage = client-first-bare "," server-first "," client-final-without-proof */
	char auth[SCRAM_MSG_MAX * 3 + 4];
	int an = snprintf(auth, sizeof auth, "%s,%s,%.*s", s->client_first_bare, s->server_first,
			  (int)without_proof_len, msg);
	uint8_t client_sig[32], client_key[32], stored[32];
	hmac(s->verifier.stored_key, 32, auth, (size_t)an, client_sig);
	for (int i = 0; i < 32; i++)
		client_key[i] = proof[i] ^ client_sig[i];
	sha256(client_key, 32, stored);
	OPENSSL_cleanse(client_key, sizeof client_key);
	s->state = SCRAM_DONE;
	if (!util_ct_equal(stored, s->verifier.stored_key, 32))
		return true; /* well-formed, wrong password */
	uint8_t server_sig[32];
	char sig64[48];
	hmac(s->verifier.server_key, 32, auth, (size_t)an, server_sig);
	util_b64_encode(server_sig, 32, sig64);
	if (snprintf(out, outlen, "v=%s", sig64) >= (int)outlen) {
		snprintf(err, errlen, "output buffer too small");
		return false;
	}
	*ok = true;
	return true;
}

void scram_client_first_with_nonce(ScramClient *c, const char *nonce, char *out, size_t outlen)
{
	memset(c, 0, sizeof *c);
	snprintf(c->client_nonce, sizeof c->client_nonce, "%s", nonce);
	snprintf(c->client_first_bare, sizeof c->client_first_bare, "n=,r=%s", c->client_nonce);
	snprintf(out, outlen, "n,,%s", c->client_first_bare);
	c->state = SCRAM_SENT_FIRST;
}

void scram_client_first(ScramClient *c, char *out, size_t outlen)
{
	char nonce[25];
	make_nonce(nonce);
	scram_client_first_with_nonce(c, nonce, out, outlen);
}

bool scram_client_final(ScramClient *c, const char *password, const char *msg, size_t len,
			char *out, size_t outlen, char *err, size_t errlen)
{
	char buf[SCRAM_MSG_MAX];
	char *parts[16];
	if (c->state != SCRAM_SENT_FIRST || len == 0 || len >= sizeof buf || memchr(msg, 0, len)) {
		snprintf(err, errlen, "malformed SCRAM server-first message");
		return false;
	}
	memcpy(buf, msg, len);
	buf[len] = 0;
	int n = split(buf, parts, 16);
	if (n < 3 || !attr(parts[0], 'r') || !attr(parts[1], 's') || !attr(parts[2], 'i')) {
		snprintf(err, errlen, "malformed SCRAM server-first message");
		return false;
	}
	const char *nonce = attr(parts[0], 'r');
	if (strncmp(nonce, c->client_nonce, strlen(c->client_nonce)) != 0 ||
	    strlen(nonce) <= strlen(c->client_nonce) || !printable_nonce(nonce)) {
		snprintf(err, errlen, "SCRAM server nonce does not extend ours");
		return false;
	}
	uint8_t salt[SCRAM_MAX_SALT];
	const char *s64 = attr(parts[1], 's');
	int saltlen = util_b64_decode(s64, strlen(s64), salt, sizeof salt);
	char *end;
	long iter = strtol(attr(parts[2], 'i'), &end, 10);
	if (saltlen <= 0 || *end || iter < 1 || iter > SCRAM_MAX_ITERATIONS) {
		snprintf(err, errlen, "SCRAM server-first has a bad salt or iteration count");
		return false;
	}
	uint8_t sp[32], client_key[32], stored[32], server_key[32], client_sig[32], proof[32];
	if (!salted_password(password, salt, saltlen, (int)iter, sp)) {
		snprintf(err, errlen, "PBKDF2 failed");
		return false;
	}
	hmac(sp, 32, "Client Key", 10, client_key);
	sha256(client_key, 32, stored);
	hmac(sp, 32, "Server Key", 10, server_key);
	char without_proof[SCRAM_MSG_MAX];
	snprintf(without_proof, sizeof without_proof, "c=biws,r=%s", nonce);
	char auth[SCRAM_MSG_MAX * 3 + 4];
	int an = snprintf(auth, sizeof auth, "%s,%.*s,%s", c->client_first_bare, (int)len, msg,
			  without_proof);
	hmac(stored, 32, auth, (size_t)an, client_sig);
	for (int i = 0; i < 32; i++)
		proof[i] = client_key[i] ^ client_sig[i];
	hmac(server_key, 32, auth, (size_t)an, c->server_signature);
	char proof64[48];
	util_b64_encode(proof, 32, proof64);
	OPENSSL_cleanse(sp, sizeof sp);
	OPENSSL_cleanse(client_key, sizeof client_key);
	OPENSSL_cleanse(server_key, sizeof server_key);
	if (snprintf(out, outlen, "%s,p=%s", without_proof, proof64) >= (int)outlen) {
		snprintf(err, errlen, "SCRAM message too long");
		return false;
	}
	c->state = SCRAM_DONE;
	return true;
}

bool scram_client_verify(ScramClient *c, const char *msg, size_t len, char *err, size_t errlen)
{
	uint8_t sig[SCRAM_KEY_LEN + 4];
	if (c->state != SCRAM_DONE || len < 3 || msg[0] != 'v' || msg[1] != '=') {
		snprintf(err, errlen, "malformed SCRAM server-final message");
		return false;
	}
	size_t siglen = len - 2;
	const char *comma = memchr(msg + 2, ',', siglen);
	if (comma)
		siglen = (size_t)(comma - (msg + 2));
	if (util_b64_decode(msg + 2, siglen, sig, sizeof sig) != SCRAM_KEY_LEN ||
	    !util_ct_equal(sig, c->server_signature, SCRAM_KEY_LEN)) {
		snprintf(err, errlen, "upstream server signature does not verify");
		return false;
	}
	return true;
}

void auth_md5_response(const char *user, const char *password, const uint8_t salt[4], char out[36])
{
	uint8_t digest[16];
	char inner[33];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int dl;

	EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
	EVP_DigestUpdate(ctx, password, strlen(password));
	EVP_DigestUpdate(ctx, user, strlen(user));
	EVP_DigestFinal_ex(ctx, digest, &dl);
	util_hex_encode(digest, 16, inner);
	EVP_DigestInit_ex(ctx, EVP_md5(), NULL);
	EVP_DigestUpdate(ctx, inner, 32);
	EVP_DigestUpdate(ctx, salt, 4);
	EVP_DigestFinal_ex(ctx, digest, &dl);
	EVP_MD_CTX_free(ctx);
	memcpy(out, "md5", 3);
	util_hex_encode(digest, 16, out + 3);
}
