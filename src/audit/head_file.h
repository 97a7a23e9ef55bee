/*
 * The head file: the last record this gateway knows it committed (node, seq, tag), kept next
 * to the key file and out of the store. A store rolled back, wiped or restored from an older
 * copy ends before it, which the chain alone cannot show (records cut off the end leave no
 * trace in what is left). The writer rewrites it as it commits; the gateway's start and
 * `audit verify` compare the store with it. No logging.
 */
#ifndef PGC_AUDIT_HEAD_FILE_H
#define PGC_AUDIT_HEAD_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "audit/store.h"

#define HEAD_NODE_MAX 64 /* audit.node: 1-63 characters */

typedef struct {
	char node[HEAD_NODE_MAX];
	int64_t seq;
	char tag[AUDIT_TAG_HEX];
} HeadFile;

/* key_file + ".head", allocated. */
char *head_file_path(const char *key_file);
/* 1: read into h; 0: there is no such file; -1: it cannot be read or is not a head file (err). */
int head_file_read(const char *path, HeadFile *h, char *err, size_t errlen) __attribute__((warn_unused_result));
/* Replaces the file at once (a new file renamed over it), mode 0600. */
bool head_file_write(const char *path, const char *node, int64_t seq, const char *tag, char *err, size_t errlen)
	__attribute__((warn_unused_result));

#endif
