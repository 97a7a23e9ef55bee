/* Policy merging and decisions over real inspector facts; the facts cache's number folding. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config/config.h"
#include "policy/cache.h"
#include "policy/policy.h"

#define VERIFIER                                                                                          \
	"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"          \
	"wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="

static const char base_config[] =
	"databases:\n  app: {host: h, user: u, password: p}\n"
	"users:\n"
	"  alice: {password: \"" VERIFIER "\", groups: [analysts]}\n"
	"  agent: {password: \"" VERIFIER "\", groups: [agents]}\n"
	"policies:\n"
	"  - name: everyone\n"
	"    block:\n"
	"      - statements: [drop_database, copy_to_program]\n"
	"    limits: {max_rows: 500}\n"
	"  - name: analysts\n"
	"    match: {groups: [analysts]}\n"
	"    block:\n"
	"      - delete_without_where: true\n"
	"      - select_without_where: [public.customers]\n"
	"  - name: agents\n"
	"    match: {groups: [agents], databases: [app]}\n"
	"    access: {read_only: true, tables: [public.orders, \"reporting.*\"]}\n"
	"    block:\n"
	"      - functions: [pg_sleep, pg_catalog.pg_read_file]\n"
	"    limits: {max_rows: 100, statement_timeout: 5s}\n"
	"  - name: agents-extra\n"
	"    match: {users: [agent]}\n"
	"    access: {tables: [public.items]}\n";

static Config *load(const char *text)
{
	char path[] = "/tmp/pgcordon-policy-XXXXXX", err[512];
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	Config *c = config_load(path, err, sizeof err);
	unlink(path);
	if (!c)
		fail_msg("%s", err);
	return c;
}

static EffectivePolicy *effective(Config *c, const char *user)
{
	const UserConfig *u = config_find_user(c, user);
	return policy_effective(c, user, u ? u->groups : NULL, u ? u->ngroups : 0, "app");
}

/* Decides sql and checks the outcome; expect NULL means allowed, else a message fragment. */
static void check(const EffectivePolicy *ep, const char *sql, const char *expect)
{
	QueryFacts *q = inspect_sql(sql);
	Decision d;
	policy_decide(ep, q, NULL, NULL, &d);
	if (!expect && d.kind != DEC_ALLOW)
		fail_msg("\"%s\" should be allowed, got \"%s\"", sql, d.message);
	if (expect && (d.kind != DEC_BLOCK || !strstr(d.message, expect)))
		fail_msg("\"%s\" should be refused with \"%s\", got %s \"%s\"", sql, expect,
			 d.kind == DEC_ALLOW ? "allow" : "block", d.message);
	inspect_free(q);
}

static void test_merge(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *agent = effective(c, "agent");
	assert_string_equal(agent->names, "everyone,agents,agents-extra");
	assert_int_equal(agent->max_rows, 100); /* the smallest wins */
	assert_int_equal(agent->timeout_ms, 5000);
	assert_string_equal(agent->read_only_by, "agents");
	assert_true(agent->scoped);
	assert_int_equal(agent->scope.n, 3); /* scopes unite */
	EffectivePolicy *alice = effective(c, "alice");
	assert_int_equal(alice->max_rows, 500);
	assert_null(alice->read_only_by);
	assert_false(alice->scoped);
	EffectivePolicy *nobody = effective(c, "mallory");
	assert_string_equal(nobody->names, "everyone"); /* matches everyone */
	policy_free(agent);
	policy_free(alice);
	policy_free(nobody);
	config_release(c);
}

