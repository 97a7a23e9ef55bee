/*
 * The counters behind /metrics (src/core/metrics.c): adds from worker threads (each on its
 * own slot, plain stores) and from other threads (the shared slot, atomic adds) all reach
 * the total, while threads add at the same time; the exposition has one HELP and TYPE per
 * family and a sample per counter; login methods map to their counters. Histograms: a
 * duration lands in the first bucket whose bound it does not pass, the exposition's buckets
 * are cumulative and end in +Inf, equal to _count, and _sum is in seconds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <pthread.h>

#include "core/metrics.h"

#define WORKERS 3
#define ADDS 200000

typedef struct {
	int worker; /* -1: not a worker (the shared slot) */
} Adder;

static void *add_many(void *arg)
{
	Adder *a = arg;
	if (a->worker >= 0)
		metrics_bind_worker(a->worker);
	for (int i = 0; i < ADDS; i++) {
		metrics_inc(MET_DECISION_ALLOW);
		metrics_add(MET_BYTES_FROM_CLIENT, 3);
	}
	return NULL;
}

static void test_concurrent_adds_all_count(void **state)
{
	(void)state;
	uint64_t allow0 = metrics_total(MET_DECISION_ALLOW), bytes0 = metrics_total(MET_BYTES_FROM_CLIENT);
	/* Each worker slot has one thread, as in the gateway; three threads share the shared slot. */
	Adder adders[WORKERS + 3];
	pthread_t t[WORKERS + 3];
	for (int i = 0; i < WORKERS + 3; i++) {
		adders[i].worker = i < WORKERS ? i : -1;
		assert_int_equal(pthread_create(&t[i], NULL, add_many, &adders[i]), 0);
	}
	for (int i = 0; i < WORKERS + 3; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(metrics_total(MET_DECISION_ALLOW) - allow0, (uint64_t)(WORKERS + 3) * ADDS);
	assert_int_equal(metrics_total(MET_BYTES_FROM_CLIENT) - bytes0, (uint64_t)(WORKERS + 3) * ADDS * 3);
}

static void test_a_worker_index_out_of_range_counts_shared(void **state)
{
	(void)state;
	uint64_t before = metrics_total(MET_CUT_OFF);
	Adder a = {.worker = WORKERS + 5};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, add_many, &a), 0);
	pthread_join(t, NULL);
	metrics_inc(MET_CUT_OFF); /* this thread is no worker */
	assert_int_equal(metrics_total(MET_CUT_OFF) - before, 1);
	assert_int_equal(metrics_total(MET_DECISION_ALLOW) % ADDS, 0);
}

static void test_login_methods(void **state)
{
	(void)state;
	assert_int_equal(metrics_login("scram", 1), MET_LOGIN_OK_SCRAM);
	assert_int_equal(metrics_login("apikey", 1), MET_LOGIN_OK_APIKEY);
	assert_int_equal(metrics_login("oidc", 0), MET_LOGIN_FAILED_OIDC);
	assert_int_equal(metrics_login("password", 0), MET_LOGIN_FAILED_PASSWORD);
	assert_int_equal(metrics_login("password", 1), -1);
	assert_int_equal(metrics_login("ldap", 0), -1);
}

static void test_exposition(void **state)
{
	(void)state;
	metrics_inc(MET_LOGIN_FAILED_APIKEY);
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	metrics_write_counters(out);
	fclose(out);
	/* Every counter once, each family's header once. */
	int samples = 0, types = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		if (strncmp(line, "# TYPE ", 7) == 0) {
			types++;
			assert_non_null(strstr(line, "_total counter"));
		} else if (line[0] != '#') {
			samples++;
			assert_non_null(strstr(line, "_total"));
		}
	}
	assert_int_equal(samples, MET_COUNT - 2); /* the two wait counters make a gauge, written apart */
	assert_int_equal(types, 13);
	free(text);
	out = open_memstream(&text, &len);
	metrics_write_counters(out);
	fclose(out);
	assert_non_null(strstr(text, "pgcordon_logins_total{method=\"apikey\",result=\"failed\"} 1\n"));
	free(text);
}

