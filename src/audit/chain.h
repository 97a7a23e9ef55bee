/*
 * The keyed hash chain over audit records. Record n carries
 *   tag(n) = HMAC-SHA-256(key(n), fields of record n, tag(n-1))
 * with key(1) read from the key file and key(n+1) = SHA-256(key(n)): a key that leaks
 * later cannot forge earlier records, and nobody without the first key can recompute the
 * chain after editing the store. Pure functions plus the key file; no logging.
 */
#ifndef PGC_AUDIT_CHAIN_H
#define PGC_AUDIT_CHAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit/store.h"

#define AUDIT_KEY_LEN 32

/* Reads the first key from path; create: make a fresh one (mode 0600) when it is missing. */
bool chain_load_key(const char *path, bool create, uint8_t key[AUDIT_KEY_LEN], bool *created, char *err,
		    size_t errlen) __attribute__((warn_unused_result));
/*
 * No chain gets near this many records (a million a second for 30 years); a larger sequence
 * number read from a store was written there by hand, and deriving its key would take ages.
 */
#define AUDIT_SEQ_MAX ((int64_t)1 << 50)

/* key(n) from key(1): n-1 hashing steps. */
void chain_key_at(const uint8_t first[AUDIT_KEY_LEN], int64_t n, uint8_t out[AUDIT_KEY_LEN]);
void chain_next_key(uint8_t key[AUDIT_KEY_LEN]);
/* The tag of r (its own tag field is ignored) under key, as 64 hex digits. */
void chain_tag(const uint8_t key[AUDIT_KEY_LEN], const StoredRecord *r, char out[AUDIT_TAG_HEX]);
/*
 * The MAC of a key rung (rungs.h): HMAC-SHA-256 under key(1) of a label, seq and key(seq).
 * The label starts with a byte no record's fields start with, so no tag is ever a rung's MAC.
 */
void chain_rung_mac(const uint8_t first[AUDIT_KEY_LEN], int64_t seq, const uint8_t key[AUDIT_KEY_LEN],
		    uint8_t out[AUDIT_KEY_LEN]);
/* The pad a rung's key is kept under in the rungs file (XORed): HMAC-SHA-256 under key(1) of another label and seq. */
void chain_rung_pad(const uint8_t first[AUDIT_KEY_LEN], int64_t seq, uint8_t out[AUDIT_KEY_LEN]);
/* Nothing to free any more (chain_tag keeps no context); kept for its callers. */
void chain_release_thread(void);

#endif
