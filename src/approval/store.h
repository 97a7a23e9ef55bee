/*
 * Where approval requests outlive the process and, with PostgreSQL, are shared between
 * gateways: table approval_requests (id, node, status, body) next to the audit records of
 * audit.store. Writes go through a background thread; with PostgreSQL each write is
 * followed by NOTIFY pgcordon_approvals, and a listener thread hands other gateways'
 * changes to approval__merge. Without audit.store requests live in memory only.
 */
#ifndef PGC_APPROVAL_STORE_H
#define PGC_APPROVAL_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

/* Opens the store and loads the requests worth keeping (pending, and decided in the last day). */
bool approval_store_start(const Config *c, json_t ***loaded, size_t *n, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void approval_store_stop(void);
/* Queues a write of r as it now stands (r is copied). */
void approval_store_put(const json_t *r);
typedef enum {
	CLAIM_TAKEN,  /* this gateway moved it (or it is not in the store yet; or the store is not shared) */
	CLAIM_LOST,   /* another gateway decided or ended it first */
	CLAIM_FAILED, /* the store could not be asked, or its answer was lost: err says why */
} ApprovalClaim;
/* How long a decision's claim waits for the one before it. */
#define CLAIM_QUEUE_WAIT_MS 5000
/*
 * Moves a request from pending to how decided has it (status and the decision's fields) in a
 * shared store, where another gateway may have decided it first, and announces it to every
 * gateway. Blocks (the admin API's threads only), but waits at most wait_ms for the claim
 * before it: a store that hangs holds one API thread, not all of them. When the claim is
 * lost, *stored is the request as the store has it (to merge; NULL if unreadable).
 */
ApprovalClaim approval_store_claim(const json_t *decided, int wait_ms, json_t **stored, char *err, size_t errlen);
/*
 * Puts back the end a request came to here (r: its held session ended it, with no claim)
 * over the decision claimed for it meanwhile, if the store still has that one; announced.
 * With a shared store only; failures are logged.
 */
void approval_store_overrule(const json_t *r, const json_t *claimed);
/* Whether requests are shared with other gateways (a PostgreSQL store): a claim is a round trip then. */
bool approval_store_shared(void);

/* A request changed by another gateway (approval.c). */
void approval__merge(json_t *r);

#endif
