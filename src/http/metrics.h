/*
 * GET /metrics: the gateway's counters (core/metrics.h) and a few gauges read at the
 * scrape (open connections, waiting sessions, the audit trail's state), in the Prometheus
 * text format. Counts only: no user, database or statement text is ever in a label.
 */
#ifndef PGC_HTTP_METRICS_H
#define PGC_HTTP_METRICS_H

#include <stddef.h>

/* The exposition text, malloc'd; *len its length. */
char *http_metrics_text(size_t *len);

#endif
