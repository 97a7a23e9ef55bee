/*
 * Counters for GET /metrics. A worker thread adds to a slot of its own (a plain store on
 * a cache line no other thread writes: no lock or atomic read-modify-write on the data
 * path); any other thread adds to a shared slot atomically. A scrape sums the slots, so a
 * total can be a few events behind, never torn.
 */
#ifndef PGC_METRICS_H
#define PGC_METRICS_H

#include <stdint.h>
#include <stdio.h>

typedef enum {
	MET_CLIENTS_ACCEPTED,
	MET_CLIENTS_OVER_LIMIT,
	MET_LOGIN_OK_SCRAM,
	MET_LOGIN_OK_APIKEY,
	MET_LOGIN_OK_OIDC,
	MET_LOGIN_FAILED_SCRAM,
	MET_LOGIN_FAILED_APIKEY,
	MET_LOGIN_FAILED_OIDC,
	MET_LOGIN_FAILED_PASSWORD,
	MET_LOGIN_REFUSED,
	MET_UPSTREAM_CONNECT_FAILED,
	MET_UPSTREAM_LOST,
	MET_DECISION_ALLOW,
	MET_DECISION_BLOCK,
	MET_APPROVAL_REQUESTS,
	MET_WAITS_STARTED,
	MET_WAITS_ENDED,
	MET_CUT_OFF,
	MET_ROWS_MASKED,
	MET_MESSAGES_SCRUBBED,
	MET_BYTES_FROM_CLIENT,
	MET_BYTES_FROM_SERVER,
	MET_ADMIN_AUTH_FAILED,
	MET_RELOAD_OK,
	MET_RELOAD_FAILED,
	MET_COUNT
} Metric;

/* Before the workers start: one slot per worker, 0..nworkers-1. Notes the start time. */
void metrics_init(int nworkers);
/* Unix seconds of metrics_init (0 before). */
int64_t metrics_start_time(void);
/* On worker thread `index`: its adds go to its own slot from now on. */
void metrics_bind_worker(int index);

extern __thread uint64_t *metrics__own;
void metrics__add_shared(Metric m, uint64_t n);

static inline void metrics_add(Metric m, uint64_t n)
{
	uint64_t *own = metrics__own;
	if (own)
		__atomic_store_n(&own[m], own[m] + n, __ATOMIC_RELAXED); /* only this thread writes it */
	else
		metrics__add_shared(m, n);
}

static inline void metrics_inc(Metric m) { metrics_add(m, 1); }

/* The sum over all slots. */
uint64_t metrics_total(Metric m);

/* Writes every counter in the Prometheus text format (HELP, TYPE, samples). */
void metrics_write_counters(FILE *out);

/* The counter for a login method ("scram", "apikey", "oidc", "password"); -1 for another. */
int metrics_login(const char *method, int ok);

#endif
