/*
 * JSON Web Tokens as OIDC identity providers issue them: JWKS parsing and signature and
 * claim verification (RFC 7515/7517/7519). Algorithms are an allow-list: RS256, PS256,
 * ES256, EdDSA (Ed25519); "none" and every HMAC algorithm are refused, so a public key
 * can never be used as an HMAC secret. Pure: no I/O, no logging.
 */
#ifndef PGC_JWT_H
#define PGC_JWT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct evp_pkey_st EVP_PKEY;

#define JWT_MAX_TOKEN 16384
#define JWT_MAX_GROUPS 256

enum {
	JWT_ALG_RS256 = 1 << 0,
	JWT_ALG_PS256 = 1 << 1,
	JWT_ALG_ES256 = 1 << 2,
	JWT_ALG_EDDSA = 1 << 3,
	JWT_ALG_ALL = 0xf,
};

/* The bit for an algorithm name, or 0 when it is not one pgcordon accepts. */
unsigned jwt_alg_bit(const char *name);

typedef struct {
	char kid[128];
	unsigned algs;  /* algorithms this key may verify (from kty/crv, narrowed by "alg") */
	EVP_PKEY *pkey;
} JwtKey;

typedef struct {
	JwtKey *keys;
	int n;
} JwtKeySet;

/* Parses a JWKS document; keys of unsupported types are skipped. */
bool jwks_parse(const char *json, size_t len, JwtKeySet *out, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void jwks_free(JwtKeySet *ks);
bool jwks_has_kid(const JwtKeySet *ks, const char *kid);

typedef struct {
	const char *issuer;
	const char *audience;
	int leeway_s;
	const char *username_claim; /* dot path: "email", "realm_access.user" */
	const char *groups_claim;   /* dot path to an array of strings (or one string) */
	unsigned algs;              /* allowed algorithms */
} JwtRules;

typedef struct {
	char username[256];
	char *groups[JWT_MAX_GROUPS];
	int ngroups;
	int64_t exp;
	char kid[128];
	char alg[16];
} JwtIdentity;

typedef enum {
	JWT_OK,
	JWT_MALFORMED,
	JWT_TOO_LARGE,
	JWT_BAD_ALG,
	JWT_UNKNOWN_KID,
	JWT_BAD_SIGNATURE,
	JWT_EXPIRED,
	JWT_NOT_YET_VALID,
	JWT_BAD_ISSUER,
	JWT_BAD_AUDIENCE,
	JWT_MISSING_CLAIM,
} JwtResult;

/* Is the text shaped like a compact JWS ("ey...", three dot-separated parts, printable
 * ASCII)? Cheap; verifies nothing: a token-shaped password is verified and refused precisely. */
bool jwt_looks_like(const char *token);

/* Reads the unverified issuer and kid, to choose the issuer whose keys verify the token. */
bool jwt_peek(const char *token, char *iss, size_t isslen, char *kid, size_t kidlen);

/* Verifies signature and claims at time now (seconds). err says why, never echoing the token. */
JwtResult jwt_verify(const char *token, const JwtKeySet *keys, const JwtRules *rules, int64_t now,
		     JwtIdentity *out, char *err, size_t errlen) __attribute__((warn_unused_result));
void jwt_identity_free(JwtIdentity *id);

#endif
