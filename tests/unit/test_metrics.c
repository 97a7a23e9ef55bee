/*
 * The counters behind /metrics (src/core/metrics.c): adds from worker threads (each on its
 * own slot, plain stores) and from other threads (the shared slot, atomic adds) all reach
 * the total, while threads add at the same time; the exposition has one HELP and TYPE per
 * family and a sample per counter; login methods map to their counters.
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

int main(void)
{
	metrics_init(WORKERS);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_concurrent_adds_all_count),
		cmocka_unit_test(test_a_worker_index_out_of_range_counts_shared),
		cmocka_unit_test(test_login_methods),
		cmocka_unit_test(test_exposition),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
