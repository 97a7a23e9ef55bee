/* The gateway's counters: per-worker slots, summed at a scrape (core/metrics.h). */
#include "core/metrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"

/* A slot is whole cache lines, so that two workers never write the same line. */
#define SLOT_WORDS ((MET_COUNT * sizeof(uint64_t) + 63) / 64 * 64 / sizeof(uint64_t))

__thread uint64_t *metrics__own;
static uint64_t shared[SLOT_WORDS] __attribute__((aligned(64)));
static uint64_t *slots; /* nslots * SLOT_WORDS, set once before the workers start */
static int nslots;
static int64_t started_s;

void metrics_init(int nworkers)
{
	if (slots || nworkers <= 0)
		return;
	started_s = (int64_t)time(NULL);
	slots = aligned_alloc(64, (size_t)nworkers * SLOT_WORDS * sizeof(uint64_t));
	if (!slots)
		return; /* the workers then count in the shared slot */
	memset(slots, 0, (size_t)nworkers * SLOT_WORDS * sizeof(uint64_t));
	nslots = nworkers;
}

int64_t metrics_start_time(void) { return started_s; }

void metrics_bind_worker(int index)
{
	if (slots && index >= 0 && index < nslots)
		metrics__own = slots + (size_t)index * SLOT_WORDS;
}

void metrics__add_shared(Metric m, uint64_t n) { __atomic_fetch_add(&shared[m], n, __ATOMIC_RELAXED); }

uint64_t metrics_total(Metric m)
{
	uint64_t sum = __atomic_load_n(&shared[m], __ATOMIC_RELAXED);
	for (int i = 0; i < nslots; i++)
		sum += __atomic_load_n(&slots[(size_t)i * SLOT_WORDS + m], __ATOMIC_RELAXED);
	return sum;
}

int metrics_login(const char *method, int ok)
{
	static const char *const names[] = {"scram", "apikey", "oidc", "password"};
	for (int i = 0; i < 4; i++)
		if (strcmp(method, names[i]) == 0) {
			if (ok)
				return i < 3 ? MET_LOGIN_OK_SCRAM + i : -1; /* "password" only ever fails */
			return MET_LOGIN_FAILED_SCRAM + i;
		}
	return -1;
}

/* One sample of a family: the counter and its labels ("" for none). */
typedef struct {
	Metric m;
	const char *labels;
} Sample;

typedef struct {
	const char *name, *help;
	Sample samples[8];
	int nsamples;
} Family;

static const Family FAMILIES[] = {
	{"pgcordon_client_connections_total", "Client connections accepted.", {{MET_CLIENTS_ACCEPTED, ""}}, 1},
	{"pgcordon_client_connections_over_limit_total",
	 "Client connections turned away because limits.max_client_conn was reached.", {{MET_CLIENTS_OVER_LIMIT, ""}}, 1},
	{"pgcordon_logins_total",
	 "Client logins by method and result (password: a password that is neither an API key nor a token, "
	 "with no OIDC issuer configured).",
	 {{MET_LOGIN_OK_SCRAM, "method=\"scram\",result=\"ok\""},
	  {MET_LOGIN_OK_APIKEY, "method=\"apikey\",result=\"ok\""},
	  {MET_LOGIN_OK_OIDC, "method=\"oidc\",result=\"ok\""},
	  {MET_LOGIN_FAILED_SCRAM, "method=\"scram\",result=\"failed\""},
	  {MET_LOGIN_FAILED_APIKEY, "method=\"apikey\",result=\"failed\""},
	  {MET_LOGIN_FAILED_OIDC, "method=\"oidc\",result=\"failed\""},
	  {MET_LOGIN_FAILED_PASSWORD, "method=\"password\",result=\"failed\""}},
	 7},
	{"pgcordon_logins_refused_total", "Authenticated logins refused because no policy grants the database.",
	 {{MET_LOGIN_REFUSED, ""}}, 1},
	{"pgcordon_upstream_errors_total", "Upstream PostgreSQL connections that failed to open or were lost.",
	 {{MET_UPSTREAM_CONNECT_FAILED, "kind=\"connect\""}, {MET_UPSTREAM_LOST, "kind=\"lost\""}}, 2},
	{"pgcordon_decisions_total",
	 "Decisions on client messages (Query, Parse, Bind, FunctionCall) in sessions under a policy: "
	 "allowed, or refused (by a rule, a denied or expired approval, masking, or a message that cannot be judged).",
	 {{MET_DECISION_ALLOW, "decision=\"allow\""}, {MET_DECISION_BLOCK, "decision=\"block\""}}, 2},
	{"pgcordon_approval_requests_total", "Approval requests this gateway opened for held statements.",
	 {{MET_APPROVAL_REQUESTS, ""}}, 1},
	{"pgcordon_statements_cut_off_total", "Statements stopped at a row limit (limits.max_rows, or returned_rows review).",
	 {{MET_CUT_OFF, ""}}, 1},
	{"pgcordon_rows_masked_total", "Result rows and COPY data messages rewritten by masking or detection.",
	 {{MET_ROWS_MASKED, ""}}, 1},
	{"pgcordon_messages_scrubbed_total", "Error, notice and notification messages rewritten by masking.",
	 {{MET_MESSAGES_SCRUBBED, ""}}, 1},
	{"pgcordon_bytes_total", "Protocol bytes received from clients and from upstream servers.",
	 {{MET_BYTES_FROM_CLIENT, "from=\"client\""}, {MET_BYTES_FROM_SERVER, "from=\"server\""}}, 2},
	{"pgcordon_admin_auth_failures_total", "Admin API requests refused for a missing or bad credential.",
	 {{MET_ADMIN_AUTH_FAILED, ""}}, 1},
	{"pgcordon_config_reloads_total", "Configuration reloads (SIGHUP) by result.",
	 {{MET_RELOAD_OK, "result=\"ok\""}, {MET_RELOAD_FAILED, "result=\"failed\""}}, 2},
};

void metrics_write_counters(FILE *out)
{
	for (size_t f = 0; f < sizeof FAMILIES / sizeof FAMILIES[0]; f++) {
		const Family *fam = &FAMILIES[f];
		fprintf(out, "# HELP %s %s\n# TYPE %s counter\n", fam->name, fam->help, fam->name);
		for (int i = 0; i < fam->nsamples; i++) {
			const Sample *s = &fam->samples[i];
			fprintf(out, "%s%s%s%s %llu\n", fam->name, s->labels[0] ? "{" : "", s->labels,
				s->labels[0] ? "}" : "", (unsigned long long)metrics_total(s->m));
		}
	}
}
