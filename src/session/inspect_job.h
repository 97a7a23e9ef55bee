/*
 * The inspection of a long statement, off the worker. Parsing a text costs time and memory
 * in proportion to it (a 1 MiB SELECT list: about 6 s and 1 GB on the project machine); on
 * the worker, every other session of that worker waited that long. A text longer than
 * SQL_PARSE_INLINE_MAX (none of which the facts cache keeps) is inspected instead on a small
 * pool of threads, at most one per worker at a time (so the memory bound is the one there
 * was), while its session holds the message and the worker serves the others. When the
 * facts are ready the worker is notified (on_notify) and the session judges the message
 * again, this time with them.
 */
#ifndef PGC_INSPECT_JOB_H
#define PGC_INSPECT_JOB_H

#include <stdbool.h>
#include <stddef.h>

#include "net/worker.h"
#include "policy/inspect.h"

typedef struct InspectJob InspectJob;

/* At most n inspections run at once (threads are started as needed). Call before the first job. */
void inspect_jobs_init(int n);

/* Queues the inspection of sql (len bytes, copied); w is notified when it is done. NULL: no
 * thread could be started for it (the caller inspects it itself). */
InspectJob *inspect_job_start(Worker *w, const char *sql, size_t len);
bool inspect_job_done(InspectJob *j);
/* Whether j inspects exactly this text. */
bool inspect_job_is_for(const InspectJob *j, const char *sql, size_t len);
/* The facts of a done job, the first time (the caller's to free); NULL after that. */
QueryFacts *inspect_job_take(InspectJob *j);
/* Its session is through with it: freed now, or by its thread once the inspection ends. */
void inspect_job_abandon(InspectJob *j);

#endif
