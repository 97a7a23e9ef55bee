/* The statement inspector against a corpus of SQL with the facts PostgreSQL semantics give it
 * (tests/unit/inspect_corpus.h). Every mismatch is printed with the statement, the fact, the
 * expected and the actual value; a group fails after reporting all of its mismatches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect_corpus.h"
#include "policy/inspect.h"

#define MAX_ITEMS 32

/* Splits "a,b,c" into items (pointers into buf); NULL or "" is the empty set. */
static int split(const char *list, char *buf, size_t buflen, const char **items)
{
	int n = 0;
	if (!list || !*list)
		return 0;
	snprintf(buf, buflen, "%s", list);
	for (char *p = buf; n < MAX_ITEMS;) {
		items[n++] = p;
		char *comma = strchr(p, ',');
		if (!comma)
			break;
		*comma = 0;
		p = comma + 1;
	}
	return n;
}

static void format_set(const StrSet *s, char *out, size_t outlen)
{
	size_t o = 0;
	out[0] = 0;
	o += (size_t)snprintf(out, outlen, "{");
	for (int i = 0; i < s->n && o < outlen; i++)
		o += (size_t)snprintf(out + o, outlen - o, "%s%s", i ? "," : "", s->items[i]);
	if (o < outlen)
		snprintf(out + o, outlen - o, "}");
}

typedef struct {
	const InspectCase *c;
	int mismatches; /* for this case */
} Check;

static void report(Check *k, const char *fact, const char *expected, const char *actual)
{
	if (k->mismatches++ == 0)
		print_error("MISMATCH inspect_corpus.h:%d stmt %d of \"%s\"\n", k->c->line, k->c->stmt, k->c->sql);
	print_error("    %-22s expected %s\n    %-22s actual   %s\n", fact, expected, "", actual);
}

/* The same items, each once; if first_fixed, item 0 must match too (the top-level kind). */
static void check_set(Check *k, const char *fact, const char *expected, const StrSet *actual, bool first_fixed)
{
	char buf[1024];
	const char *items[MAX_ITEMS];
	int n = split(expected, buf, sizeof buf, items);
	bool ok = n == actual->n;
	for (int i = 0; ok && i < n; i++)
		ok = strset_has(actual, items[i]);
	for (int i = 0; ok && i < actual->n; i++) /* no duplicates */
		for (int j = i + 1; j < actual->n; j++)
			if (strcmp(actual->items[i], actual->items[j]) == 0)
				ok = false;
	if (ok && first_fixed && n > 0)
		ok = strcmp(actual->items[0], items[0]) == 0;
	if (ok)
		return;
	char exp[1100], act[2048];
	snprintf(exp, sizeof exp, "{%s}", expected ? expected : "");
	format_set(actual, act, sizeof act);
	report(k, fact, exp, act);
}

static void check_bool(Check *k, const char *fact, bool expected, bool actual)
{
	if (expected != actual)
		report(k, fact, expected ? "true" : "false", actual ? "true" : "false");
}

static void check_str(Check *k, const char *fact, const char *expected, const char *actual)
{
	if ((!expected && !actual) || (expected && actual && strcmp(expected, actual) == 0))
		return;
	report(k, fact, expected ? expected : "(null)", actual ? actual : "(null)");
}

static void timeout_text(int64_t v, char *out, size_t outlen)
{
	if (v == TIMEOUT_NOT_SET)
		snprintf(out, outlen, "TIMEOUT_NOT_SET");
	else if (v == TIMEOUT_UNKNOWN)
		snprintf(out, outlen, "TIMEOUT_UNKNOWN");
	else
		snprintf(out, outlen, "%" PRId64, v);
}

static void check_timeout(Check *k, const char *expected, int64_t actual)
{
	int64_t want = TIMEOUT_NOT_SET;
	if (expected)
		want = strcmp(expected, "unknown") == 0 ? TIMEOUT_UNKNOWN : strtoll(expected, NULL, 10);
	if (want == actual)
		return;
	char e[32], a[32];
	timeout_text(want, e, sizeof e);
	timeout_text(actual, a, sizeof a);
	report(k, "timeout_ms", e, a);
}

