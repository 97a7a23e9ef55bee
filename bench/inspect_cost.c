/*
 * inspect_cost: what one statement costs pgcordon's policy layer, in microseconds.
 *
 * Links the gateway's own policy code (src/policy, src/config, src/core) and loads the
 * same YAML config the gateway under test runs with, so the effective policy (and its
 * rule count) is the one the benchmark enforces. For each statement it measures:
 *
 *   parse+decide  inspect_sql() + policy_decide() + inspect_free(): the full work of a
 *                 statement never seen before, outside the cache
 *   miss          the same through the worker's cache path as the gateway calls it
 *                 (facts_cache_get + cached_decide + release) with a text that is in
 *                 neither cache level: exact lookup, fold attempt, parse, insert, LRU
 *                 eviction, decide, memoize
 *   exact hit     facts_cache_get of the same text again + cached_decide (memoized)
 *   folded hit    the same statement with a different number each call (the pgbench -S
 *                 simple-protocol case): exact lookup misses, the folded text hits, the
 *                 exact text is inserted (evicting the oldest), memoized decision
 *   bind          cached_decide on an entry already held: what every Bind of a
 *                 prepared statement costs (the pgbench -S prepared case)
 *   folded@Ns,    the folded hit and the bind again, but with N sessions of the same
 *   bind@Ns       identity taking turns on one worker's cache, as in the gateway: each
 *                 session has its own EffectivePolicy (its own id), and an entry
 *                 memoizes decisions for a few policy ids only, so with more sessions than
 *                 memo slots the decision is recomputed (policy_decide) on every call.
 *                 N = --sessions (run.sh: ceil(clients / workers)).
 *
 * Each figure is the median of REPS timed repetitions of a loop calibrated to run about
 * --ms milliseconds, measured with clock_gettime(CLOCK_MONOTONIC), single-threaded.
 *
 * Usage: inspect_cost [--rules-only] [--ms N] [--sessions N] CONFIG USER DATABASE
 * CONFIG is a pgcordon config; its password_env variables must be set (the loader checks).
 * Exit status: 0 ok, 2 usage/config error, 3 a decision is not what the benchmark needs
 * (a bench statement refused, or a statement that must be refused allowed).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config/config.h"
#include "core/log.h"
#include "policy/cache.h"
#include "policy/inspect.h"
#include "policy/policy.h"

#define CACHE_ENTRIES 4096 /* FACTS_CACHE_ENTRIES in src/session/session.c */
#define REPS 5
#define NVARIANTS 16384     /* distinct texts per statement: > 2 x CACHE_ENTRIES, so LRU never hits */

typedef struct {
	const char *name;
	const char *sql;   /* printf format with one %d for the varying number, or none */
	bool has_number;   /* sql contains %d */
	const char *note;
} BenchStmt;

/* The statements measured. They must all be allowed by the bench policy. */
static const BenchStmt bench_stmts[] = {
	{"pgbench -S (simple)", "SELECT abalance FROM pgbench_accounts WHERE aid = %d;", true,
	 "what pgbench -S -M simple sends"},
	{"pgbench -S (Parse)", "SELECT abalance FROM pgbench_accounts WHERE aid = $1;", false,
	 "what pgbench -S -M prepared parses once per connection"},
	{"CTE + 3 joins",
	 "WITH top AS (SELECT bid, sum(abalance) AS total FROM pgbench_accounts WHERE aid < %d GROUP BY bid) "
	 "SELECT b.bid, b.bbalance, t.total, count(h.tid) AS n FROM pgbench_branches b "
	 "JOIN top t ON t.bid = b.bid LEFT JOIN pgbench_tellers tl ON tl.bid = b.bid "
	 "LEFT JOIN pgbench_history h ON h.tid = tl.tid WHERE b.bid BETWEEN 1 AND 10 "
	 "GROUP BY b.bid, b.bbalance, t.total ORDER BY t.total DESC LIMIT 5",
	 true, "one SELECT"},
	{"3-statement string",
	 "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = %d; "
	 "SELECT abalance FROM pgbench_accounts WHERE aid = 4711; "
	 "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, 4711, 7, now());",
	 true, "UPDATE; SELECT; INSERT in one Query"},
};
#define NSTMTS ((int)(sizeof bench_stmts / sizeof bench_stmts[0]))

