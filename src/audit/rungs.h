/*
 * The key rungs: key(1), key(1 + KEY_RUNG), key(1 + 2 * KEY_RUNG), ..., so that any key of
 * the chain costs at most KEY_RUNG - 1 hashing steps instead of seq - 1 from key(1).
 *
 * They are kept in the rungs file next to the key file, `<key_file>.rungs`, one line per
 * rung after key(1): "SEQ KEY MAC" in hex, KEY the rung's key XOR a pad (chain_rung_pad),
 * MAC = HMAC-SHA-256 under key(1) of the rung (chain_rung_mac): the file is no use to
 * whoever has it without the key file. Without it a gateway's start walked from key(1) to its head,
 * 70 ns a record here: a minute and more once a chain passes a billion records.
 *
 * The file is a cache and nothing more: every rung is derived from key(1), and a line that
 * does not verify (altered, torn, another key's) is not used, with the lines after it.
 * Nobody without key(1) can make a line that verifies. No logging.
 */
#ifndef PGC_AUDIT_RUNGS_H
#define PGC_AUDIT_RUNGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "audit/chain.h"

#define KEY_RUNG 65536

typedef struct {
	uint8_t (*key)[AUDIT_KEY_LEN]; /* key[i] is key(1 + i * KEY_RUNG); key[0] is key(1) */
	int64_t n;
	int64_t in_file;  /* rungs 1..in_file-1 are the file's first lines */
	off_t file_len;   /* the bytes of those lines */
	bool file_stale;  /* the file has more than those lines: rungs_save cuts it there */
	bool file_failed; /* the file could not be opened or read, or is not a plain file: left alone */
} KeyRungs;

void rungs_init(KeyRungs *r, const uint8_t first[AUDIT_KEY_LEN]);
void rungs_free(KeyRungs *r);
/* key_file + ".rungs", allocated. */
char *rungs_path(const char *key_file);
/*
 * Adds the rungs the file at path holds, in order, to r (just initialised). 1: all of the
 * file was used; 0: there is no such file; -1: the file, or its part from a line on, cannot
 * be used (err says why; the rungs before that line are kept, and rungs_save rewrites the
 * rest; a file that cannot be opened or is not a plain file is not written).
 */
int rungs_load(KeyRungs *r, const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));
/* key is key(seq): kept when it is the next rung. */
void rungs_note(KeyRungs *r, int64_t seq, const uint8_t key[AUDIT_KEY_LEN]);
/* key(seq), seq >= 1, from the nearest rung at or before it; returns the hashing steps taken. */
int64_t rungs_key_at(const KeyRungs *r, int64_t seq, uint8_t out[AUDIT_KEY_LEN]);
/* Like rungs_key_at, and keeps the rungs it passes. */
int64_t rungs_walk_to(KeyRungs *r, int64_t seq, uint8_t out[AUDIT_KEY_LEN]);
/* Appends the rungs the file lacks (mode 0600); nothing to do returns true. */
bool rungs_save(KeyRungs *r, const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