static void test_histogram_buckets(void **state)
{
	(void)state;
	/* Bounds are inclusive ("le"): 500 us is in the 0.0005 s bucket, 501 us in the next. */
	assert_int_equal(metrics__bucket(HIST_STATEMENT, -5), 0);
	assert_int_equal(metrics__bucket(HIST_STATEMENT, 0), 0);
	assert_int_equal(metrics__bucket(HIST_STATEMENT, 500), 0);
	assert_int_equal(metrics__bucket(HIST_STATEMENT, 501), 1);
	assert_int_equal(metrics__bucket(HIST_STATEMENT, 60000000), 15);
	assert_int_equal(metrics__bucket(HIST_STATEMENT, 60000001), 16); /* +Inf */
	assert_int_equal(metrics__bucket(HIST_UPSTREAM_LOGIN, 30000001), 14);
	assert_int_equal(metrics__bucket(HIST_APPROVAL_WAIT, 86400000001), 14);
	assert_int_equal(metrics__bucket(HIST_APPROVAL_WAIT, 999999), 0);
}

/* The value of the sample line that starts with prefix (a name and its labels), or -1. */
static double sample(const char *text, const char *prefix)
{
	size_t n = strlen(prefix);
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
		if (strncmp(p, prefix, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	return -1;
}

static char *histograms_text(void)
{
	char *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	metrics_write_histograms(out);
	fclose(out);
	return text;
}

static void test_histogram_exposition(void **state)
{
	(void)state;
	const char *name = "pgcordon_statement_duration_seconds";
	char *before = histograms_text();
	uint64_t count0 = metrics_hist_count(HIST_STATEMENT);
	metrics_observe_us(HIST_STATEMENT, 300);       /* le 0.0005 */
	metrics_observe_us(HIST_STATEMENT, 2000);      /* le 0.0025 */
	metrics_observe_us(HIST_STATEMENT, 90000000); /* past 60 s: +Inf only */
	assert_int_equal(metrics_hist_count(HIST_STATEMENT) - count0, 3);
	char *after = histograms_text();
	/* How far each sample moved: the buckets are cumulative. */
	static const struct {
		const char *suffix;
		double moved;
	} expect[] = {
		{"_bucket{le=\"0.0005\"}", 1}, {"_bucket{le=\"0.001\"}", 1}, {"_bucket{le=\"0.0025\"}", 2},
		{"_bucket{le=\"60\"}", 2},     {"_bucket{le=\"+Inf\"}", 3},  {"_count", 3},
	};
	char key[128];
	for (size_t i = 0; i < sizeof expect / sizeof expect[0]; i++) {
		snprintf(key, sizeof key, "%s%s", name, expect[i].suffix);
		if (sample(after, key) - sample(before, key) != expect[i].moved)
			fail_msg("%s moved by %g, not %g", key, sample(after, key) - sample(before, key), expect[i].moved);
	}
	snprintf(key, sizeof key, "%s_sum", name);
	double sum = sample(after, key) - sample(before, key);
	assert_true(sum > 90.002299 && sum < 90.002301);

	/* Every histogram: HELP and TYPE, buckets that never decrease, +Inf equal to _count. */
	int types = 0;
	double last = -1, inf = -1;
	for (char *line = strtok(after, "\n"); line; line = strtok(NULL, "\n")) {
		if (strncmp(line, "# TYPE ", 7) == 0) {
			types++;
			assert_non_null(strstr(line, "_seconds histogram"));
			last = -1;
		} else if (line[0] != '#' && strstr(line, "_bucket{le=\"")) {
			double v = strtod(strrchr(line, ' ') + 1, NULL);
			assert_true(v >= last);
			last = v;
			if (strstr(line, "le=\"+Inf\""))
				inf = v;
		} else if (line[0] != '#' && strstr(line, "_count ")) {
			assert_true(strtod(strrchr(line, ' ') + 1, NULL) == inf);
		}
	}
	assert_int_equal(types, HIST_COUNT);
	free(before);
	free(after);
}

int main(void)
{
	metrics_init(WORKERS);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_concurrent_adds_all_count),
		cmocka_unit_test(test_a_worker_index_out_of_range_counts_shared),
		cmocka_unit_test(test_login_methods),
		cmocka_unit_test(test_exposition),
		cmocka_unit_test(test_histogram_buckets),
		cmocka_unit_test(test_histogram_exposition),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
