/* TLS contexts for the client-facing listener and for upstream connections (OpenSSL 3). */
#ifndef PGC_TLS_H
#define PGC_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

/* Builds every SSL_CTX the config needs (server side and per-database client side). */
bool tls_prepare_config(Config *c, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
