/* libFuzzer target: JWKS documents and tokens (jwt_peek, jwt_verify) against a parsed key set. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* The input is "JWKS\xffTOKEN": both come from outside (issuer and client). */
	const uint8_t *cut = memchr(data, 0xff, size);
	size_t n1 = cut ? (size_t)(cut - data) : size;
	char *token = malloc(size - n1 + 1);
	if (!token)
		return 0;
	size_t tl = cut ? size - n1 - 1 : 0;
	memcpy(token, cut ? (const char *)cut + 1 : "", tl);
	token[tl] = 0;

	JwtKeySet ks;
	char err[300];
	if (!jwks_parse((const char *)data, n1, &ks, err, sizeof err))
		memset(&ks, 0, sizeof ks);
	char iss[256], kid[128];
	(void)jwt_looks_like(token);
	(void)jwt_peek(token, iss, sizeof iss, kid, sizeof kid);
	JwtRules rules = {.issuer = "https://idp.test", .audience = "pgcordon", .leeway_s = 30,
			  .username_claim = "realm.user", .groups_claim = "groups", .algs = JWT_ALG_ALL};
	JwtIdentity id;
	if (jwt_verify(token, &ks, &rules, 1800000000, &id, err, sizeof err) == JWT_OK)
		jwt_identity_free(&id);
	jwks_free(&ks);
	free(token);
	return 0;
}