/* Statements the policy must refuse (checked offline here, and live by run.sh). */
static const char *const must_block[] = {
	"DROP TABLE pgbench_history",
	"TRUNCATE pgbench_history",
	"DELETE FROM pgbench_history",
	"UPDATE pgbench_accounts SET abalance = 0",
	"SELECT * FROM pgbench_history",
	"SELECT pg_sleep(1)",
	"SELECT pg_read_file('/etc/passwd')",
	"SELECT * FROM public.secrets WHERE id = 1",
	"COPY pgbench_accounts TO PROGRAM 'cat'",
	"DO $$ BEGIN END $$",
	"SET ROLE postgres",
	"ALTER SYSTEM SET work_mem = '1GB'",
	"CREATE ROLE x",
	"ALTER TABLE pgbench_accounts ADD COLUMN x int",
	"SELECT abalance FROM pgbench_accounts WHERE aid = 1; DROP TABLE pgbench_history",
};
#define NBLOCK ((int)(sizeof must_block / sizeof must_block[0]))

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

typedef struct {
	const EffectivePolicy *ep;
	EffectivePolicy **eps; /* per-session policies, taken in turn when neps > 0 */
	int neps;
	unsigned next_ep;
	FactsCache *cache;
	char **texts;       /* NVARIANTS texts */
	int ntexts;
	size_t *lens;
	unsigned next;      /* rotating index into texts */
	CachedFacts *held;  /* for the bind case */
	volatile int sink;
} Ctx;

typedef void (*OpFn)(Ctx *c);

static void op_parse_decide(Ctx *c)
{
	const char *sql = c->texts[c->next++ % (unsigned)c->ntexts];
	QueryFacts *q = inspect_sql(sql);
	Decision d;
	policy_decide(c->ep, q, NULL, NULL, &d);
	c->sink += d.kind;
	inspect_free(q);
}

static const EffectivePolicy *session_ep(Ctx *c)
{
	return c->neps ? c->eps[c->next_ep++ % (unsigned)c->neps] : c->ep;
}

static void op_cache(Ctx *c) /* miss, exact hit or folded hit depending on the texts */
{
	unsigned i = c->next++ % (unsigned)c->ntexts;
	CachedFacts *e = facts_cache_get(c->cache, c->texts[i], c->lens[i]);
	Decision scratch;
	const Decision *d = cached_decide(e, session_ep(c), NULL, NULL, &scratch);
	c->sink += d->kind;
	cached_facts_release(e);
}

static void op_bind(Ctx *c)
{
	Decision scratch;
	const Decision *d = cached_decide(c->held, session_ep(c), NULL, NULL, &scratch);
	c->sink += d->kind;
}

static double target_ms = 200;

/* Median over REPS of the µs per op, with the loop length calibrated to target_ms. */
static double measure(OpFn fn, Ctx *c)
{
	long iters = 1;
	for (;;) { /* calibrate (also warms up) */
		double t0 = now_s();
		for (long i = 0; i < iters; i++)
			fn(c);
		double dt = now_s() - t0;
		if (dt * 1000 >= target_ms / 4 || iters >= (1L << 30)) {
			iters = (long)((double)iters * (target_ms / 1000.0) / (dt > 0 ? dt : 1e-9));
			if (iters < 1)
				iters = 1;
			break;
		}
		iters *= 4;
	}
	double v[REPS];
	for (int r = 0; r < REPS; r++) {
		double t0 = now_s();
		for (long i = 0; i < iters; i++)
			fn(c);
		v[r] = (now_s() - t0) * 1e6 / (double)iters;
	}
	qsort(v, REPS, sizeof v[0], cmp_double);
	return v[REPS / 2];
}

