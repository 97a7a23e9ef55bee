/* The /metrics exposition: counters from core/metrics.c, gauges read now. */
#include "http/metrics.h"

#include <stdio.h>
#include <stdlib.h>

#include "approval/approval.h"
#include "audit/audit.h"
#include "core/metrics.h"
#include "core/version.h"
#include "session/session.h"

static void gauge(FILE *out, const char *name, const char *help, long long value)
{
	fprintf(out, "# HELP %s %s\n# TYPE %s gauge\n%s %lld\n", name, help, name, name, value);
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
	fprintf(out, "# HELP pgcordon_audit_events_dropped_total Audit events dropped unrecorded because the "
		     "store failed and audit.max_pending was reached.\n"
		     "# TYPE pgcordon_audit_events_dropped_total counter\npgcordon_audit_events_dropped_total %llu\n",
		(unsigned long long)st.dropped);
}

char *http_metrics_text(size_t *len)
{
	char *text = NULL;
	FILE *out = open_memstream(&text, len);
	if (!out)
		return NULL;
	fprintf(out, "# HELP pgcordon_build_info The running gateway's version and the commit it was built from.\n"
		     "# TYPE pgcordon_build_info gauge\npgcordon_build_info{version=\"%s\",commit=\"%s\"} 1\n",
		PGCORDON_VERSION, pgcordon_commit);
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
	audit_part(out);
	if (fclose(out) != 0) {
		free(text);
		return NULL;
	}
	return text;
}