/* Checks one case; returns its number of mismatches. */
static int check_case(const InspectCase *c)
{
	Check k = {.c = c};
	char e[64], a[64];
	QueryFacts *q = inspect_sql(c->sql);
	if (!q) {
		report(&k, "result", "QueryFacts", "NULL");
		return k.mismatches;
	}

	if (c->error) {
		check_bool(&k, "error", true, q->error != NULL);
		check_bool(&k, "error_pos > 0", true, q->error_pos > 0);
		check_bool(&k, "fingerprint == 0", true, q->fingerprint == 0);
	} else {
		check_str(&k, "error", NULL, q->error);
	}
	int want_n = c->error || c->nstmts == NONE ? 0 : c->nstmts ? c->nstmts : 1;
	if (q->nstmts != want_n) {
		snprintf(e, sizeof e, "%d", want_n);
		snprintf(a, sizeof a, "%d", q->nstmts);
		report(&k, "nstmts", e, a);
	}
	if (want_n == 0 || c->stmt >= q->nstmts) {
		inspect_free(q);
		return k.mismatches;
	}

	const StatementFacts *f = &q->stmts[c->stmt];
	check_set(&k, "kinds", c->kinds, &f->kinds, true);
	check_set(&k, "reads", c->reads, &f->reads, false);
	check_set(&k, "writes", c->writes, &f->writes, false);
	check_set(&k, "functions", c->functions, &f->functions, false);
	check_set(&k, "unfiltered_reads", c->unfiltered, &f->unfiltered_reads, false);
	check_bool(&k, "delete_without_where", c->del, f->delete_without_where);
	check_bool(&k, "update_without_where", c->upd, f->update_without_where);
	check_bool(&k, "has_limit", c->limit, f->has_limit);
	check_timeout(&k, c->timeout, f->timeout_ms);
	check_str(&k, "prepare_name", c->prepare, f->prepare_name);
	check_str(&k, "execute_name", c->execute, f->execute_name);
	inspect_free(q);
	return k.mismatches;
}

static int total_cases, total_passed;

static void run_corpus(const char *name, const InspectCase *cases, size_t n)
{
	int failed = 0;
	for (size_t i = 0; i < n; i++) {
		if (check_case(&cases[i]))
			failed++;
	}
	total_cases += (int)n;
	total_passed += (int)n - failed;
	if (failed)
		fail_msg("%s: %d of %zu statements have mismatching facts (listed above)", name, failed, n);
}