static char *fmt_text(const BenchStmt *s, int number, const char *suffix)
{
	char buf[4096];
	if (s->has_number) {
		/* the formats are the constants in bench_stmts, each with exactly one %d */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
		snprintf(buf, sizeof buf, s->sql, number);
#pragma GCC diagnostic pop
	}
	else
		snprintf(buf, sizeof buf, "%s", s->sql);
	size_t n = strlen(buf);
	snprintf(buf + n, sizeof buf - n, "%s", suffix);
	return strdup(buf);
}

static void set_texts(Ctx *c, char **texts, int n)
{
	c->texts = texts;
	c->ntexts = n;
	free(c->lens);
	c->lens = malloc((size_t)n * sizeof *c->lens);
	for (int i = 0; i < n; i++)
		c->lens[i] = strlen(texts[i]);
	c->next = 0;
}

static void free_texts(char **t, int n)
{
	for (int i = 0; i < n; i++)
		free(t[i]);
	free(t);
}

static const char *decision_str(const EffectivePolicy *ep, const char *sql, char *msg, size_t msglen)
{
	QueryFacts *q = inspect_sql(sql);
	Decision d;
	policy_decide(ep, q, NULL, NULL, &d);
	snprintf(msg, msglen, "%s", d.kind == DEC_BLOCK ? d.message : "");
	inspect_free(q);
	return d.kind == DEC_BLOCK ? "block" : "allow";
}

