/*
 * Approval requests and time-bound grants (docs/approvals.md). One table of requests per
 * gateway, each a JSON object (the API's representation), behind one mutex: sessions open,
 * look up and cancel requests from worker threads (never blocking on I/O); the admin API
 * decides them from its threads. A change wakes the workers through the callback given to
 * approval_start, and held sessions look at their request again. With a store
 * (approval/store.h) every change is written there by a background thread, and with a
 * PostgreSQL store other gateways' changes arrive by LISTEN/NOTIFY.
 */
#ifndef PGC_APPROVAL_H
#define PGC_APPROVAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "policy/policy.h"

#define APPROVAL_ID_LEN 17 /* 16 hex digits and a NUL */
#define APPROVAL_DIGEST_LEN 65
#define APPROVAL_PENDING_MAX 10000
#define APPROVAL_PENDING_PER_REQUESTER 100 /* so that one caller cannot fill the whole queue */
/*
 * Memory: a request's statement and parameters (as shown) are at most APPROVAL_TEXT_MAX
 * bytes; one requester's pending requests hold at most APPROVAL_BYTES_PER_REQUESTER; and the
 * table, decided requests included, at most APPROVAL_TABLE_BYTES. Each request counts
 * APPROVAL_REQUEST_OVERHEAD bytes besides its texts.
 */
#define APPROVAL_TEXT_MAX 1048576u              /* 1 MiB */
#define APPROVAL_BYTES_PER_REQUESTER 33554432u  /* 32 MiB */
#define APPROVAL_TABLE_BYTES 268435456u         /* 256 MiB */
#define APPROVAL_REQUEST_OVERHEAD 1024

typedef enum { APR_PENDING, APR_APPROVED, APR_DENIED, APR_EXPIRED, APR_CANCELLED, APR_UNKNOWN } ApprovalStatus;

/* Called (on any thread) after a request changed: held sessions look again. */
typedef void (*ApprovalWakeFn)(void *arg);

/* Starts with c's node name and store (audit.store; none: requests live in memory only). */
bool approval_start(const Config *c, ApprovalWakeFn wake, void *arg, char *err, size_t errlen)
	__attribute__((warn_unused_result));
void approval_stop(void);

/* ---- sessions (worker threads) ---- */

typedef struct {
	const char *requester;
	char *const *groups;
	int ngroups;
	const char *database;
	const char *session_id;  /* the audit session id, or "" */
	const char *statement;   /* as sent */
	const char *parameters;  /* a JSON array (text values, null), or NULL */
	const char *digest;      /* SHA-256 hex of the statement and its parameters */
	const Decision *why;     /* the hold: policy, rule, detail */
	const ApprovalSettings *settings;
} ApprovalAsk;

/* What approval_open did: opened (or found) a request, or why not. */
typedef enum {
	APPROVAL_OPENED,
	APPROVAL_TOO_LARGE, /* statement and parameters over APPROVAL_TEXT_MAX */
	APPROVAL_FULL_MINE, /* the requester has APPROVAL_PENDING_PER_REQUESTER pending */
	APPROVAL_FULL_MINE_BYTES, /* ... or APPROVAL_BYTES_PER_REQUESTER of them */
	APPROVAL_FULL       /* the gateway has too many, or too many bytes of them */
} ApprovalOpen;

/*
 * Opens a request (in retry mode, the one still pending for the same statement by the same
 * identity, if any). created: true when it is new (notify the requester and the webhook).
 */
ApprovalOpen approval_open(const ApprovalAsk *a, char id[APPROVAL_ID_LEN], bool *created);
/* Why approval_open (or a grant request) was refused, for people. */
const char *approval_refusal(ApprovalOpen why);
/* Bytes the table holds, as counted against APPROVAL_TABLE_BYTES, and its request count. */
size_t approval_table_bytes(size_t *count);
/* Retry mode: an approved request for this statement by this identity, usable now. */
bool approval_find_usable(const char *requester, const char *database, const char *digest,
			  char id[APPROVAL_ID_LEN]);
/* The status of a request; who decided it and why, when decided. */
ApprovalStatus approval_status(const char *id, char *by, size_t bylen, char *reason, size_t reasonlen);
/* Ends a pending request as cancelled (the client left or cancelled) or expired (not decided
 * in time). Returns the request's status afterwards: it may have been decided meanwhile. */
ApprovalStatus approval_cancel(const char *id, const char *why);
ApprovalStatus approval_expire(const char *id);

/* The statement digest: SHA-256 hex of the text and each parameter. */
void approval_digest(const char *statement, const char *parameters, char out[APPROVAL_DIGEST_LEN]);

/* ---- grants ---- */

/* Changes whenever the set of active grants changes (including by expiry). Cheap. */
uint64_t approval_grants_generation(void);
/* Adds the active grants of this identity to ep's scope. */
void approval_apply_grants(EffectivePolicy *ep, const char *user, char *const *groups, int ngroups);

/* ---- the admin API (its own threads) ---- */

typedef struct {
	const char *name;
	char *const *groups;
	int ngroups;
	bool auditor; /* sees every request */
} ApprovalCaller;

#define APPROVAL_LIST_MAX 1000
/*
 * {"approvals": [...], "next": ID or null}: at most limit requests (1..APPROVAL_LIST_MAX),
 * newest first, older than the request before (NULL: from the newest); status "pending",
 * ..., "all". "next" is the before of the following page, when there is one. The order is
 * this gateway's (by creation), so a cursor belongs to the gateway that gave it.
 * NULL, with *bad saying why: a bad status, or before is not a request the caller may see.
 */
json_t *approval_list(const ApprovalCaller *who, const char *status, int limit, const char *before,
		      const char **bad);
/* One request, or NULL (not found, or not the caller's to see). */
json_t *approval_get(const ApprovalCaller *who, const char *id);
/* Approves or denies; returns the HTTP status (200, 403, 404, 409) and the request or an error. */
unsigned approval_decide(const ApprovalCaller *who, const char *id, bool approve, const char *reason, json_t **out);
/*
 * Opens a grant request from the API's JSON body; returns 201 with the request, or 400 or
 * 429 (too many pending, see approval_open) with an error.
 */
unsigned approval_request_grant(const Config *c, const ApprovalCaller *who, json_t *body, json_t **out);
/* {"grants": [...]}: approved grants; all: also expired and undecided ones. */
json_t *approval_list_grants(const ApprovalCaller *who, bool all);

#endif