#define CORPUS_TEST(name)                                                                       \
	static void test_##name(void **state)                                                    \
	{                                                                                        \
		(void)state;                                                                     \
		run_corpus(#name, name, sizeof name / sizeof name[0]);                           \
	}

CORPUS_TEST(corpus_select)
CORPUS_TEST(corpus_joins)
CORPUS_TEST(corpus_subqueries)
CORPUS_TEST(corpus_setops)
CORPUS_TEST(corpus_ctes)
CORPUS_TEST(corpus_create_as)
CORPUS_TEST(corpus_insert)
CORPUS_TEST(corpus_update)
CORPUS_TEST(corpus_delete)
CORPUS_TEST(corpus_merge)
CORPUS_TEST(corpus_ddl)
CORPUS_TEST(corpus_explain)
CORPUS_TEST(corpus_prepared)
CORPUS_TEST(corpus_copy)
CORPUS_TEST(corpus_functions)
CORPUS_TEST(corpus_settings)
CORPUS_TEST(corpus_misc)
CORPUS_TEST(corpus_multi)

/* More visible WITH names than the walker tracks: it must refuse, not guess. */
static void test_too_many_ctes(void **state)
{
	(void)state;
	char sql[8192];
	size_t o = (size_t)snprintf(sql, sizeof sql, "WITH ");
	for (int i = 0; i < 80; i++)
		o += (size_t)snprintf(sql + o, sizeof sql - o, "%sc%d AS (SELECT 1)", i ? ", " : "", i);
	snprintf(sql + o, sizeof sql - o, " SELECT * FROM c79, secret");
	QueryFacts *q = inspect_sql(sql);
	assert_non_null(q);
	assert_non_null(q->error);
	inspect_free(q);
}

static char *repeat_sql(const char *head, const char *unit, size_t n, const char *tail)
{
	size_t hl = strlen(head), ul = strlen(unit), tl = strlen(tail);
	char *sql = malloc(hl + ul * n + tl + 1), *p = sql;
	if (!sql)
		abort();
	memcpy(p, head, hl);
	p += hl;
	for (size_t i = 0; i < n; i++, p += ul)
		memcpy(p, unit, ul);
	memcpy(p, tail, tl + 1);
	return sql;
}

static char deep_failure[300]; /* cmocka's asserts may not run on another thread */

static void deep_case(const char *head, const char *unit, size_t n, const char *tail, const char *want_error)
{
	char *sql = repeat_sql(head, unit, n, tail);
	QueryFacts *q = inspect_sql(sql);
	bool ok = want_error ? q->error && strcmp(q->error, want_error) == 0 && q->error_sqlstate &&
				       strcmp(q->error_sqlstate, "54001") == 0
			     : !q->error && q->nstmts == 1 && !q->error_sqlstate;
	if (!ok && !deep_failure[0])
		snprintf(deep_failure, sizeof deep_failure, "%.20s x %zu (%zu bytes): %s", unit, n, strlen(sql),
			 q->error ? q->error : "inspected");
	inspect_free(q);
	free(sql);
}

/*
 * A left-deep chain nests a level per operator: libpg_query's JSON writer recursed into a
 * stack overflow (SIGSEGV) at about 65,000 levels on an 8 MiB stack, a worker's size.
 */
static void *deep_chains(void *arg)
{
	(void)arg;
	const char *deep = "the statement nests too deeply to inspect";
	deep_case("SELECT 1", "+1", 300000, "", deep);
	deep_case("SELECT 'a'", "||'a'", 150000, "", deep);
	deep_case("SELECT 1", "::int", 150000, "", deep);
	deep_case("SELECT * FROM t", " JOIN t USING (a)", 40000, "", deep);
	deep_case("SELECT a", " ->'x'", 150000, "", deep);
	deep_case("SELECT 1", " UNION SELECT 1", 60000, "", deep);
	deep_case("SELECT 1", "+1", 1100, "", deep);
	/* Shallower than the inspection reads, on the caller's stack and on a parse thread. */
	deep_case("SELECT 1", "+1", 900, "", NULL);
	deep_case("SELECT 1 FROM t WHERE a IN (1", ",1", 30000, ")", NULL);
	return NULL;
}

static void test_deep_statements_refused(void **state)
{
	(void)state;
	pthread_attr_t attr;
	pthread_t t;
	assert_int_equal(pthread_attr_init(&attr), 0);
	assert_int_equal(pthread_attr_setstacksize(&attr, 8 * 1024 * 1024), 0);
	assert_int_equal(pthread_create(&t, &attr, deep_chains, NULL), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	pthread_attr_destroy(&attr);
	if (deep_failure[0])
		fail_msg("%s", deep_failure);
}

static void test_strset_has_and_free_null(void **state)
{
	(void)state;
	QueryFacts *q = inspect_sql("SELECT * FROM a JOIN a ON true");
	assert_null(q->error);
	assert_int_equal(q->nstmts, 1);
	assert_int_equal(q->stmts[0].reads.n, 1); /* no duplicates */
	assert_true(strset_has(&q->stmts[0].reads, "a"));
	assert_false(strset_has(&q->stmts[0].reads, "A"));
	assert_true(q->fingerprint != 0);
	inspect_free(q);
	inspect_free(NULL);
}

static int summary(void **state)
{
	(void)state;
	print_message("inspect corpus: %d of %d statements match\n", total_passed, total_cases);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus_select),     cmocka_unit_test(test_corpus_joins),
		cmocka_unit_test(test_corpus_subqueries), cmocka_unit_test(test_corpus_setops),
		cmocka_unit_test(test_corpus_ctes),       cmocka_unit_test(test_corpus_create_as),
		cmocka_unit_test(test_corpus_insert),     cmocka_unit_test(test_corpus_update),
		cmocka_unit_test(test_corpus_delete),     cmocka_unit_test(test_corpus_merge),
		cmocka_unit_test(test_corpus_ddl),        cmocka_unit_test(test_corpus_explain),
		cmocka_unit_test(test_corpus_prepared),   cmocka_unit_test(test_corpus_copy),
		cmocka_unit_test(test_corpus_functions),  cmocka_unit_test(test_corpus_settings),
		cmocka_unit_test(test_corpus_misc),       cmocka_unit_test(test_corpus_multi),
		cmocka_unit_test(test_too_many_ctes),     cmocka_unit_test(test_strset_has_and_free_null),
		cmocka_unit_test(test_deep_statements_refused),
	};
	return cmocka_run_group_tests(tests, NULL, summary);
}
