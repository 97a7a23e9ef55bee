/* The sensitive-column catalog: relation OIDs and attnums, the search path, name resolution. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mask/mask.h"

static bool column_row(MaskCatalog *c, const char *schema, const char *rel, const char *attnum, const char *col,
		       const char *rule, const char *oid)
{
	const char *v[] = {"c", schema, rel, attnum, col, "text", "S", rule, "false", oid};
	return mask_catalog_add_row(c, v, MASK_CATALOG_COLUMNS);
}

static bool path_row(MaskCatalog *c, const char *schema, const char *ord)
{
	const char *v[] = {"s", NULL, schema, ord, NULL, NULL, NULL, NULL, NULL, NULL};
	return mask_catalog_add_row(c, v, MASK_CATALOG_COLUMNS);
}

static MaskRule partial = {.method = MASK_PARTIAL, .keep_last = 4};
static const MaskRule *rules[] = {&partial};

static void test_columns_by_oid_and_attnum(void **state)
{
	(void)state;
	MaskCatalog *c = mask_catalog_new(rules, 1, NULL, 0);
	/* attnum 2 was dropped: positions and attnums differ */
	assert_true(column_row(c, "public", "customers", "00001", "id", "-1", "16390"));
	assert_true(column_row(c, "public", "customers", "00003", "ssn", "0", "16390"));
	assert_true(column_row(c, "other", "accounts", "00001", "ssn", "0", "16400"));
	/* the same relation under another OID is malformed */
	assert_false(column_row(c, "other", "accounts", "00002", "x", "-1", "16401"));

	const MaskColumn *ssn = mask_catalog_column(c, 16390, 3);
	assert_non_null(ssn);
	assert_string_equal(ssn->name, "ssn");
	assert_int_equal(ssn->rule, 0);
	assert_int_equal(mask_catalog_column(c, 16390, 1)->rule, -1);
	assert_null(mask_catalog_column(c, 16390, 2));
	assert_null(mask_catalog_column(c, 99999, 1));
	assert_non_null(mask_catalog_column(c, 16400, 1));
	mask_catalog_free(c);
}

static void test_search_path_resolution(void **state)
{
	(void)state;
	MaskCatalog *c = mask_catalog_new(rules, 1, NULL, 0);
	assert_true(column_row(c, "public", "customers", "00001", "ssn", "0", "16390"));
	assert_true(column_row(c, "app", "customers", "00001", "ssn", "0", "16395"));
	assert_true(column_row(c, "app", "orders", "00001", "card", "0", "16396"));

	/* no path rows: unqualified names are public's */
	assert_ptr_equal(mask_catalog_resolve(c, NULL, "customers"), mask_catalog_find(c, "public", "customers"));
	assert_null(mask_catalog_resolve(c, NULL, "orders"));

	/* rows arrive in name order; the search order is their position */
	assert_true(path_row(c, "public", "00003"));
	assert_true(path_row(c, "app", "00002"));
	assert_true(path_row(c, "pg_catalog", "00001"));
	assert_int_equal(c->npath, 3);
	assert_string_equal(c->path[0], "pg_catalog");
	assert_string_equal(c->path[1], "app");
	assert_string_equal(c->path[2], "public");

	/* "$user" (app) comes first: its customers is the one read */
	assert_ptr_equal(mask_catalog_resolve(c, NULL, "customers"), mask_catalog_find(c, "app", "customers"));
	assert_ptr_equal(mask_catalog_resolve(c, NULL, "orders"), mask_catalog_find(c, "app", "orders"));
	assert_ptr_equal(mask_catalog_resolve(c, "public", "customers"), mask_catalog_find(c, "public", "customers"));
	assert_null(mask_catalog_resolve(c, "public", "orders"));
	assert_null(mask_catalog_resolve(c, NULL, "nothing"));

	/* malformed path rows */
	assert_false(path_row(c, "x", NULL));
	assert_false(path_row(c, "x", "0"));
	assert_false(path_row(c, "x", "abc"));
	assert_int_equal(c->npath, 3);
	mask_catalog_free(c);
}

/* app.customers (id, and ssn masked), with the search path app, public. */
static MaskCatalog *app_customers(void)
{
	MaskCatalog *c = mask_catalog_new(rules, 1, NULL, 0);
	assert_true(column_row(c, "app", "customers", "00001", "id", "-1", "16395"));
	assert_true(column_row(c, "app", "customers", "00002", "ssn", "0", "16395"));
	assert_true(path_row(c, "app", "00001"));
	assert_true(path_row(c, "public", "00002"));
	return c;
}

static void test_unqualified_rewrite_follows_path(void **state)
{
	(void)state;
	MaskCatalog *c = app_customers();
	RewriteOptions o = {0};
	char *out = NULL, reason[256];
	assert_int_equal(mask_rewrite(c, &o, "SELECT upper(ssn) FROM customers", &out, reason, sizeof reason), REWRITE_DONE);
	assert_non_null(strstr(out, "FROM \"app\".\"customers\""));
	free(out);
	out = NULL;
	o.rows_in_gateway = true;
	assert_int_equal(mask_rewrite(c, &o, "SELECT id, ssn FROM customers WHERE id = 1", &out, reason, sizeof reason),
			 REWRITE_ROWS);
	assert_null(out);
	mask_catalog_free(c);
}

/* The audit redacts the parameters of statements that name a masked relation, in any role. */
static void test_names_masked(void **state)
{
	(void)state;
	MaskCatalog *c = app_customers();
	static const char *const yes[] = {
		"SELECT id FROM customers WHERE id = $1",
		"SELECT 1 FROM other o JOIN app.customers c ON c.id = o.id WHERE o.x = $1",
		"INSERT INTO customers (id, ssn) VALUES ($1, $2)",
		"UPDATE customers SET ssn = $1 WHERE id = $2",
		"DELETE FROM customers WHERE id = $1",
		"WITH x AS (SELECT ssn FROM customers) SELECT * FROM x WHERE ssn = $1",
		"SELECT $1 WHERE EXISTS (SELECT 1 FROM customers)",
		"COPY customers TO STDOUT",
		"SELECT FROM", /* not parsed: counted in */
	};
	static const char *const no[] = {
		"SELECT $1::text",
		"SELECT * FROM other WHERE id = $1",
		"INSERT INTO public.customers (id) VALUES ($1)", /* another schema's table of that name */
		"SELECT 'customers', $1",
	};
	for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
		assert_true(mask_names_masked(c, yes[i]));
	for (size_t i = 0; i < sizeof no / sizeof *no; i++)
		assert_false(mask_names_masked(c, no[i]));
	mask_catalog_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_masked),
		cmocka_unit_test(test_columns_by_oid_and_attnum),
		cmocka_unit_test(test_search_path_resolution),
		cmocka_unit_test(test_unqualified_rewrite_follows_path),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
