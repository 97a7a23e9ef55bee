/*
 * OIDC issuers: their signing keys, fetched off the worker threads. One background thread
 * discovers each issuer's jwks_uri (/.well-known/openid-configuration), fetches the JWKS
 * with libcurl, refreshes it on a schedule and, rate-limited, when a token names an
 * unknown kid. Keys stay usable when the issuer becomes unreachable; no keys means refusal.
 * Verification itself runs on the caller's thread against a reference-counted key snapshot.
 */
#ifndef PGC_OIDC_H
#define PGC_OIDC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/jwt.h"
#include "config/config.h"

/* Called on the fetch thread after an issuer's keys changed (or a fetch failed). */
typedef void (*OidcKeysChanged)(void *arg);

/* Starts the fetch thread (once); later calls follow a reloaded config's issuers. */
void oidc_configure(const Config *c, OidcKeysChanged cb, void *arg);
void oidc_stop(void);

typedef enum {
	OIDC_OK,
	OIDC_REFUSED,  /* err says why */
	OIDC_PENDING,  /* keys are being fetched: try again after the callback */
} OidcOutcome;

typedef struct {
	char username[256];
	char **groups;
	int ngroups;
	int64_t expires; /* unix seconds */
	const OidcIssuerConfig *issuer;
} OidcIdentity;

/*
 * Verifies token for startup user `user` against the issuers of c. A token whose kid is
 * unknown asks for a refresh (at most every min_refresh) and answers PENDING once.
 * user NULL accepts any subject (the HTTP API, where no startup user names one).
 */
OidcOutcome oidc_verify(const Config *c, const char *token, const char *user, bool retry, OidcIdentity *out,
			char *err, size_t errlen);
void oidc_identity_free(OidcIdentity *id);

#endif
