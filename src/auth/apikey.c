/* API keys: generation, hashing, constant-time verification. */
#include "auth/apikey.h"

#include <stdio.h>
#include <string.h>

#include "core/util.h"

void apikey_hash(const char *key, char *hash, size_t hashlen)
{
	char hex[65];
	util_sha256_hex(key, strlen(key), hex);
	snprintf(hash, hashlen, "sha256:%s", hex);
}

void apikey_generate(char *key, size_t keylen, char *hash, size_t hashlen)
{
	unsigned char raw[32];
	char b64[48];
	util_random(raw, sizeof raw);
	util_b64_encode(raw, sizeof raw, b64);
	/* base64url, no padding */
	size_t n = strlen(b64);
	while (n && b64[n - 1] == '=')
		b64[--n] = 0;
	for (char *p = b64; *p; p++)
		*p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
	snprintf(key, keylen, APIKEY_PREFIX "%s", b64);
	apikey_hash(key, hash, hashlen);
}

bool apikey_looks_like(const char *password)
{
	return strncmp(password, APIKEY_PREFIX, strlen(APIKEY_PREFIX)) == 0 && strlen(password) < 200;
}

bool apikey_matches(const char *key, const char *stored_hash)
{
	char h[80];
	apikey_hash(key, h, sizeof h);
	return strlen(stored_hash) == strlen(h) && util_ct_equal(h, stored_hash, strlen(h));
}
