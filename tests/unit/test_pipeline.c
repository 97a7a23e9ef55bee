/* The pipeline queue: simple and extended flows, errors mid-pipeline, describe variants. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "session/pipeline.h"

static void front(Pipeline *p, const char *types)
{
	for (const char *t = types; *t; t++) {
		char d = 0;
		if (*t == 'D' || *t == 'd') {
			d = *t == 'D' ? 'S' : 'P';
			assert_true(pipeline_on_frontend(p, 'D', d, NULL));
			continue;
		}
		assert_true(pipeline_on_frontend(p, *t, 0, NULL));
	}
}

static void back(Pipeline *p, const char *types, char status)
{
	for (const char *t = types; *t; t++)
		pipeline_on_backend(p, *t, *t == 'Z' ? status : 0);
}

static void test_simple_query(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	front(&p, "Q");
	back(&p, "TDDC", 0);
	assert_false(pipeline_idle(&p));
	back(&p, "Z", 'T');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.txn_status, 'T');
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_extended_pipeline(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	/* Parse, Bind, Describe portal, Execute, Sync twice, pipelined. */
	front(&p, "PBdES");
	front(&p, "BEHS"); /* H (Flush) produces nothing */
	back(&p, "12TDDC", 0);
	assert_int_equal(pipeline_front(&p)->kind, EXP_SYNC);
	back(&p, "Z", 'I');
	back(&p, "2DC", 0);
	back(&p, "Z", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_describe_statement(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	front(&p, "PDS");
	back(&p, "1tnZ", 'I');
	assert_true(pipeline_idle(&p));
	front(&p, "PDS");
	back(&p, "1tTZ", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_error_skips_to_sync(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	front(&p, "PBES");
	front(&p, "PBES");
	back(&p, "E", 0); /* Parse failed: Bind/Execute are skipped by the server */
	assert_int_equal(pipeline_front(&p)->kind, EXP_SYNC);
	back(&p, "Z", 'I');
	back(&p, "12CZ", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_error_in_query_keeps_entry(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	front(&p, "QQ");
	back(&p, "EZ", 'E');
	assert_int_equal(p.txn_status, 'E');
	back(&p, "CZ", 'I');
	assert_true(pipeline_idle(&p));
	pipeline_free(&p);
}

static void test_function_call_and_close(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	front(&p, "F");
	back(&p, "VZ", 'I');
	front(&p, "CS");
	back(&p, "3Z", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

/* COPY messages, which front() does not name ('d' there is a portal Describe). */
static void copy_msgs(Pipeline *p, const char *types)
{
	for (const char *t = types; *t; t++)
		assert_true(pipeline_on_frontend(p, *t, 0, NULL));
}

static void test_copy_in_ignores_syncs(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	/* libpq: Parse, Bind, Describe, Execute, Sync; the Sync reaches a server reading COPY data */
	front(&p, "PBdES");
	back(&p, "12n", 0);
	back(&p, "G", 0);
	assert_true(p.copy_in);
	assert_int_equal(p.count, 2); /* the Sync waits for the COPY's end: read inside it, or not */
	assert_true(pipeline_at(&p, 1)->maybe_ignored);
	assert_true(pipeline_copy_swallows(&p, 'S'));
	assert_true(pipeline_copy_swallows(&p, 'H'));
	assert_true(pipeline_copy_refuses(&p, 'Q'));
	assert_false(pipeline_copy_refuses(&p, 'd'));
	copy_msgs(&p, "ddc");
	assert_false(p.copy_in);
	front(&p, "S");
	back(&p, "CZ", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	/* simple protocol, everything sent before the CopyInResponse came */
	front(&p, "Q");
	copy_msgs(&p, "ddc");
	front(&p, "S");
	back(&p, "G", 0);
	assert_false(p.copy_in);
	assert_int_equal(p.count, 2); /* the Query and the Sync after CopyDone */
	back(&p, "CZZ", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	assert_false(p.copy_broken);
	pipeline_free(&p);
}

static void test_copy_in_ambiguous(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	/* a Sync after COPY data: ignored unless an error in the data ended the COPY before it */
	front(&p, "Q");
	copy_msgs(&p, "d");
	front(&p, "S");
	back(&p, "G", 0);
	assert_true(p.copy_broken);
	pipeline_free(&p);
	pipeline_init(&p);
	/* a Parse pipelined into the COPY */
	front(&p, "PBES");
	front(&p, "P");
	back(&p, "12G", 0);
	assert_true(p.copy_broken);
	pipeline_free(&p);
}

static void test_copy_that_fails_before_its_data(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	/* COPY FREEZE's checks run after the CopyInResponse: was the Sync read inside the COPY? */
	front(&p, "PBES");
	copy_msgs(&p, "c");
	front(&p, "SQ");
	back(&p, "12G", 0);
	assert_false(p.copy_broken);
	back(&p, "E", 0);
	assert_true(p.copy_broken);
	pipeline_free(&p);
	pipeline_init(&p);
	/* an error over the data (the relay tells): the Sync was read inside the COPY */
	front(&p, "PBES");
	back(&p, "12G", 0);
	copy_msgs(&p, "dd");
	pipeline_copy_data_was_read(&p);
	back(&p, "E", 0);
	assert_false(p.copy_broken);
	copy_msgs(&p, "c");
	front(&p, "S");
	back(&p, "Z", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_copy_that_does_not_start(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	/* the COPY fails before reading data: the data is ignored, both Syncs are answered */
	front(&p, "PBES");
	copy_msgs(&p, "ddc");
	front(&p, "S");
	back(&p, "12E", 0);
	back(&p, "Z", 'I');
	back(&p, "Z", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	/* COPY messages with nothing owed leave nothing behind */
	copy_msgs(&p, "dcf");
	assert_true(pipeline_idle(&p));
	/* an error in the data ends the COPY: the server reads messages again */
	front(&p, "PBES");
	back(&p, "12G", 0);
	copy_msgs(&p, "d");
	pipeline_copy_data_was_read(&p);
	back(&p, "E", 0);
	assert_false(p.copy_in);
	copy_msgs(&p, "c");
	front(&p, "S");
	back(&p, "Z", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	pipeline_free(&p);
}

static void test_growth(void **state)
{
	(void)state;
	Pipeline p;
	pipeline_init(&p);
	for (int i = 0; i < 1000; i++)
		front(&p, "BES");
	for (int i = 0; i < 1000; i++)
		back(&p, "2DCZ", 'I');
	assert_true(pipeline_idle(&p));
	assert_int_equal(p.unexpected, 0);
	back(&p, "Z", 'I');
	assert_int_equal(p.unexpected, 1);
	pipeline_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_simple_query),
		cmocka_unit_test(test_extended_pipeline),
		cmocka_unit_test(test_describe_statement),
		cmocka_unit_test(test_error_skips_to_sync),
		cmocka_unit_test(test_error_in_query_keeps_entry),
		cmocka_unit_test(test_function_call_and_close),
		cmocka_unit_test(test_growth),
		cmocka_unit_test(test_copy_in_ignores_syncs),
		cmocka_unit_test(test_copy_in_ambiguous),
		cmocka_unit_test(test_copy_that_does_not_start),
		cmocka_unit_test(test_copy_that_fails_before_its_data),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