static void test_blocks_add_up(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *alice = effective(c, "alice");
	check(alice, "DROP DATABASE app", "blocked by policy everyone: DROP DATABASE is not allowed");
	check(alice, "COPY (SELECT 1) TO PROGRAM 'cat'", "policy everyone: COPY TO PROGRAM is not allowed");
	check(alice, "DELETE FROM orders", "policy analysts: DELETE without WHERE");
	check(alice, "DELETE FROM orders WHERE true", "DELETE without WHERE");
	check(alice, "DELETE FROM orders WHERE id = 1", NULL);
	check(alice, "WITH d AS (DELETE FROM orders RETURNING *) SELECT * FROM d", "DELETE without WHERE");
	check(alice, "SELECT * FROM customers", "SELECT from customers without WHERE");
	check(alice, "SELECT * FROM public.customers c JOIN orders o ON o.cid = c.id", "without WHERE");
	check(alice, "SELECT * FROM customers WHERE id = 3", NULL);
	check(alice, "SELECT * FROM orders", NULL);
	check(alice, "selec 1", "cannot parse statement");
	policy_free(alice);
	config_release(c);
}

static void test_read_only_scope_functions(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *agent = effective(c, "agent");
	check(agent, "SELECT * FROM orders WHERE id = 1", NULL);
	check(agent, "SELECT * FROM public.orders o JOIN reporting.daily d USING (id)", NULL);
	check(agent, "SELECT * FROM items", NULL);
	check(agent, "SELECT * FROM secrets", "table secrets is outside the caller's scope");
	check(agent, "SELECT * FROM orders WHERE id IN (SELECT id FROM other.t)", "other.t is outside");
	check(agent, "WITH x AS (SELECT * FROM hidden) SELECT * FROM x", "hidden is outside");
	check(agent, "SELECT * FROM pg_class", "pg_class is outside");
	check(agent, "SELECT query_to_xml('select * from secrets', true, true, '')", "can read outside");
	check(agent, "INSERT INTO orders VALUES (1)", "read-only access does not allow INSERT");
	check(agent, "SELECT * INTO orders_copy FROM orders", "read-only access");
	check(agent, "SELECT * FROM orders FOR UPDATE", "read-only access does not allow SELECT FOR UPDATE");
	check(agent, "SET ROLE postgres", "read-only access does not allow SET ROLE");
	check(agent, "SELECT set_config('role', 'postgres', false)", "read-only access does not allow SET ROLE");
	check(agent, "SET search_path = evil", "changing search_path");
	check(agent, "SELECT pg_sleep(1)", "function pg_sleep is not allowed");
	check(agent, "SELECT pg_catalog.pg_read_file('x')", "function pg_catalog.pg_read_file is not allowed");
	check(agent, "SET statement_timeout = 0", "statement_timeout may not exceed 5000 ms");
	check(agent, "SET statement_timeout = '1min'", "may not exceed");
	check(agent, "SET statement_timeout = '2s'", NULL);
	check(agent, "SET statement_timeout = 'nan'", "may not exceed"); /* unreadable: refused */
	check(agent, "SET statement_timeout = 'inf'", "may not exceed");
	check(agent, "SET statement_timeout = '1e30'", "may not exceed");
	check(agent, "RESET statement_timeout", NULL);
	check(agent, "BEGIN", NULL);
	check(agent, "SHOW work_mem", NULL);
	check(agent, "EXPLAIN SELECT * FROM orders", NULL);
	check(agent, "SELECT 1; DROP TABLE orders", "read-only access does not allow DROP TABLE");
	policy_free(agent);
	config_release(c);
}

/* A config's first lines, and a user with the test password in one group. */
#define CONFIG_HEAD "databases:\n  app: {host: h, user: u, password: p}\nusers:\n"
#define USER(name, group) "  " name ": {password: \"" VERIFIER "\", groups: [" group "]}\n"

