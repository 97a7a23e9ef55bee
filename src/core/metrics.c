/* The gateway's counters and histograms: per-worker slots, summed at a scrape (core/metrics.h). */
#include "core/metrics.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/util.h"

/* A slot is whole cache lines, so that two workers never write the same line. */
#define SLOT_WORDS ((METRICS_WORDS * sizeof(uint64_t) + 63) / 64 * 64 / sizeof(uint64_t))

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

void metrics__add_shared(size_t word, uint64_t n) { __atomic_fetch_add(&shared[word], n, __ATOMIC_RELAXED); }

static uint64_t word_total(size_t word)
{
	uint64_t sum = __atomic_load_n(&shared[word], __ATOMIC_RELAXED);
	for (int i = 0; i < nslots; i++)
		sum += __atomic_load_n(&slots[(size_t)i * SLOT_WORDS + word], __ATOMIC_RELAXED);
	return sum;
}

uint64_t metrics_total(Metric m) { return word_total((size_t)m); }

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

/* ---- histograms ---- */

typedef struct {
	const char *name, *help;
	int64_t bounds_us[HIST_BOUNDS_MAX]; /* upper bounds, ascending */
	int nbounds;
} HistogramSpec;

static const HistogramSpec HISTOGRAMS[HIST_COUNT] = {
	[HIST_STATEMENT] = {"pgcordon_statement_duration_seconds",
			    "Client statements (Query, Execute), from forwarding one upstream to the end of its answer "
			    "(ReadyForQuery for a Query; CommandComplete, EmptyQueryResponse, PortalSuspended or "
			    "ErrorResponse for an Execute). Statements the gateway refused are not counted.",
			    {500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
			     5000000, 10000000, 30000000, 60000000},
			    16},
	[HIST_UPSTREAM_LOGIN] = {"pgcordon_upstream_login_duration_seconds",
				 "Upstream sessions opened for clients, from connecting (name lookup included) to the "
				 "server's first ReadyForQuery. Failed ones are counted in pgcordon_upstream_errors_total.",
				 {1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000,
				  5000000, 10000000, 30000000},
				 14},
	[HIST_APPROVAL_WAIT] = {"pgcordon_approval_wait_duration_seconds",
				"Statements held in wait mode, from the hold to its end: approved, denied, expired, "
				"cancelled or the session gone.",
				{1000000, 5000000, 10000000, 30000000, 60000000, 120000000, 300000000, 600000000,
				 1800000000, 3600000000, 7200000000, 14400000000, 43200000000, 86400000000},
				14},
};

int metrics__bucket(Histogram h, int64_t us)
{
	const HistogramSpec *spec = &HISTOGRAMS[h];
	int i = 0;
	while (i < spec->nbounds && us > spec->bounds_us[i])
		i++;
	return i;
}

uint64_t metrics_hist_count(Histogram h)
{
	uint64_t n = 0;
	for (int i = 0; i <= HISTOGRAMS[h].nbounds; i++)
		n += word_total(metrics__hist_word(h, i));
	return n;
}

/* us as seconds, without trailing zeros: "0.0005", "2.5", "60". */
static void seconds_text(char *out, size_t size, uint64_t us)
{
	int n = snprintf(out, size, "%llu.%06llu", (unsigned long long)(us / 1000000), (unsigned long long)(us % 1000000));
	while (n > 0 && out[n - 1] == '0')
		out[--n] = 0;
	if (n > 0 && out[n - 1] == '.')
		out[--n] = 0;
}

void metrics_write_histograms(FILE *out)
{
	for (int h = 0; h < HIST_COUNT; h++) {
		const HistogramSpec *spec = &HISTOGRAMS[h];
		fprintf(out, "# HELP %s %s\n# TYPE %s histogram\n", spec->name, spec->help, spec->name);
		/* Each bucket read once: the cumulative counts and _count agree within a scrape. */
		uint64_t cumulative = 0;
		char le[32];
		for (int i = 0; i <= spec->nbounds; i++) {
			cumulative += word_total(metrics__hist_word((Histogram)h, i));
			if (i < spec->nbounds)
				seconds_text(le, sizeof le, (uint64_t)spec->bounds_us[i]);
			else
				snprintf(le, sizeof le, "+Inf");
			fprintf(out, "%s_bucket{le=\"%s\"} %llu\n", spec->name, le, (unsigned long long)cumulative);
		}
		char sum[32];
		seconds_text(sum, sizeof sum, word_total(metrics__hist_word((Histogram)h, HIST_SUM)));
		fprintf(out, "%s_sum %s\n%s_count %llu\n", spec->name, sum, spec->name, (unsigned long long)cumulative);
	}
}
