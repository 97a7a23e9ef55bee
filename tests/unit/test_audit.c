/* The audit chain, the SQLite store and verification: tags, key evolution, tamper findings. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <sqlite3.h>

#include "audit/chain.h"
#include "audit/report.h"
#include "audit/store.h"
#include "config/config.h"
#include "core/jsonw.h"
#include <jansson.h>

static const uint8_t KEY[AUDIT_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
					   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static StoredRecord rec(int64_t seq, const char *body, const char *prev)
{
	StoredRecord r = {.node = "n1", .seq = seq, .time = "2026-11-22T10:00:00.000000Z", .kind = "statement",
			  .session_id = "s1", .user_name = "alice", .database = "app", .body = body, .prev_tag = prev};
	return r;
}

static void test_tag_covers_every_field(void **state)
{
	(void)state;
	char a[AUDIT_TAG_HEX], b[AUDIT_TAG_HEX];
	StoredRecord r = rec(1, "{\"sql\":\"select 1\"}", "");
	chain_tag(KEY, &r, a);
	chain_tag(KEY, &r, b);
	assert_string_equal(a, b);
	assert_int_equal(strlen(a), 64);
	const char **fields[] = {&r.node, &r.time, &r.kind, &r.session_id, &r.user_name, &r.database, &r.body, &r.prev_tag};
	for (size_t i = 0; i < sizeof fields / sizeof *fields; i++) {
		const char *saved = *fields[i];
		*fields[i] = "x";
		chain_tag(KEY, &r, b);
		assert_string_not_equal(a, b);
		*fields[i] = saved;
	}
	r.seq = 2;
	chain_tag(KEY, &r, b);
	assert_string_not_equal(a, b);
	/* Length prefixes: moving a byte between fields changes the tag. */
	StoredRecord r2 = r, r3 = r;
	r2.user_name = "alicea";
	r2.database = "pp";
	r3.user_name = "alice";
	r3.database = "app";
	chain_tag(KEY, &r2, a);
	chain_tag(KEY, &r3, b);
	assert_string_not_equal(a, b);
}

static void test_key_evolves_one_way(void **state)
{
	(void)state;
	uint8_t k1[AUDIT_KEY_LEN], k3[AUDIT_KEY_LEN], step[AUDIT_KEY_LEN];
	chain_key_at(KEY, 1, k1);
	assert_memory_equal(k1, KEY, AUDIT_KEY_LEN);
	chain_key_at(KEY, 3, k3);
	memcpy(step, KEY, sizeof step);
	chain_next_key(step);
	assert_memory_not_equal(step, KEY, AUDIT_KEY_LEN);
	chain_next_key(step);
	assert_memory_equal(step, k3, AUDIT_KEY_LEN);
}

static char dbpath[64];

/* A store with n chained records of node n1, written as the gateway writes them. */
static AuditStore *make_store(int n)
{
	snprintf(dbpath, sizeof dbpath, "/tmp/pgcordon-unit-audit-XXXXXX");
	int fd = mkstemp(dbpath);
	assert_true(fd >= 0);
	close(fd);
	char url[80], err[300];
	snprintf(url, sizeof url, "sqlite:%s", dbpath);
	AuditStore *st = store_open(url, false, err, sizeof err);
	assert_non_null(st);
	uint8_t key[AUDIT_KEY_LEN];
	memcpy(key, KEY, sizeof key);
	char prev[AUDIT_TAG_HEX] = "", tag[AUDIT_TAG_HEX], body[64];
	assert_true(store_begin(st, err, sizeof err));
	for (int i = 1; i <= n; i++) {
		snprintf(body, sizeof body, "{\"n\":%d}", i);
		StoredRecord r = rec(i, body, prev);
		chain_tag(key, &r, tag);
		r.tag = tag;
		assert_true(store_insert(st, &r, err, sizeof err));
		chain_next_key(key);
		memcpy(prev, tag, sizeof prev);
	}
	assert_true(store_commit(st, err, sizeof err));
	return st;
}

