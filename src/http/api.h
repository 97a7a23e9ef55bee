/*
 * The admin HTTP API (libmicrohttpd, its own threads): /healthz; the audit trail as JSON for
 * identities in admin.auditors; approval requests and grants (approval/approval.h) for any
 * identity, each seeing and deciding what it may. Authenticated by "Authorization: Bearer"
 * with an API key or an OIDC token; over HTTPS with admin.tls (required off loopback, see
 * config.c). Reads the live config at every request; opens the audit store per request
 * (read-only use), so it never touches the data path.
 */
#ifndef PGC_HTTP_API_H
#define PGC_HTTP_API_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

/* Starts listening on admin.address:admin.port when c has an admin: section. */
bool http_start(const Config *c, char *err, size_t errlen) __attribute__((warn_unused_result));
void http_stop(void);

#endif