/* Code whose SQL the inspector never sees is refused to every restricted identity. */
static void test_uninspectable_code(void **state)
{
	(void)state;
	Config *c = load(CONFIG_HEAD USER("scoped", "s") USER("blocked", "b") USER("dba", "d")
			 "policies:\n"
			 "  - name: scope\n"
			 "    match: {groups: [s]}\n"
			 "    access: {tables: [public.orders]}\n"
			 "  - name: no-truncate\n"
			 "    match: {groups: [b]}\n"
			 "    block: [{statements: [truncate]}]\n"
			 "  - name: dba\n"
			 "    match: {groups: [d]}\n");
	const char *code[][2] = {
		{"DO $$BEGIN RAISE NOTICE '%', (SELECT count(*) FROM secrets); END$$", "DO BLOCK is not allowed"},
		{"CREATE FUNCTION f() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM secrets'",
		 "CREATE FUNCTION is not allowed"},
		{"CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'DELETE FROM secrets'", "is not allowed"},
		{"ALTER FUNCTION f() SET search_path = evil", "ALTER FUNCTION is not allowed"},
		{"CREATE TRIGGER t AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION f()",
		 "CREATE TRIG is not allowed"},
		{"CREATE RULE r AS ON INSERT TO orders DO ALSO NOTIFY x", "RULE is not allowed"},
		{"LOAD 'plpgsql'", "LOAD is not allowed"},
	};
	/* a DO block can EXECUTE 'TRUNCATE orders' as well as read outside a scope */
	const char *users[] = {"scoped", "blocked"};
	for (int u = 0; u < 2; u++) {
		EffectivePolicy *ep = effective(c, users[u]);
		for (size_t i = 0; i < sizeof code / sizeof code[0]; i++)
			check(ep, code[i][0], code[i][1]);
		check(ep, "DO $$BEGIN NULL; END$$", "the SQL it runs cannot be inspected");
		policy_free(ep);
	}
	EffectivePolicy *scoped = effective(c, "scoped");
	check(scoped, "SELECT * FROM orders WHERE id = 1", NULL);
	check(scoped, "SELECT ts_rewrite('a'::tsquery, 'SELECT a, b FROM secrets')", "can read outside");
	check(scoped, "SELECT * FROM pg_logical_slot_peek_changes('s', NULL, NULL)", "can read outside");
	policy_free(scoped);
	/* an identity no rule restricts is not inspected: its DBA work passes */
	EffectivePolicy *dba = effective(c, "dba");
	check(dba, code[0][0], NULL);
	check(dba, code[1][0], NULL);
	policy_free(dba);
	config_release(c);
}

static void test_function_rule_schemas(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *agent = effective(c, "agent");
	/* pg_catalog.pg_read_file is qualified in the rule: an unqualified call resolves to it too,
	 * but the rule only names the qualified form, so check both spellings are caught. */
	check(agent, "SELECT \"pg_sleep\"(1)", "function pg_sleep is not allowed");
	check(agent, "SELECT public.pg_sleep(1)", "function public.pg_sleep is not allowed");
	policy_free(agent);
	config_release(c);
}

static void test_default_and_no_policies(void **state)
{
	(void)state;
	Config *c = load("databases:\n  app: {host: h, user: u}\n");
	EffectivePolicy *ep = policy_effective(c, "x", NULL, 0, "app");
	assert_true(ep->allow_all);
	check(ep, "DROP DATABASE app", NULL);
	policy_free(ep);
	config_release(c);

	c = load("databases:\n  app: {host: h, user: u}\npolicies:\n  - name: only-bob\n    match: {users: [bob]}\n");
	ep = policy_effective(c, "x", NULL, 0, "app");
	assert_true(ep->deny_all);
	check(ep, "SELECT 1", "no policy grants");
	policy_free(ep);
	config_release(c);

	c = load("default: allow\ndatabases:\n  app: {host: h, user: u}\npolicies:\n  - name: only-bob\n    match: {users: [bob]}\n");
	ep = policy_effective(c, "x", NULL, 0, "app");
	assert_true(ep->allow_all);
	policy_free(ep);
	config_release(c);
}

