/*
 * API keys for agents and service accounts: "pgc_" + 43 base64url characters (256 random
 * bits). Only "sha256:<hex>" of a key is stored; a high-entropy key needs no slow hash.
 * The client sends the key as its password with its name as the user.
 */
#ifndef PGC_APIKEY_H
#define PGC_APIKEY_H

#include <stdbool.h>
#include <stddef.h>

#define APIKEY_PREFIX "pgc_"

/* Writes a fresh key (at least 48 bytes) and its hash (at least 72 bytes). */
void apikey_generate(char *key, size_t keylen, char *hash, size_t hashlen);
void apikey_hash(const char *key, char *hash, size_t hashlen);
/* Constant-time check of key against a stored "sha256:<hex>". */
bool apikey_matches(const char *key, const char *stored_hash);
bool apikey_looks_like(const char *password);

#endif
