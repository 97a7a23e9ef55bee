/* The /metrics exposition: counters from core/metrics.c, gauges read now. */
#include "http/metrics.h"

#include <stdio.h>
#include <stdlib.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "core/metrics.h"
#include "core/version.h"
#include "session/session.h"

/* A family of one sample: kind "gauge" or "counter", labels "" for none. */
static void family(FILE *out, const char *name, const char *kind, const char *help, const char *labels,
		   long long value)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s %s\n%s%s%s%s %lld\n", name, help, name, kind, name, labels[0] ? "{" : "",
		labels, labels[0] ? "}" : "", value);
}

static void gauge(FILE *out, const char *name, const char *help, long long value)
{
	family(out, name, "gauge", help, "", value);
}

static void audit_part(FILE *out)
{
	AuditStats st;
	audit_stats(&st);
	gauge(out, "pgcordon_audit_enabled", "1 when audit.store is set: sessions are recorded.", st.enabled);
	if (!st.enabled)
		return;
	gauge(out, "pgcordon_audit_strict", "1 when audit.durability is strict.", st.strict);
	gauge(out, "pgcordon_audit_store_up",
	      "1 while the audit store takes writes; 0 while it fails (statements are refused unless "
	      "audit.on_failure is continue).",
	      st.healthy);
	gauge(out, "pgcordon_audit_pending_bytes", "Bytes of audit events queued and not yet committed.",
	      (long long)st.pending_bytes);
	gauge(out, "pgcordon_audit_head_seq", "Sequence number of the last audit record committed.", st.head_seq);
	family(out, "pgcordon_audit_events_dropped_total", "counter",
	       "Audit events dropped unrecorded because the store failed and audit.max_pending was reached.", "",
	       (long long)st.dropped); /* a count, never near 2^63 */
}

char *http_metrics_text(size_t *len)
{
	char *text = NULL;
	FILE *out = open_memstream(&text, len);
	if (!out)
		return NULL;
	char build[160];
	snprintf(build, sizeof build, "version=\"%s\",commit=\"%s\"", PGCORDON_VERSION, pgcordon_commit);
	family(out, "pgcordon_build_info", "gauge", "The running gateway's version and the commit it was built from.",
	       build, 1);
	gauge(out, "pgcordon_start_time_seconds", "Unix time the gateway started.", (long long)metrics_start_time());
	gauge(out, "pgcordon_client_connections", "Client connections open now.", session_active_count());
	/* Read apart, the two can cross: never below zero. */
	uint64_t ended = metrics_total(MET_WAITS_ENDED), started = metrics_total(MET_WAITS_STARTED);
	gauge(out, "pgcordon_sessions_waiting_for_approval", "Sessions holding a statement until a decision (wait mode).",
	      started > ended ? (long long)(started - ended) : 0);
	size_t requests = 0, bytes = approval_table_bytes(&requests);
	gauge(out, "pgcordon_approval_requests_in_memory", "Approval requests and grants held in memory, decided or not.",
	      (long long)requests);
	gauge(out, "pgcordon_approval_memory_bytes",
	      "Bytes those requests count against their 256 MiB bound (texts and 1 KiB each).", (long long)bytes);
	metrics_write_counters(out);
	metrics_write_histograms(out);
	audit_part(out);
	if (fclose(out) != 0) {
		free(text);
		return NULL;
	}
	return text;
}