static void test_startup_escapes(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *agent = effective(c, "agent");
	char err[300];
	const char *names[] = {"application_name", "options"};
	const char *ok_values[] = {"psql", "-c work_mem=64MB"};
	assert_true(policy_check_startup(agent, names, ok_values, 2, err, sizeof err));
	const char *role[] = {"psql", "-c role=postgres"};
	assert_false(policy_check_startup(agent, names, role, 2, err, sizeof err));
	const char *path[] = {"psql", "--search-path=evil"};
	assert_false(policy_check_startup(agent, names, path, 2, err, sizeof err));
	const char *rw_names[] = {"default_transaction_read_only"};
	const char *rw_values[] = {"off"};
	assert_false(policy_check_startup(agent, rw_names, rw_values, 1, err, sizeof err));
	/* PostgreSQL reads a backslash in options as an escape: search\_path is search_path */
	const char *escaped[] = {"psql", "-c search\\_path=pg_temp,public"};
	assert_false(policy_check_startup(agent, names, escaped, 2, err, sizeof err));
	const char *escaped_role[] = {"psql", "-c r\\ole=postgres"};
	assert_false(policy_check_startup(agent, names, escaped_role, 2, err, sizeof err));
	/* the lexer's settings: standard_conforming_strings, a client-only encoding */
	const char *scs[] = {"psql", "-c standard_conforming_strings=off"};
	assert_false(policy_check_startup(agent, names, scs, 2, err, sizeof err));
	const char *enc_names[] = {"client_encoding"};
	const char *utf8[] = {"UTF8"}, *latin1[] = {"LATIN1"}, *sjis[] = {"SJIS"}, *alias[] = {"Shift_JIS"},
		   *gbk[] = {"win936"};
	assert_true(policy_check_startup(agent, enc_names, utf8, 1, err, sizeof err));
	assert_true(policy_check_startup(agent, enc_names, latin1, 1, err, sizeof err));
	assert_false(policy_check_startup(agent, enc_names, sjis, 1, err, sizeof err));
	assert_non_null(strstr(err, "client_encoding SJIS"));
	assert_false(policy_check_startup(agent, enc_names, alias, 1, err, sizeof err));
	assert_false(policy_check_startup(agent, enc_names, gbk, 1, err, sizeof err));
	const char *enc_option[] = {"psql", "-c client_encoding=BIG5"};
	assert_false(policy_check_startup(agent, names, enc_option, 2, err, sizeof err));
	policy_free(agent);
	config_release(c);
}

/* What would make the server read a statement otherwise than the gateway's parser did. */
static void test_lexer_settings(void **state)
{
	(void)state;
	Config *c = load(base_config);
	EffectivePolicy *alice = effective(c, "alice");
	check(alice, "SET standard_conforming_strings = off", "standard_conforming_strings cannot be changed");
	check(alice, "SET standard_conforming_strings TO on", "standard_conforming_strings cannot be changed");
	check(alice, "RESET standard_conforming_strings", "standard_conforming_strings cannot be changed");
	check(alice, "SELECT set_config('standard_conforming_strings', 'off', false)", "cannot be changed");
	check(alice, "SELECT set_config(lower('X'), 'off', false)", "cannot be changed");
	check(alice, "SET client_encoding = 'SJIS'", "this client_encoding is not allowed");
	check(alice, "SET NAMES 'big5'", "this client_encoding is not allowed");
	check(alice, "SET client_encoding TO 'Shift-JIS'", "this client_encoding is not allowed");
	check(alice, "SET client_encoding TO 'Windows-932'", "this client_encoding is not allowed");
	check(alice, "SET client_encoding TO 'windows950'", "this client_encoding is not allowed");
	check(alice, "SELECT set_config('client_encoding', 'GBK', false)", "this client_encoding is not allowed");
	check(alice, "SELECT set_config('client_encoding', current_setting('x'), false)", "client_encoding is not");
	check(alice, "SET client_encoding = 'LATIN1'", NULL);
	check(alice, "SET client_encoding = 'UTF8'", NULL);
	check(alice, "RESET client_encoding", NULL);
	check(alice, "SET client_encoding TO DEFAULT", NULL);
	policy_free(alice);
	config_release(c);
}