static void sql(const char *q)
{
	sqlite3 *db;
	assert_int_equal(sqlite3_open(dbpath, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, q, NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);
}

static int verify(AuditStore *st, VerifyResult *v)
{
	char err[300];
	return audit_verify(st, KEY, "n1", v, err, sizeof err);
}

static void drop_store(AuditStore *st)
{
	store_close(st);
	unlink(dbpath);
	char side[80];
	snprintf(side, sizeof side, "%s-wal", dbpath);
	unlink(side);
	snprintf(side, sizeof side, "%s-shm", dbpath);
	unlink(side);
}

static void test_verify_intact_chain(void **state)
{
	(void)state;
	AuditStore *st = make_store(10);
	VerifyResult v;
	assert_int_equal(verify(st, &v), 1);
	assert_int_equal(v.records, 10);
	assert_int_equal(v.first_seq, 1);
	assert_int_equal(v.last_seq, 10);
	uint8_t wrong[AUDIT_KEY_LEN] = {0};
	char err[300];
	assert_int_equal(audit_verify(st, wrong, "n1", &v, err, sizeof err), 0); /* another key: nothing verifies */
	drop_store(st);
}

static void test_verify_names_altered_deleted_inserted(void **state)
{
	(void)state;
	VerifyResult v;
	AuditStore *st = make_store(10);
	sql("UPDATE audit_records SET body = '{\"n\":99}' WHERE seq = 4");
	assert_int_equal(verify(st, &v), 0);
	assert_non_null(strstr(v.problem, "seq=4"));
	assert_non_null(strstr(v.problem, "altered"));
	drop_store(st);

	st = make_store(10);
	sql("UPDATE audit_records SET user_name = 'mallory' WHERE seq = 6");
	assert_int_equal(verify(st, &v), 0);
	assert_non_null(strstr(v.problem, "seq=6"));
	drop_store(st);

	st = make_store(10);
	sql("DELETE FROM audit_records WHERE seq = 5");
	assert_int_equal(verify(st, &v), 0);
	assert_non_null(strstr(v.problem, "seq=5"));
	assert_non_null(strstr(v.problem, "deleted"));
	drop_store(st);

	st = make_store(10);
	sql("DELETE FROM audit_records WHERE seq <= 3"); /* a "prune" without its prune record */
	assert_int_equal(verify(st, &v), 0);
	assert_non_null(strstr(v.problem, "seq=3"));
	assert_non_null(strstr(v.problem, "deleted"));
	drop_store(st);

	st = make_store(10);
	sql("INSERT INTO audit_records (node, seq, time, kind, session_id, user_name, database, body, prev_tag, tag)"
	    " SELECT node, 11, time, kind, session_id, user_name, database, '{\"n\":11}', tag,"
	    " tag FROM audit_records WHERE seq = 10");
	assert_int_equal(verify(st, &v), 0);
	assert_non_null(strstr(v.problem, "seq=11"));
	assert_non_null(strstr(v.problem, "inserted"));
	drop_store(st);
}

static void test_since(void **state)
{
	(void)state;
	char out[AUDIT_TIME_LEN];
	assert_true(audit_parse_since("2026-11-01", out));
	assert_string_equal(out, "2026-11-01");
	assert_true(audit_parse_since("2026-11-01 08:00:00Z", out));
	assert_string_equal(out, "2026-11-01T08:00:00");
	assert_true(audit_parse_since("30m", out));
	assert_int_equal(strlen(out), 27);
	assert_false(audit_parse_since("yesterday", out));
	assert_false(audit_parse_since("2026-11-01'; DROP", out));
	int64_t s;
	assert_true(config_parse_period_s("90d", &s));
	assert_int_equal(s, 90 * 86400);
	assert_false(config_parse_period_s("5w", &s));
	assert_false(config_parse_period_s("-1d", &s));
}

static void test_json_writer(void **state)
{
	(void)state;
	JsonW w;
	jw_init(&w);
	jw_begin_object(&w);
	jw_key(&w, "s");
	jw_string(&w, "quote \" backslash \\ newline \n tab \t bell \a Ã©");
	jw_key(&w, "bad");
	jw_text(&w, (const uint8_t *)"\xff" "\0" "a", 3, false);
	jw_key(&w, "bin");
	jw_text(&w, (const uint8_t *)"ok", 2, true);
	jw_key(&w, "list");
	jw_begin_array(&w);
	jw_int(&w, -5);
	jw_null(&w);
	jw_bool(&w, true);
	jw_fixed3(&w, 1500);
	jw_begin_array(&w);
	jw_end_array(&w);
	jw_raw(&w, "{\"x\":1}", 7);
	jw_end_array(&w);
	jw_key(&w, "none");
	jw_string(&w, NULL);
	jw_end_object(&w);
	char *text = jw_take(&w);
	json_error_t e;
	json_t *j = json_loads(text, 0, &e);
	if (!j)
		fail_msg("invalid JSON %s: %s", text, e.text);
	assert_string_equal(json_string_value(json_object_get(j, "s")),
			    "quote \" backslash \\ newline \n tab \t bell \a Ã©");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "bad"), "hex")), "ff0061");
	assert_string_equal(json_string_value(json_object_get(json_object_get(j, "bin"), "hex")), "6f6b");
	assert_int_equal(json_array_size(json_object_get(j, "list")), 6);
	assert_int_equal(json_integer_value(json_array_get(json_object_get(j, "list"), 0)), -5);
	assert_true(json_real_value(json_array_get(json_object_get(j, "list"), 3)) == 1.5);
	assert_true(json_is_null(json_object_get(j, "none")));
	json_decref(j);
	free(text);
	/* Overlong forms and surrogates are not UTF-8. */
	assert_false(jw_valid_utf8((const uint8_t *)"\xc0\xaf", 2));
	assert_false(jw_valid_utf8((const uint8_t *)"\xed\xa0\x80", 3));
	assert_false(jw_valid_utf8((const uint8_t *)"\xe2\x82", 2));
	assert_true(jw_valid_utf8((const uint8_t *)"\xf0\x9f\x98\x80", 4));
	/* Numbers are written by hand (no printf on the hot path). */
	jw_init(&w);
	jw_begin_array(&w);
	jw_int(&w, INT64_MIN);
	jw_int(&w, 0);
	jw_fixed3(&w, 7);
	jw_fixed3(&w, -1234567);
	jw_fixed3(&w, 0);
	jw_end_array(&w);
	text = jw_take(&w);
	assert_string_equal(text, "[-9223372036854775808,0,0.007,-1234.567,0.000]");
	free(text);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tag_covers_every_field),
		cmocka_unit_test(test_key_evolves_one_way),
		cmocka_unit_test(test_verify_intact_chain),
		cmocka_unit_test(test_verify_names_altered_deleted_inserted),
		cmocka_unit_test(test_since),
		cmocka_unit_test(test_json_writer),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);
	chain_release_thread();
	return failed;
}
