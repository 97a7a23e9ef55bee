/* Statements held for approval: the session's side of approval/approval.h. */
#ifndef PGC_HOLD_H
#define PGC_HOLD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/jsonw.h"
#include "policy/policy.h"

typedef struct Session Session;

typedef enum {
	HOLD_PASS,   /* approved: *out allows it (rule "approval", with the request id) */
	HOLD_WAIT,   /* held: the message stays where it is until its request changes */
	HOLD_REFUSE, /* *out refuses it: denied, timed out, cancelled, or retry mode */
} HoldOutcome;

/*
 * A statement the policy holds (d->kind DEC_REVIEW): opens its request, or judges it again
 * once the request it waits for changed. params: the Bind's parameters as JSON, or NULL.
 */
HoldOutcome session__review(Session *s, const char *sql, const char *params, const Decision *d, Decision *out);
/* The held message left (it passed or was refused): forget the request. */
void session__hold_end(Session *s);
/* The same, cancelling a request still pending (the session ends, the policy changed). */
void session__hold_drop(Session *s, const char *why);
/* On a worker notification: resume a held session whose request was decided. */
void session__hold_wake(Session *s);
/* A Bind's parameters as a JSON array (text values; binary ones as {"hex": ...}). */
char *session__bind_params(const uint8_t *body, size_t len);
/*
 * The same, appended to w, as the audit trail records them: redact writes every non-NULL
 * value as [REDACTED]; otherwise what the detectors (DETECT_* bits) find is redacted, and a
 * value longer than cap (0: no cap) is cut as jw_text_cut does.
 */
void session__bind_params_to(JsonW *w, const uint8_t *body, size_t len, bool redact, unsigned detect, size_t cap);

/* returned_rows_over: whether an approval lets this statement return every row. */
bool session__rows_approved(Session *s, const char *sql, const char *params);
/* ... and when a result grew past it: opens a request to run it again; msg for the client. */
void session__rows_exceeded(Session *s, const char *sql, const char *params, char *msg, size_t len);

/* estimated_rows_over (session->estimate_state) */
enum { ESTIMATE_NONE, ESTIMATE_RUNNING, ESTIMATE_DONE };
typedef enum {
	EST_WAIT,  /* the estimate is being asked for: the message waits where it is */
	EST_UNDER, /* allowed */
	EST_OVER,  /* *review holds it (estimate over the limit, or none to be had) */
} EstimateOutcome;
/* d allows the statement unless the planner estimates more than d->estimate_over rows. A
 * statement already held for its estimate is EST_OVER again: its request decides. */
EstimateOutcome session__estimate(Session *s, const char *sql, int nstmts, bool has_params, const Decision *d,
				  Decision *review);
/* An upstream message answering the internal EXPLAIN (whole). */
void session__estimate_message(Session *s, char type, const uint8_t *body, size_t blen);

#endif
