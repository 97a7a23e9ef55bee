/*
 * Cancel keys: every client session gets a gateway-made (pid, key) pair; the registry
 * maps it to the upstream backend's own pair and address, so a client CancelRequest
 * reaches the right backend without the client ever seeing the upstream's keys.
 * Thread-safe (cancels are rare: a mutex, never on the per-message path).
 */
#ifndef PGC_CANCEL_H
#define PGC_CANCEL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct {
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint32_t pid;
	uint32_t key;
} CancelTarget;

/* Allocates a fresh, unused gateway pid and random key. */
void cancel_register(uint32_t *pid, uint32_t *key);
/* Fills in the upstream target once it is known. */
void cancel_set_target(uint32_t pid, const CancelTarget *t);
void cancel_unregister(uint32_t pid);
/* Marks the session as waiting for an approval request (NULL: no longer): a cancel ends it. */
void cancel_set_held(uint32_t pid, const char *request);
/* The session's output to its upstream waits for a cancel the gateway sent (true), or no
 * longer (false). Clearing it returns whether a client's cancel was deferred meanwhile:
 * the session then sends it, once what waited has gone upstream. */
bool cancel_set_output_held(uint32_t pid, bool held);
/* Looks up a client's pair (key compared in constant time); copies the target out, and the
 * approval request the session waits for ("" none). *deferred: the session's output waits
 * for a cancel of its own, and this one is left to the session to send after it. */
bool cancel_lookup(uint32_t pid, uint32_t key, CancelTarget *out, char held[24], bool *deferred);

#endif
