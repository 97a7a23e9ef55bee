/*
 * The audit trail. Sessions build events (a JSON body plus a few indexed fields) and append
 * them to their worker's queue; one writer thread reads every queue, chains the records
 * (audit/chain.h) and commits them in batches to the store (audit/store.h). The data path
 * never waits on disk: in strict mode the session itself holds back its CommandComplete
 * until audit_durable says its ticket is committed.
 */
#ifndef PGC_AUDIT_H
#define PGC_AUDIT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"

/* Called on the writer thread after a commit in strict mode (wake the waiting sessions). */
typedef void (*AuditDurableFn)(void *arg);

/*
 * Opens the store and the key, and starts the writer with nqueues queues (one per worker;
 * queue nqueues-1 is for other threads). Does nothing when c has no audit.store.
 */
bool audit_start(const Config *c, int nqueues, AuditDurableFn cb, void *arg, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Commits what is queued (trying for at most a few seconds) and stops the writer. */
void audit_stop(void);

bool audit_enabled(void);
bool audit_is_strict(void);
/* False while the store cannot be written (sessions refuse statements unless on_failure is continue). */
bool audit_store_healthy(void);

/*
 * Queues an event; takes body, malloc'd JSON object text (or NULL). user, database and
 * session_id may be NULL. Returns the event's ticket in queue q: audit_durable(q) >= ticket
 * once it is committed. While the store fails with audit.max_pending reached, the event is
 * dropped instead, counted in the next events_dropped record, and the ticket is 0.
 */
uint64_t audit_submit(int q, const char *kind, const char *session_id, const char *user, const char *database,
		      char *body);
/*
 * The same, for an event that happened at time_us (audit_now_us); body (body_len bytes) is
 * copied. In strict mode it is never dropped here: it is a statement whose session waits for
 * the ticket (the writer may still drop it: see audit_lost).
 */
uint64_t audit_submit_at(int q, int64_t time_us, const char *kind, const char *session_id, const char *user,
			 const char *database, const char *body, size_t body_len);
uint64_t audit_durable(int q);
/*
 * Whether ticket of queue q was dropped unrecorded (audit.max_pending exceeded): its
 * audit_durable is then reached, but a strict session must not answer as if recorded.
 */
bool audit_lost(int q, uint64_t ticket);
/*
 * True while the store fails and the records waiting, with `adding` bytes more (about the
 * size of the record to come), would fill more than half of audit.max_pending; and from
 * then on until the store is back. Then what did not reach the database (a refused
 * statement or session, a failed login) is counted with audit_count_unrecorded instead of
 * queued, so that it cannot crowd out the records of what ran; the next batch written
 * begins with an events_dropped record of the counts.
 */
bool audit_crowded(size_t adding);
typedef enum { AUDIT_UNREC_STATEMENT, AUDIT_UNREC_SESSION, AUDIT_UNREC_LOGIN, AUDIT_UNREC_KINDS } AuditUnrecorded;
void audit_count_unrecorded(AuditUnrecorded what);
typedef struct {
	bool enabled, strict, healthy;
	uint64_t dropped;     /* events dropped unrecorded since start (audit.max_pending) */
	size_t pending_bytes; /* of events queued and not yet committed */
	int64_t head_seq;     /* the seq of the last record committed */
} AuditStats;
/* For /metrics; any thread. */
void audit_stats(AuditStats *out);
/* The queue for threads other than the workers (admin API, approvals). */
int audit_other_queue(void);

#define AUDIT_TIME_LEN 48
/* Formats unix microseconds as the store's time text (ISO 8601 UTC). */
void audit_format_time(int64_t us, char out[AUDIT_TIME_LEN]);
int64_t audit_now_us(void);

#endif