int main(int argc, char **argv)
{
	bool rules_only = false;
	int nsessions = 8;
	int a = 1;
	for (; a < argc && strncmp(argv[a], "--", 2) == 0; a++) {
		if (strcmp(argv[a], "--rules-only") == 0)
			rules_only = true;
		else if (strcmp(argv[a], "--ms") == 0 && a + 1 < argc)
			target_ms = atof(argv[++a]);
		else if (strcmp(argv[a], "--sessions") == 0 && a + 1 < argc)
			nsessions = atoi(argv[++a]);
		else
			break;
	}
	if (argc - a != 3 || target_ms <= 0 || nsessions < 1 || nsessions > 10000) {
		fprintf(stderr, "usage: %s [--rules-only] [--ms N] [--sessions N] CONFIG USER DATABASE\n", argv[0]);
		return 2;
	}
	const char *path = argv[a], *user = argv[a + 1], *db = argv[a + 2];
	log_set_level(LOG_ERROR);

	char err[512];
	Config *cfg = config_load(path, err, sizeof err);
	if (!cfg) {
		fprintf(stderr, "inspect_cost: %s\n", err);
		return 2;
	}
	const UserConfig *u = config_find_user(cfg, user);
	if (!u) {
		fprintf(stderr, "inspect_cost: user %s is not in %s\n", user, path);
		return 2;
	}
	EffectivePolicy *ep = policy_effective(cfg, user, u->groups, u->ngroups, db);
	if (ep->allow_all || ep->deny_all || ep->unrestricted) {
		fprintf(stderr, "inspect_cost: the effective policy of %s on %s is %s, not an enforcing one\n", user, db,
			ep->allow_all ? "allow-all" : ep->deny_all ? "deny-all" : "unrestricted");
		return 2;
	}

	/* ---- rule count: every item of the effective (merged) policy ---- */
	int n_ro = ep->read_only_by != NULL, n_del = ep->delete_without_where_by != NULL,
	    n_upd = ep->update_without_where_by != NULL, n_rows = ep->max_rows > 0, n_to = ep->timeout_ms > 0;
	int total = ep->scope.n + ep->block_kinds.n + ep->block_functions.n + ep->select_without_where.n + n_ro + n_del +
		    n_upd + n_rows + n_to;
	printf("effective policy for user %s on database %s: policies [%s]\n", user, db, ep->names);
	printf("rules: %d = access.tables %d + read_only %d + block.statements %d + block.functions %d"
	       " + delete_without_where %d + update_without_where %d + select_without_where %d"
	       " + max_rows %d + statement_timeout %d\n",
	       total, ep->scope.n, n_ro, ep->block_kinds.n, ep->block_functions.n, n_del, n_upd,
	       ep->select_without_where.n, n_rows, n_to);
	printf("RULES=%d\n", total);

	/* ---- decisions the benchmark relies on ---- */
	int bad = 0;
	char msg[400];
	for (int s = 0; s < NSTMTS; s++) {
		char *t = fmt_text(&bench_stmts[s], 12345, "");
		const char *d = decision_str(ep, t, msg, sizeof msg);
		if (strcmp(d, "allow") != 0) {
			printf("  WRONG: bench statement refused: %s\n         %s\n", t, msg);
			bad++;
		}
		free(t);
	}
	int nblocked = 0;
	for (int i = 0; i < NBLOCK; i++) {
		const char *d = decision_str(ep, must_block[i], msg, sizeof msg);
		if (strcmp(d, "block") != 0) {
			printf("  WRONG: allowed, should be refused: %s\n", must_block[i]);
			bad++;
		} else {
			nblocked++;
		}
	}
	printf("offline decisions: %d bench statements allowed, %d/%d must-refuse statements refused%s\n",
	       NSTMTS, nblocked, NBLOCK, bad ? " -- MISMATCH" : "");
	if (bad)
		return 3;
	if (rules_only)
		return 0;

	/* ---- timings ---- */
	printf("\nper-statement policy cost, µs per call (median of %d x ~%.0f ms, 1 thread, cache %d entries)\n", REPS,
	       target_ms, CACHE_ENTRIES);
	char h_folded_n[32], h_bind_n[32];
	snprintf(h_folded_n, sizeof h_folded_n, "folded@%ds", nsessions);
	snprintf(h_bind_n, sizeof h_bind_n, "bind@%ds", nsessions);
	printf("%-20s %5s %13s %10s %9s %10s %11s %8s %11s %9s\n", "statement", "stmts", "parse+decide", "miss",
	       "miss/stmt", "exact_hit", "folded_hit", "bind", h_folded_n, h_bind_n);
	Ctx c = {.ep = ep};
	/* one effective policy per session, as session.c computes them at login */
	EffectivePolicy **eps = malloc((size_t)nsessions * sizeof *eps);
	for (int i = 0; i < nsessions; i++)
		eps[i] = policy_effective(cfg, user, u->groups, u->ngroups, db);
	double simple_folded_n = 0, prepared_bind_n = 0;
	double simple_folded = 0, simple_exact = 0, prepared_bind = 0, simple_miss = 0;
	for (int s = 0; s < NSTMTS; s++) {
		const BenchStmt *b = &bench_stmts[s];
		int nstmts;
		{
			char *t = fmt_text(b, 1, "");
			QueryFacts *q = inspect_sql(t);
			nstmts = q->nstmts;
			inspect_free(q);
			free(t);
		}
		/* unique texts that cannot fold (a trailing comment stops folding): always a miss */
		char **uniq = malloc(NVARIANTS * sizeof *uniq);
		for (int i = 0; i < NVARIANTS; i++) {
			char sfx[32];
			snprintf(sfx, sizeof sfx, " -- %d", i);
			uniq[i] = fmt_text(b, 1 + (int)((unsigned)i * 2654435761u % 1000000u), sfx);
		}
		set_texts(&c, uniq, NVARIANTS);
		double t_parse = measure(op_parse_decide, &c);

		c.cache = facts_cache_new(CACHE_ENTRIES);
		set_texts(&c, uniq, NVARIANTS);
		double t_miss = measure(op_cache, &c);
		facts_cache_free(c.cache);

		/* exact hit: one text over and over */
		char **one = malloc(sizeof *one);
		one[0] = fmt_text(b, 4711, "");
		c.cache = facts_cache_new(CACHE_ENTRIES);
		set_texts(&c, one, 1);
		double t_exact = measure(op_cache, &c);
		facts_cache_free(c.cache);

		/* folded hit: different numbers, as pgbench -S sends them */
		double t_folded = -1, t_folded_n = -1;
		if (b->has_number) {
			char **vary = malloc(NVARIANTS * sizeof *vary);
			for (int i = 0; i < NVARIANTS; i++)
				vary[i] = fmt_text(b, 1 + (int)((unsigned)(i + 7) * 2654435761u % 1000000u), "");
			c.cache = facts_cache_new(CACHE_ENTRIES);
			set_texts(&c, vary, NVARIANTS);
			op_cache(&c); /* the first text is a miss: it creates the folded entry */
			CacheStats before = *facts_cache_stats(c.cache);
			t_folded = measure(op_cache, &c);
			c.eps = eps;
			c.neps = nsessions;
			t_folded_n = measure(op_cache, &c);
			c.eps = NULL;
			c.neps = 0;
			const CacheStats *after = facts_cache_stats(c.cache);
			if (after->misses != before.misses || after->hits_folded == before.hits_folded) {
				printf("  WARNING: %s: folded run had %llu misses, %llu folded hits\n", b->name,
				       (unsigned long long)(after->misses - before.misses),
				       (unsigned long long)(after->hits_folded - before.hits_folded));
			}
			facts_cache_free(c.cache);
			free_texts(vary, NVARIANTS);
		}

		/* bind: the decision on an entry already held (memoized per effective policy) */
		c.cache = facts_cache_new(CACHE_ENTRIES);
		c.held = facts_cache_get(c.cache, one[0], strlen(one[0]));
		double t_bind = measure(op_bind, &c);
		c.eps = eps;
		c.neps = nsessions;
		double t_bind_n = measure(op_bind, &c);
		c.eps = NULL;
		c.neps = 0;
		cached_facts_release(c.held);
		c.held = NULL;
		facts_cache_free(c.cache);
		free_texts(one, 1);
		free_texts(uniq, NVARIANTS);

		char folded_s[16], folded_n_s[16];
		if (t_folded >= 0) {
			snprintf(folded_s, sizeof folded_s, "%.3f", t_folded);
			snprintf(folded_n_s, sizeof folded_n_s, "%.3f", t_folded_n);
		} else {
			snprintf(folded_s, sizeof folded_s, "n/a");
			snprintf(folded_n_s, sizeof folded_n_s, "n/a");
		}
		printf("%-20s %5d %13.2f %10.2f %9.2f %10.3f %11s %8.3f %11s %9.3f\n", b->name, nstmts, t_parse, t_miss,
		       t_miss / (nstmts ? nstmts : 1), t_exact, folded_s, t_bind, folded_n_s, t_bind_n);
		if (s == 0) {
			simple_folded = t_folded;
			simple_folded_n = t_folded_n;
			simple_exact = t_exact;
			simple_miss = t_miss;
		}
		if (s == 1) {
			prepared_bind = t_bind;
			prepared_bind_n = t_bind_n;
		}
	}
	printf("(n/a: a text with $n parameters is never folded; it is parsed once per connection at Parse)\n");
	printf("(@%ds: %d sessions of the same identity take turns; the decision memo of an entry holds a few policy ids)\n",
	       nsessions, nsessions);
	printf("SUMMARY simple_miss_us=%.3f simple_exact_hit_us=%.3f simple_folded_hit_us=%.3f prepared_bind_us=%.3f "
	       "simple_folded_hit_sessions_us=%.3f prepared_bind_sessions_us=%.3f sessions=%d\n",
	       simple_miss, simple_exact, simple_folded, prepared_bind, simple_folded_n, prepared_bind_n, nsessions);
	for (int i = 0; i < nsessions; i++)
		policy_free(eps[i]);
	free(eps);
	free(c.lens);
	policy_free(ep);
	config_release(cfg);
	return c.sink < 0; /* keep the sink alive */
}
