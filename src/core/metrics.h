/*
 * Counters and histograms for GET /metrics. A worker thread adds to a slot of its own (a
 * plain store on a cache line no other thread writes: no lock or atomic read-modify-write
 * on the data path); any other thread adds to a shared slot atomically. A scrape sums the
 * slots, so a total can be a few events behind, never torn.
 */
#ifndef PGC_METRICS_H
#define PGC_METRICS_H

#include <stddef.h>
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

/* Durations, each counted in fixed buckets (core/metrics.c has their bounds). */
typedef enum {
	HIST_STATEMENT,     /* a Query or Execute, from forwarding it upstream to its answer's end */
	HIST_UPSTREAM_LOGIN, /* a session's upstream connection, from connecting to ReadyForQuery */
	HIST_APPROVAL_WAIT, /* a held statement (wait mode), from the hold to its end */
	HIST_COUNT
} Histogram;

#define HIST_BOUNDS_MAX 16 /* finite bucket bounds of a histogram; one more bucket takes the rest */
/* A histogram's words in a slot: a count per bucket, then the sum of the observations in us. */
#define HIST_WORDS (HIST_BOUNDS_MAX + 2)
#define HIST_SUM (HIST_BOUNDS_MAX + 1) /* the sum's word within them */

/* Before the workers start: one slot per worker, 0..nworkers-1. Notes the start time. */
void metrics_init(int nworkers);
/* Unix seconds of metrics_init (0 before). */
int64_t metrics_start_time(void);
/* On worker thread `index`: its adds go to its own slot from now on. */
void metrics_bind_worker(int index);

/* A slot's words: the counters (by Metric), then HIST_WORDS per histogram. */
#define METRICS_WORDS (MET_COUNT + HIST_COUNT * HIST_WORDS)

extern __thread uint64_t *metrics__own;
void metrics__add_shared(size_t word, uint64_t n);

static inline void metrics__add_word(size_t word, uint64_t n)
{
	uint64_t *own = metrics__own;
	if (own)
		__atomic_store_n(&own[word], own[word] + n, __ATOMIC_RELAXED); /* only this thread writes it */
	else
		metrics__add_shared(word, n);
}

static inline void metrics_add(Metric m, uint64_t n) { metrics__add_word((size_t)m, n); }

static inline void metrics_inc(Metric m) { metrics_add(m, 1); }

/* The slot word of histogram h's bucket i (or HIST_SUM). */
static inline size_t metrics__hist_word(Histogram h, int i) { return MET_COUNT + (size_t)h * HIST_WORDS + (size_t)i; }

/* The bucket of us in histogram h (HIST_BOUNDS_MAX or less: past the last bound). */
int metrics__bucket(Histogram h, int64_t us);

/* Counts one duration of us microseconds (below 0: 0) in histogram h. */
static inline void metrics_observe_us(Histogram h, int64_t us)
{
	if (us < 0)
		us = 0;
	metrics__add_word(metrics__hist_word(h, metrics__bucket(h, us)), 1);
	metrics__add_word(metrics__hist_word(h, HIST_SUM), (uint64_t)us);
}

/* Observations counted in histogram h so far (the sum over its buckets). */
uint64_t metrics_hist_count(Histogram h);

/* The sum over all slots. */
uint64_t metrics_total(Metric m);

/* Writes every counter in the Prometheus text format (HELP, TYPE, samples). */
void metrics_write_counters(FILE *out);
/* Writes every histogram likewise: cumulative _bucket{le} samples, _sum in seconds, _count. */
void metrics_write_histograms(FILE *out);

/* The counter for a login method ("scram", "apikey", "oidc", "password"); -1 for another. */
int metrics_login(const char *method, int ok);

#endif