/* Syntax that runs a function without a call in the tree, MERGE's actions, wrappers, cascades. */
static void test_hidden_calls_and_actions(void **state)
{
	(void)state;
	Config *c = load(CONFIG_HEAD USER("carol", "b") USER("bob", "r")
			 "policies:\n"
			 "  - name: blk\n"
			 "    match: {groups: [b]}\n"
			 "    block: [{statements: [truncate, drop_table, delete]}, {functions: [pg_sleep]}]\n"
			 "  - name: ro\n"
			 "    match: {groups: [r]}\n"
			 "    access: {read_only: true}\n");
	EffectivePolicy *carol = effective(c, "carol");
	check(carol, "CREATE OPERATOR public.~~~ (RIGHTARG = float8, FUNCTION = pg_catalog.pg_sleep)",
	      "CREATE OPERATOR is not allowed: it makes functions run where the gateway sees no call");
	check(carol, "CREATE AGGREGATE slp(float8) (SFUNC = float8larger, STYPE = float8, FINALFUNC = pg_sleep)",
	      "CREATE AGGREGATE is not allowed");
	check(carol, "CREATE COLLATION c1 (locale = 'C')", NULL);
	check(carol, "CREATE CAST (int AS text) WITH FUNCTION f(int)", "CREATE CAST is not allowed");
	check(carol, "MERGE INTO t USING (SELECT 1 AS id) s ON t.id = s.id WHEN MATCHED THEN DELETE",
	      "DELETE is not allowed");
	check(carol, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = 1", NULL);
	check(carol, "SELECT pg_sleep_for('1 second')", "function pg_sleep_for is not allowed");
	check(carol, "SELECT pg_catalog.pg_sleep_until(now())", "function pg_catalog.pg_sleep_until is not allowed");
	check(carol, "DROP SCHEMA s9 CASCADE", "DROP TABLE is not allowed");
	check(carol, "DROP SCHEMA s9", NULL);
	check(carol, "DROP OWNED BY CURRENT_USER", "DROP TABLE is not allowed");
	policy_free(carol);
	EffectivePolicy *bob = effective(c, "bob");
	check(bob, "SELECT lo_create(0)", "read-only access does not allow lo_create: it writes a large object");
	check(bob, "SELECT lo_from_bytea(0, 'x')", "it writes a large object");
	check(bob, "SELECT pg_catalog.lo_put(1, 0, 'x')", "it writes a large object");
	check(bob, "SELECT lo_unlink(1)", "it writes a large object");
	check(bob, "SELECT lo_get(1)", NULL);
	check(bob, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE", "read-only access");
	policy_free(bob);
	config_release(c);
}

static void test_policy_config_errors(void **state)
{
	(void)state;
	char path[] = "/tmp/pgcordon-policy-XXXXXX", err[512];
	const char *bad[] = {
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n    block:\n      - statements: [drop_tabel]\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n    block:\n      - nonsense: true\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - match: {users: [a]}\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n  - name: p\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n    limits: {max_rows: 0}\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n    access: {tables: [\"a..b\"]}\n",
		"databases:\n  app: {host: h, user: u}\npolicies:\n  - name: p\n    access: {read_only: maybe}\n",
		"databases:\n  app: {host: h, user: u}\ndefault: sometimes\n",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		snprintf(path, sizeof path, "/tmp/pgcordon-policy-XXXXXX");
		int fd = mkstemp(path);
		assert_int_equal(write(fd, bad[i], strlen(bad[i])), (ssize_t)strlen(bad[i]));
		close(fd);
		Config *c = config_load(path, err, sizeof err);
		unlink(path);
		if (c)
			fail_msg("config %zu should be refused", i);
		assert_non_null(strstr(err, path));
	}
}

static void test_fold_numbers(void **state)
{
	(void)state;
	char a[256], b[256];
	size_t na, nb;
	assert_true(facts_fold_numbers("SELECT abalance FROM t WHERE aid = 17;", 38, a, sizeof a, &na));
	assert_true(facts_fold_numbers("SELECT abalance FROM t WHERE aid = 4242;", 40, b, sizeof b, &nb));
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, na);
	/* Digits inside identifiers and strings are kept. */
	assert_true(facts_fold_numbers("SELECT * FROM t1 WHERE s = '12'", 31, a, sizeof a, &na));
	assert_true(facts_fold_numbers("SELECT * FROM t2 WHERE s = '12'", 31, b, sizeof b, &nb));
	assert_false(na == nb && memcmp(a, b, na) == 0);
	assert_true(facts_fold_numbers("SELECT * FROM t WHERE s = '1'", 29, a, sizeof a, &na));
	assert_true(facts_fold_numbers("SELECT * FROM t WHERE s = '2'", 29, b, sizeof b, &nb));
	assert_false(memcmp(a, b, na) == 0);
	/* What is not simple is not folded. */
	assert_false(facts_fold_numbers("SELECT $1", 9, a, sizeof a, &na));
	assert_false(facts_fold_numbers("SELECT E'\\x'", 12, a, sizeof a, &na));
	assert_false(facts_fold_numbers("SELECT 1 -- c", 13, a, sizeof a, &na));
	assert_false(facts_fold_numbers("SELECT 'unterminated", 20, a, sizeof a, &na));
}

static void test_cache_levels(void **state)
{
	(void)state;
	FactsCache *fc = facts_cache_new(8);
	const char *s1 = "SELECT * FROM t WHERE id = 1";
	const char *s2 = "SELECT * FROM t WHERE id = 2";
	CachedFacts *a = facts_cache_get(fc, s1, strlen(s1));
	CachedFacts *b = facts_cache_get(fc, s2, strlen(s2));
	CachedFacts *a2 = facts_cache_get(fc, s1, strlen(s1));
	assert_ptr_equal(a, b);  /* folded hit */
	assert_ptr_equal(a, a2); /* exact hit */
	const CacheStats *st = facts_cache_stats(fc);
	assert_int_equal(st->misses, 1);
	assert_int_equal(st->hits_folded, 1);
	assert_int_equal(st->hits_exact, 1);
	/* A number that changes the facts is never folded. */
	const char *t1 = "SET statement_timeout = 100";
	const char *t2 = "SET statement_timeout = 0";
	CachedFacts *x = facts_cache_get(fc, t1, strlen(t1));
	CachedFacts *y = facts_cache_get(fc, t2, strlen(t2));
	assert_true(x != y);
	assert_int_equal(cached_facts(y)->stmts[0].timeout_ms, 0);
	/* Eviction keeps referenced entries alive. */
	for (int i = 0; i < 20; i++) {
		char sql[64];
		snprintf(sql, sizeof sql, "SELECT %d FROM t%d", i, i);
		cached_facts_release(facts_cache_get(fc, sql, strlen(sql)));
	}
	assert_int_equal(cached_facts(a)->nstmts, 1);
	/* A NUL in the text is refused, not parsed up to the NUL. */
	CachedFacts *z = facts_cache_get(fc, "SELECT 1\0; DROP TABLE t", 23);
	assert_non_null(cached_facts(z)->error);
	cached_facts_release(z);
	cached_facts_release(a);
	cached_facts_release(b);
	cached_facts_release(a2);
	cached_facts_release(x);
	cached_facts_release(y);
	facts_cache_free(fc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_merge),
		cmocka_unit_test(test_blocks_add_up),
		cmocka_unit_test(test_read_only_scope_functions),
		cmocka_unit_test(test_uninspectable_code),
		cmocka_unit_test(test_function_rule_schemas),
		cmocka_unit_test(test_default_and_no_policies),
		cmocka_unit_test(test_startup_escapes),
		cmocka_unit_test(test_lexer_settings),
		cmocka_unit_test(test_hidden_calls_and_actions),
		cmocka_unit_test(test_policy_config_errors),
		cmocka_unit_test(test_fold_numbers),
		cmocka_unit_test(test_cache_levels),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
