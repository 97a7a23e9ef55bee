/*
 * Corpus for test_inspect.c: SQL statements and the facts PostgreSQL semantics say they have.
 *
 * Each entry is C(.sql = ..., fact = ...). Sets are comma-separated ("t,s.u"); an omitted set is
 * expected empty. kinds: the first item must be the top-level kind; the rest are compared as a set.
 * reads / writes / functions / unfiltered (unfiltered_reads) are compared as sets (no extras, no
 * misses, no duplicates). Omitted booleans are false; omitted timeout means TIMEOUT_NOT_SET,
 * "unknown" means TIMEOUT_UNKNOWN, otherwise the milliseconds. .stmt picks the statement of a
 * multi-statement string the facts describe; .nstmts defaults to 1 (NONE: zero statements).
 *
 * Conventions of the implementation that these expectations accept (documented in inspect.h or
 * deliberate fail-closed choices):
 *  - relation and function names are kept as written after case folding; no search_path resolution;
 *  - plain EXPLAIN / PREPARE / CREATE VIEW / DECLARE CURSOR report the wrapped statement's facts as
 *    if it ran;
 *  - GRANT / VACUUM / ANALYZE targets are reads; LOCK / CREATE INDEX / CREATE TRIGGER targets are
 *    writes; a FOREIGN KEY / INHERITS parent is a read;
 *  - VALUES lists (INSERT ... VALUES, CREATE TABLE AS VALUES) are SelectStmts, so add "select";
 *  - unfiltered_reads is per SELECT: a relation in the FROM list of a SELECT whose WHERE is missing or
 *    mentions no column (WHERE true, WHERE 1=1, WHERE f()); a WHERE that mentions any column, even
 *    one of an uncorrelated subquery, counts as a filter;
 *  - functions are FuncCall nodes, so SQL-syntax functions appear under the parser's name
 *    (extract → pg_catalog.extract, trim → pg_catalog.btrim) and CURRENT_USER etc. do not appear.
 *
 * Entries marked "was wrong" pin what PostgreSQL does where an earlier inspector disagreed.
 */
#ifndef PGC_INSPECT_CORPUS_H
#define PGC_INSPECT_CORPUS_H

#include <stdbool.h>

#define NONE (-1)

typedef struct {
	int line;
	const char *sql;
	int stmt;   /* index of the statement the facts describe */
	int nstmts; /* 0 means 1; NONE means 0 */
	bool error;
	const char *kinds;
	const char *reads;
	const char *writes;
	const char *functions;
	const char *unfiltered;
	bool del;   /* delete_without_where */
	bool upd;   /* update_without_where */
	bool limit; /* has_limit */
	const char *timeout;
	const char *prepare;
	const char *execute;
} InspectCase;

#define C(...) {.line = __LINE__, __VA_ARGS__}

/* ---- plain SELECT, names, WHERE, LIMIT ---- */
static const InspectCase corpus_select[] = {
	C(.sql = "SELECT 1", .kinds = "select"),
	C(.sql = "SELECT * FROM t", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT a FROM public.t WHERE a > 1", .kinds = "select", .reads = "public.t"),
	C(.sql = "SELECT * FROM \"Orders\" WHERE id = 1", .kinds = "select", .reads = "Orders"),
	C(.sql = "SELECT * FROM Orders WHERE id = 1", .kinds = "select", .reads = "orders"),
	C(.sql = "SELECT * FROM \"public\".\"MixedCase\"", .kinds = "select", .reads = "public.MixedCase",
	  .unfiltered = "public.MixedCase"),
	C(.sql = "SELECT * FROM mydb.sales.orders WHERE id = 1", .kinds = "select", .reads = "mydb.sales.orders"),
	/* search_path-dependent: kept unqualified, resolution is the policy's job */
	C(.sql = "SELECT * FROM pg_authid", .kinds = "select", .reads = "pg_authid", .unfiltered = "pg_authid"),
	C(.sql = "SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = 'x'", .kinds = "select",
	  .reads = "pg_catalog.pg_authid"),
	C(.sql = "SELECT * FROM ONLY parent WHERE id = 1", .kinds = "select", .reads = "parent"),
	C(.sql = "SELECT x.a FROM t AS x(a, b) WHERE x.a = 1", .kinds = "select", .reads = "t"),
	C(.sql = "TABLE t", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "TABLE s.t", .kinds = "select", .reads = "s.t", .unfiltered = "s.t"),
	C(.sql = "VALUES (1, 'a'), (2, 'b')", .kinds = "select"),
	/* WHERE that looks at no column is no filter */
	C(.sql = "SELECT * FROM t WHERE true", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT * FROM t WHERE 1 = 1", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT * FROM t WHERE NOT false AND 2 > 1", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT * FROM t WHERE pg_sleep(1) IS NOT NULL", .kinds = "select", .reads = "t",
	  .functions = "pg_sleep", .unfiltered = "t"),
	C(.sql = "SELECT * FROM t WHERE id = $1", .kinds = "select", .reads = "t"),
	C(.sql = "SELECT * FROM t LIMIT 10", .kinds = "select", .reads = "t", .unfiltered = "t", .limit = true),
	C(.sql = "SELECT * FROM t ORDER BY id FETCH FIRST 5 ROWS ONLY", .kinds = "select", .reads = "t",
	  .unfiltered = "t", .limit = true),
	C(.sql = "SELECT * FROM t OFFSET 10", .kinds = "select", .reads = "t", .unfiltered = "t"),
	/* was wrong: LIMIT ALL (a null A_Const) is no limit at all; has_limit is true. */
	C(.sql = "SELECT * FROM t LIMIT ALL", .kinds = "select", .reads = "t", .unfiltered = "t"),
	/* was wrong: a LIMIT inside a scalar subquery does not bound the result; has_limit is true. */
	C(.sql = "SELECT *, (SELECT 1 LIMIT 1) AS one FROM t", .kinds = "select", .reads = "t", .unfiltered = "t"),
	/* was wrong: the LIMIT binds the first arm only, b is returned whole; has_limit is true. */
	C(.sql = "(SELECT * FROM a LIMIT 1) UNION ALL SELECT * FROM b", .kinds = "select", .reads = "a,b",
	  .unfiltered = "a,b"),
	C(.sql = "SELECT * FROM a UNION SELECT * FROM b LIMIT 5", .kinds = "select", .reads = "a,b",
	  .unfiltered = "a,b", .limit = true),
	C(.sql = "SELECT * FROM t WHERE id = 1 FOR UPDATE", .kinds = "select,select_for_update", .reads = "t"),
	C(.sql = "SELECT * FROM t FOR SHARE SKIP LOCKED", .kinds = "select,select_for_update", .reads = "t",
	  .unfiltered = "t"),
	/* was wrong: a TABLESAMPLE relation is read, not written (writes=t, reads={}), and SYSTEM (100)
	 * returns every row, so it is unfiltered (unfiltered_reads={}). */
	C(.sql = "SELECT * FROM t TABLESAMPLE SYSTEM (50)", .kinds = "select", .reads = "t", .unfiltered = "t"),
};

/* ---- joins, LATERAL ---- */
static const InspectCase corpus_joins[] = {
	C(.sql = "SELECT * FROM a JOIN b ON a.id = b.id", .kinds = "select", .reads = "a,b", .unfiltered = "a,b"),
	C(.sql = "SELECT * FROM a LEFT JOIN b ON a.id = b.id WHERE a.x = 1", .kinds = "select", .reads = "a,b"),
	C(.sql = "SELECT * FROM a RIGHT OUTER JOIN s.b USING (id)", .kinds = "select", .reads = "a,s.b",
	  .unfiltered = "a,s.b"),
	C(.sql = "SELECT * FROM a FULL JOIN b ON true", .kinds = "select", .reads = "a,b", .unfiltered = "a,b"),
	C(.sql = "SELECT * FROM a CROSS JOIN b WHERE a.x = b.y", .kinds = "select", .reads = "a,b"),
	C(.sql = "SELECT * FROM a NATURAL JOIN b NATURAL JOIN c", .kinds = "select", .reads = "a,b,c",
	  .unfiltered = "a,b,c"),
	C(.sql = "SELECT * FROM a, b, c WHERE a.id = b.id", .kinds = "select", .reads = "a,b,c"),
	C(.sql = "SELECT * FROM (a JOIN b ON a.id = b.id) JOIN c ON c.id = a.id", .kinds = "select",
	  .reads = "a,b,c", .unfiltered = "a,b,c"),
	C(.sql = "SELECT * FROM a JOIN b ON f(a.x) = g(b.y) WHERE a.k = 1", .kinds = "select", .reads = "a,b",
	  .functions = "f,g"),
	C(.sql = "SELECT * FROM a, LATERAL (SELECT * FROM b WHERE b.a_id = a.id) s", .kinds = "select",
	  .reads = "a,b", .unfiltered = "a"),
	C(.sql = "SELECT * FROM a CROSS JOIN LATERAL generate_series(1, a.n) AS g(i)", .kinds = "select",
	  .reads = "a", .functions = "generate_series", .unfiltered = "a"),
	C(.sql = "SELECT * FROM a LEFT JOIN LATERAL (SELECT * FROM b WHERE b.x = a.x) s ON true WHERE a.id = 1",
	  .kinds = "select", .reads = "a,b"),
	C(.sql = "SELECT * FROM a JOIN LATERAL unnest(a.tags) u(tag) ON true WHERE a.id = 2", .kinds = "select",
	  .reads = "a", .functions = "unnest"),
};

/* ---- nested subqueries ---- */
static const InspectCase corpus_subqueries[] = {
	C(.sql = "SELECT id, (SELECT max(v) FROM u WHERE u.t_id = t.id) FROM t WHERE t.id < 10", .kinds = "select",
	  .reads = "t,u", .functions = "max"),
	C(.sql = "SELECT (SELECT count(*) FROM u) AS n", .kinds = "select", .reads = "u", .functions = "count",
	  .unfiltered = "u"),
	C(.sql = "SELECT * FROM t WHERE id IN (SELECT t_id FROM u)", .kinds = "select", .reads = "t,u",
	  .unfiltered = "u"),
	C(.sql = "SELECT * FROM t WHERE id NOT IN (SELECT t_id FROM u WHERE u.bad)", .kinds = "select",
	  .reads = "t,u"),
	C(.sql = "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.t_id = t.id)", .kinds = "select",
	  .reads = "t,u"),
	C(.sql = "SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u)", .kinds = "select", .reads = "t,u",
	  .unfiltered = "t,u"),
	C(.sql = "SELECT a, count(*) FROM t WHERE b > 0 GROUP BY a HAVING count(*) > (SELECT avg(n) FROM u)",
	  .kinds = "select", .reads = "t,u", .functions = "count,avg", .unfiltered = "u"),
	C(.sql = "SELECT * FROM t WHERE id = ANY (ARRAY(SELECT id FROM u))", .kinds = "select", .reads = "t,u",
	  .unfiltered = "u"),
	C(.sql = "SELECT s.x FROM (SELECT x FROM t) s WHERE s.x > 0", .kinds = "select", .reads = "t",
	  .unfiltered = "t"),
	C(.sql = "SELECT * FROM a WHERE a.id IN (SELECT b.id FROM b WHERE b.id IN "
		 "(SELECT c.id FROM c WHERE c.v IN (SELECT d.v FROM d)))",
	  .kinds = "select", .reads = "a,b,c,d", .unfiltered = "d"),
	C(.sql = "SELECT * FROM t WHERE t.x = 1 ORDER BY (SELECT max(y) FROM u)", .kinds = "select",
	  .reads = "t,u", .functions = "max", .unfiltered = "u"),
	C(.sql = "SELECT * FROM a JOIN b ON b.id = (SELECT min(id) FROM c) WHERE a.x = 1", .kinds = "select",
	  .reads = "a,b,c", .functions = "min", .unfiltered = "c"),
	C(.sql = "SELECT CASE WHEN EXISTS (SELECT 1 FROM u WHERE u.k = t.k) THEN 1 END FROM t WHERE t.k > 0",
	  .kinds = "select", .reads = "t,u"),
};

/* ---- UNION / INTERSECT / EXCEPT ---- */
static const InspectCase corpus_setops[] = {
	C(.sql = "SELECT * FROM a WHERE a.x = 1 UNION SELECT * FROM b", .kinds = "select", .reads = "a,b",
	  .unfiltered = "b"),
	C(.sql = "SELECT id FROM a INTERSECT SELECT id FROM b WHERE b.ok", .kinds = "select", .reads = "a,b",
	  .unfiltered = "a"),
	C(.sql = "SELECT id FROM a WHERE a.ok EXCEPT ALL SELECT id FROM b WHERE b.ok", .kinds = "select",
	  .reads = "a,b"),
	C(.sql = "TABLE a UNION ALL TABLE b", .kinds = "select", .reads = "a,b", .unfiltered = "a,b"),
	C(.sql = "VALUES (1) UNION SELECT x FROM t WHERE true", .kinds = "select", .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT 1 UNION SELECT 2 UNION SELECT 3", .kinds = "select"),
	C(.sql = "(SELECT * FROM a WHERE a.x = 1) UNION (SELECT * FROM b WHERE b.y = 2 INTERSECT SELECT * FROM c)",
	  .kinds = "select", .reads = "a,b,c", .unfiltered = "c"),
};

/* ---- WITH ---- */
static const InspectCase corpus_ctes[] = {
	C(.sql = "WITH c AS (SELECT * FROM t WHERE t.x = 1) SELECT * FROM c", .kinds = "select", .reads = "t"),
	C(.sql = "WITH c AS (SELECT * FROM t) SELECT * FROM c WHERE c.x = 1", .kinds = "select", .reads = "t",
	  .unfiltered = "t"),
	/* the CTE shadows the unqualified table name in the main query */
	C(.sql = "WITH orders AS (SELECT * FROM archive.orders WHERE year = 2020) SELECT * FROM orders",
	  .kinds = "select", .reads = "archive.orders"),
	/* a qualified name is never a CTE */
	C(.sql = "WITH t AS (SELECT 1 AS x) SELECT * FROM public.t, t", .kinds = "select", .reads = "public.t",
	  .unfiltered = "public.t"),
	/* was wrong: without RECURSIVE a WITH query cannot see itself, so the t inside its body is the
	 * table t; reads is {} (the table is taken for the CTE). */
	C(.sql = "WITH t AS (SELECT * FROM t WHERE t.id > 5) SELECT * FROM t", .kinds = "select", .reads = "t"),
	/* was wrong: without RECURSIVE a WITH query sees only earlier siblings, so b inside a is the table b;
	 * reads is {}. */
	C(.sql = "WITH a AS (SELECT * FROM b WHERE b.k = 1), b AS (SELECT 2 AS k) SELECT * FROM a, b",
	  .kinds = "select", .reads = "b"),
	/* with RECURSIVE every name is visible everywhere */
	C(.sql = "WITH RECURSIVE a AS (SELECT * FROM b WHERE b.k = 1), b AS (SELECT 2 AS k) SELECT * FROM a",
	  .kinds = "select"),
	C(.sql = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r",
	  .kinds = "select"),
	C(.sql = "WITH RECURSIVE tree AS (SELECT id, parent FROM nodes WHERE id = 1 UNION ALL "
		 "SELECT n.id, n.parent FROM nodes n JOIN tree ON n.parent = tree.id) SELECT * FROM tree",
	  .kinds = "select", .reads = "nodes", .unfiltered = "nodes"),
	C(.sql = "WITH c AS (SELECT id FROM t WHERE t.ok) SELECT * FROM u WHERE u.id IN (SELECT id FROM c)",
	  .kinds = "select", .reads = "t,u"),
	C(.sql = "WITH c AS (SELECT * FROM t WHERE t.ok) SELECT (SELECT count(*) FROM c) AS n FROM u WHERE u.z = 1",
	  .kinds = "select", .reads = "t,u", .functions = "count"),
	/* a WITH inside a subquery does not hide the table of the same name outside it */
	C(.sql = "SELECT * FROM (WITH t AS (SELECT 1 AS x) SELECT * FROM t) s JOIN t ON t.x = s.x",
	  .kinds = "select", .reads = "t", .unfiltered = "t"),
	/* quoted CTE names are case-sensitive: "T" does not hide t */
	C(.sql = "WITH \"T\" AS (SELECT 1 AS x) SELECT * FROM t WHERE t.x = 1", .kinds = "select", .reads = "t"),
	C(.sql = "WITH a AS (SELECT * FROM t WHERE t.k = 1), b AS (SELECT * FROM a) SELECT * FROM b",
	  .kinds = "select", .reads = "t"),
	C(.sql = "WITH c AS MATERIALIZED (SELECT * FROM t WHERE t.a = 1) SELECT * FROM c", .kinds = "select",
	  .reads = "t"),
	C(.sql = "WITH c AS (SELECT 1) SELECT * FROM c UNION ALL SELECT * FROM c", .kinds = "select"),
	C(.sql = "SELECT * FROM t WHERE t.id IN (WITH c AS (SELECT 1 AS id) SELECT id FROM c)", .kinds = "select",
	  .reads = "t"),
	/* writable CTEs */
	C(.sql = "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", .kinds = "select,delete", .writes = "t",
	  .del = true),
	C(.sql = "WITH d AS (DELETE FROM t WHERE created < now() - interval '1 day' RETURNING *) "
		 "INSERT INTO t_archive SELECT * FROM d",
	  .kinds = "insert,delete,select", .writes = "t_archive,t", .functions = "now"),
	C(.sql = "WITH u AS (UPDATE t SET n = n + 1 RETURNING id) SELECT count(*) FROM u", .kinds = "select,update",
	  .writes = "t", .functions = "count", .upd = true),
	C(.sql = "WITH i AS (INSERT INTO log (msg) VALUES ('x') RETURNING id) SELECT * FROM i",
	  .kinds = "select,insert", .writes = "log"),
	C(.sql = "WITH old AS (SELECT id FROM t WHERE t.ts < '2020-01-01') DELETE FROM t USING old WHERE t.id = old.id",
	  .kinds = "delete,select", .reads = "t", .writes = "t"),
	C(.sql = "WITH c AS (SELECT id FROM u) UPDATE t SET x = 1 WHERE id IN (SELECT id FROM c)",
	  .kinds = "update,select", .reads = "u", .writes = "t", .unfiltered = "u"),
	/* was wrong: the target of DELETE/UPDATE/INSERT/MERGE is always a table, never a WITH query;
	 * writes is {} for these four. */
	C(.sql = "WITH t AS (SELECT 1) DELETE FROM t", .kinds = "delete,select", .writes = "t", .del = true),
	C(.sql = "WITH x AS (SELECT 1 AS id) UPDATE x SET v = 0", .kinds = "update,select", .writes = "x",
	  .upd = true),
	C(.sql = "WITH t AS (SELECT 2 AS id) INSERT INTO t SELECT id FROM t", .kinds = "insert,select",
	  .writes = "t"),
	C(.sql = "WITH t AS (SELECT 1 AS id) MERGE INTO t USING src ON t.id = src.id WHEN MATCHED THEN DELETE",
	  .kinds = "merge,delete,select", .reads = "src", .writes = "t"),
};

/* ---- SELECT INTO, CREATE TABLE AS, views ---- */
static const InspectCase corpus_create_as[] = {
	C(.sql = "SELECT * INTO new_t FROM t WHERE t.a = 1", .kinds = "select,select_into,create_table",
	  .reads = "t", .writes = "new_t"),
	C(.sql = "SELECT id INTO TEMP TABLE tmp FROM s.t", .kinds = "select,select_into,create_table",
	  .reads = "s.t", .writes = "tmp", .unfiltered = "s.t"),
	C(.sql = "CREATE TABLE copy AS SELECT * FROM t", .kinds = "create_table_as,create_table,select",
	  .reads = "t", .writes = "copy", .unfiltered = "t"),
	C(.sql = "CREATE TABLE IF NOT EXISTS s.agg AS SELECT k, sum(v) FROM t WHERE t.v > 0 GROUP BY k WITH NO DATA",
	  .kinds = "create_table_as,create_table,select", .reads = "t", .writes = "s.agg", .functions = "sum"),
	C(.sql = "CREATE TABLE t2 AS TABLE t", .kinds = "create_table_as,create_table,select", .reads = "t",
	  .writes = "t2", .unfiltered = "t"),
	C(.sql = "CREATE TABLE t3 AS VALUES (1), (2)", .kinds = "create_table_as,create_table,select",
	  .writes = "t3"),
	C(.sql = "CREATE TABLE t4 AS EXECUTE p(1)", .kinds = "create_table_as,create_table,execute",
	  .writes = "t4", .execute = "p"),
	C(.sql = "CREATE VIEW v AS SELECT * FROM t WHERE t.visible", .kinds = "create_view,select", .reads = "t",
	  .writes = "v"),
	C(.sql = "CREATE OR REPLACE VIEW s.v AS SELECT id, lower(name) FROM t", .kinds = "create_view,select",
	  .reads = "t", .writes = "s.v", .functions = "lower", .unfiltered = "t"),
	/* the grammar turns the view's own name into a WITH RECURSIVE query */
	C(.sql = "CREATE RECURSIVE VIEW nums (n) AS VALUES (1) UNION ALL SELECT n + 1 FROM nums WHERE n < 100",
	  .kinds = "create_view,select", .writes = "nums"),
	C(.sql = "CREATE VIEW v2 AS WITH c AS (SELECT * FROM t WHERE t.x = 1) SELECT * FROM c",
	  .kinds = "create_view,select", .reads = "t", .writes = "v2"),
	C(.sql = "CREATE MATERIALIZED VIEW mv AS SELECT k, count(*) FROM t GROUP BY k",
	  .kinds = "create_materialized_view,create_table,select", .reads = "t", .writes = "mv",
	  .functions = "count", .unfiltered = "t"),
	C(.sql = "REFRESH MATERIALIZED VIEW CONCURRENTLY mv", .kinds = "refresh_mat_view", .writes = "mv"),
};

/* ---- INSERT ---- */
static const InspectCase corpus_insert[] = {
	C(.sql = "INSERT INTO t (a, b) VALUES (1, 'x')", .kinds = "insert,select", .writes = "t"),
	C(.sql = "INSERT INTO s.t DEFAULT VALUES", .kinds = "insert", .writes = "s.t"),
	C(.sql = "INSERT INTO t SELECT * FROM u WHERE u.ok", .kinds = "insert,select", .reads = "u", .writes = "t"),
	C(.sql = "INSERT INTO t SELECT * FROM u", .kinds = "insert,select", .reads = "u", .writes = "t",
	  .unfiltered = "u"),
	C(.sql = "INSERT INTO t SELECT * FROM t", .kinds = "insert,select", .reads = "t", .writes = "t",
	  .unfiltered = "t"),
	C(.sql = "INSERT INTO \"Audit\".\"Log\" (msg) VALUES ('x')", .kinds = "insert,select",
	  .writes = "Audit.Log"),
	C(.sql = "INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) DO NOTHING", .kinds = "insert,select",
	  .writes = "t"),
	/* was wrong: ON CONFLICT DO UPDATE updates existing rows (and needs UPDATE privilege); kinds lacks
	 * "update", so an insert-only policy cannot tell an upsert from an insert. */
	C(.sql = "INSERT INTO t (id, v) VALUES (1, 2) ON CONFLICT (id) DO UPDATE SET v = excluded.v",
	  .kinds = "insert,select,update", .writes = "t"),
	/* was wrong: same as above (kinds lacks "update"). */
	C(.sql = "INSERT INTO t (id, v) SELECT id, v FROM u WHERE u.ok ON CONFLICT ON CONSTRAINT t_pkey "
		 "DO UPDATE SET v = upsert_merge(t.v, excluded.v) WHERE t.locked = false",
	  .kinds = "insert,select,update", .reads = "u", .writes = "t", .functions = "upsert_merge"),
	C(.sql = "INSERT INTO t VALUES (now(), gen_random_uuid()) RETURNING id, audit(id)", .kinds = "insert,select",
	  .writes = "t", .functions = "now,gen_random_uuid,audit"),
};

/* ---- UPDATE ---- */
static const InspectCase corpus_update[] = {
	C(.sql = "UPDATE t SET v = 1", .kinds = "update", .writes = "t", .upd = true),
	C(.sql = "UPDATE t SET v = 1 WHERE true", .kinds = "update", .writes = "t", .upd = true),
	C(.sql = "UPDATE t SET v = 1 WHERE 1 = 1", .kinds = "update", .writes = "t", .upd = true),
	C(.sql = "UPDATE t SET v = v + 1 WHERE id = 7", .kinds = "update", .writes = "t"),
	C(.sql = "UPDATE t SET v = u.v FROM u WHERE t.id = u.id", .kinds = "update", .reads = "u", .writes = "t"),
	C(.sql = "UPDATE t SET v = u.v FROM u", .kinds = "update", .reads = "u", .writes = "t", .upd = true),
	C(.sql = "UPDATE ONLY s.t AS x SET v = lower(x.name) WHERE x.id = 1 RETURNING upper(x.name)",
	  .kinds = "update", .writes = "s.t", .functions = "lower,upper"),
	C(.sql = "UPDATE t SET v = (SELECT max(v) FROM u) WHERE t.id = 1", .kinds = "update,select", .reads = "u",
	  .writes = "t", .functions = "max", .unfiltered = "u"),
	C(.sql = "UPDATE t SET (a, b) = (SELECT x, y FROM u WHERE u.id = t.id)", .kinds = "update,select",
	  .reads = "u", .writes = "t", .upd = true),
	/* was wrong: WHERE CURRENT OF changes exactly the cursor's row; update_without_where is true. */
	C(.sql = "UPDATE t SET v = 0 WHERE CURRENT OF cur", .kinds = "update", .writes = "t"),
};

/* ---- DELETE ---- */
static const InspectCase corpus_delete[] = {
	C(.sql = "DELETE FROM t", .kinds = "delete", .writes = "t", .del = true),
	C(.sql = "DELETE FROM t WHERE true", .kinds = "delete", .writes = "t", .del = true),
	C(.sql = "DELETE FROM t WHERE 1 = 1", .kinds = "delete", .writes = "t", .del = true),
	C(.sql = "DELETE FROM t WHERE $1", .kinds = "delete", .writes = "t", .del = true),
	C(.sql = "DELETE FROM t WHERE id = 1", .kinds = "delete", .writes = "t"),
	C(.sql = "DELETE FROM t USING u WHERE t.u_id = u.id", .kinds = "delete", .reads = "u", .writes = "t"),
	C(.sql = "DELETE FROM t USING u", .kinds = "delete", .reads = "u", .writes = "t", .del = true),
	C(.sql = "DELETE FROM ONLY s.t WHERE id IN (SELECT id FROM u) RETURNING *", .kinds = "delete,select",
	  .reads = "u", .writes = "s.t", .unfiltered = "u"),
	/* a WHERE that looks at a column counts, even one of an uncorrelated subquery (documented heuristic) */
	C(.sql = "DELETE FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.flag)", .kinds = "delete,select",
	  .reads = "u", .writes = "t"),
	C(.sql = "DELETE FROM t WHERE id = 1 RETURNING audit(id)", .kinds = "delete", .writes = "t",
	  .functions = "audit"),
	/* was wrong: WHERE CURRENT OF deletes exactly the cursor's row; delete_without_where is true. */
	C(.sql = "DELETE FROM t WHERE CURRENT OF cur", .kinds = "delete", .writes = "t"),
};

/* ---- MERGE ---- */
static const InspectCase corpus_merge[] = {
	C(.sql = "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v "
		 "WHEN NOT MATCHED THEN INSERT (id, v) VALUES (s.id, s.v)",
	  .kinds = "merge,update,insert", .reads = "s", .writes = "t"),
	C(.sql = "MERGE INTO t USING (SELECT * FROM s WHERE s.ok) AS src ON t.id = src.id WHEN MATCHED THEN DELETE",
	  .kinds = "merge,delete,select", .reads = "s", .writes = "t"),
	C(.sql = "MERGE INTO s1.t tt USING s2.u uu ON tt.id = uu.id WHEN MATCHED AND uu.v > f(tt.v) THEN "
		 "UPDATE SET v = g(uu.v) WHEN NOT MATCHED THEN DO NOTHING",
	  .kinds = "merge,update", .reads = "s2.u", .writes = "s1.t", .functions = "f,g"),
};

/* ---- TRUNCATE, DROP, ALTER, CREATE ---- */
static const InspectCase corpus_ddl[] = {
	C(.sql = "TRUNCATE t", .kinds = "truncate", .writes = "t"),
	C(.sql = "TRUNCATE TABLE a, s.b, \"C\" RESTART IDENTITY CASCADE", .kinds = "truncate",
	  .writes = "a,s.b,C"),
	C(.sql = "TRUNCATE ONLY t", .kinds = "truncate", .writes = "t"),
	C(.sql = "DROP TABLE t", .kinds = "drop_table", .writes = "t"),
	C(.sql = "DROP TABLE IF EXISTS a, s.b CASCADE", .kinds = "drop_table", .writes = "a,s.b"),
	C(.sql = "DROP VIEW v", .kinds = "drop_view", .writes = "v"),
	C(.sql = "DROP MATERIALIZED VIEW mv", .kinds = "drop_materialized_view", .writes = "mv"),
	C(.sql = "DROP INDEX CONCURRENTLY IF EXISTS s.idx", .kinds = "drop_index", .writes = "s.idx"),
	C(.sql = "DROP SEQUENCE seq", .kinds = "drop_sequence", .writes = "seq"),
	C(.sql = "DROP SCHEMA s CASCADE", .kinds = "drop_schema,drop_table"),
	C(.sql = "DROP DATABASE prod", .kinds = "drop_database"),
	C(.sql = "DROP DATABASE IF EXISTS prod WITH (FORCE)", .kinds = "drop_database"),
	C(.sql = "DROP FUNCTION f(int), s.g()", .kinds = "drop_function"),
	C(.sql = "DROP PROCEDURE p", .kinds = "drop_procedure"),
	C(.sql = "DROP EXTENSION dblink", .kinds = "drop_extension"),
	/* was wrong: dropping a trigger alters its table (e.g. removes an audit trigger); writes is {}. */
	C(.sql = "DROP TRIGGER audit_trg ON t", .kinds = "drop_trigger", .writes = "t"),
	/* was wrong: dropping a row-level security policy alters (and opens up) its table; writes is {}. */
	C(.sql = "DROP POLICY p ON secrets", .kinds = "drop", .writes = "secrets"),
	C(.sql = "ALTER TABLE t ADD COLUMN c int DEFAULT now()", .kinds = "alter_table", .writes = "t",
	  .functions = "now"),
	C(.sql = "ALTER TABLE IF EXISTS ONLY s.t DROP COLUMN c", .kinds = "alter_table", .writes = "s.t"),
	C(.sql = "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (u_id) REFERENCES u (id)", .kinds = "alter_table",
	  .reads = "u", .writes = "t"),
	C(.sql = "ALTER TABLE t ALTER COLUMN c TYPE int USING to_int(c)", .kinds = "alter_table", .writes = "t",
	  .functions = "to_int"),
	C(.sql = "ALTER TABLE t RENAME TO t_old", .kinds = "rename", .writes = "t"),
	C(.sql = "ALTER TABLE t OWNER TO mallory", .kinds = "alter_table", .writes = "t"),
	C(.sql = "ALTER TABLE t DISABLE TRIGGER ALL", .kinds = "alter_table", .writes = "t"),
	C(.sql = "ALTER TABLE s.t SET SCHEMA archive", .kinds = "alter_object_schema", .writes = "s.t"),
	/* was wrong: ATTACH PARTITION alters the attached table too (it becomes a partition); p2024 is read. */
	C(.sql = "ALTER TABLE p ATTACH PARTITION p2024 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')",
	  .kinds = "alter_table", .writes = "p,p2024"),
	/* ALTER SYSTEM / ALTER ROLE ... SET change future sessions, not this one */
	C(.sql = "ALTER SYSTEM SET statement_timeout = 0", .kinds = "alter_system"),
	C(.sql = "ALTER SYSTEM RESET ALL", .kinds = "alter_system"),
	C(.sql = "ALTER ROLE app SET search_path = evil", .kinds = "alter_role_set"),
	C(.sql = "CREATE TABLE t (id int PRIMARY KEY, ts timestamptz DEFAULT now(), "
		 "n int DEFAULT nextval('seq') CHECK (is_valid(n)))",
	  .kinds = "create_table", .writes = "t", .functions = "now,nextval,is_valid"),
	C(.sql = "CREATE TABLE t (id int REFERENCES u (id))", .kinds = "create_table", .reads = "u", .writes = "t"),
	/* was wrong: LIKE copies t's definition, it does not change t; t is counted as written, not read. */
	C(.sql = "CREATE TABLE n (LIKE t INCLUDING ALL)", .kinds = "create_table", .reads = "t", .writes = "n"),
	C(.sql = "CREATE TABLE c (extra int) INHERITS (p)", .kinds = "create_table", .reads = "p", .writes = "c"),
	C(.sql = "CREATE TEMP TABLE tmp (x int)", .kinds = "create_table", .writes = "tmp"),
	/* was wrong: a table created inside CREATE SCHEMA s lives in s; writes says "t". */
	C(.sql = "CREATE SCHEMA s CREATE TABLE t (x int)", .kinds = "create_schema,create_table", .writes = "s.t"),
	C(.sql = "CREATE INDEX idx ON t (lower(email)) WHERE deleted_at IS NULL", .kinds = "create_index",
	  .writes = "t", .functions = "lower"),
	C(.sql = "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx ON s.t USING btree (a, b)",
	  .kinds = "create_index", .writes = "s.t"),
	C(.sql = "CREATE SEQUENCE s.seq", .kinds = "create_seq", .writes = "s.seq"),
	/* the trigger function is not called by this statement */
	C(.sql = "CREATE TRIGGER trg AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION audit()", .kinds = "create_trig",
	  .writes = "t"),
	/* was wrong: CREATE POLICY alters the table's row security; secrets is counted as read, not written. */
	C(.sql = "CREATE POLICY p ON secrets FOR SELECT USING (owner = current_user)", .kinds = "create_policy",
	  .writes = "secrets"),
	C(.sql = "CLUSTER t USING t_pkey", .kinds = "cluster", .writes = "t"),
	C(.sql = "CREATE EXTENSION IF NOT EXISTS dblink", .kinds = "create_extension"),
};

/* ---- EXPLAIN ---- */
static const InspectCase corpus_explain[] = {
	C(.sql = "EXPLAIN SELECT * FROM t", .kinds = "explain,select", .reads = "t", .unfiltered = "t"),
	/* plain EXPLAIN is judged as if it ran (fail closed) */
	C(.sql = "EXPLAIN DELETE FROM t", .kinds = "explain,delete", .writes = "t", .del = true),
	C(.sql = "EXPLAIN ANALYZE DELETE FROM t WHERE id = 1", .kinds = "explain_analyze,delete", .writes = "t"),
	C(.sql = "EXPLAIN ANALYZE UPDATE t SET v = 0", .kinds = "explain_analyze,update", .writes = "t",
	  .upd = true),
	C(.sql = "EXPLAIN (ANALYZE false) DELETE FROM t", .kinds = "explain,delete", .writes = "t", .del = true),
	C(.sql = "EXPLAIN (ANALYZE off, COSTS off) UPDATE t SET v = 1 WHERE id = 2", .kinds = "explain,update",
	  .writes = "t"),
	C(.sql = "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM t WHERE t.a = 1", .kinds = "explain_analyze,select",
	  .reads = "t", .functions = "count"),
	C(.sql = "EXPLAIN (ANALYZE true, FORMAT json) INSERT INTO t SELECT * FROM u",
	  .kinds = "explain_analyze,insert,select", .reads = "u", .writes = "t", .unfiltered = "u"),
	C(.sql = "EXPLAIN ANALYZE VERBOSE SELECT * FROM t LIMIT 1", .kinds = "explain_analyze,select", .reads = "t",
	  .unfiltered = "t", .limit = true),
	C(.sql = "EXPLAIN EXECUTE p(1)", .kinds = "explain,execute", .execute = "p"),
	C(.sql = "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
	  .kinds = "explain_analyze,create_table_as,create_table,select", .writes = "x"),
	C(.sql = "EXPLAIN (FORMAT yaml) SELECT * FROM a JOIN b USING (id)", .kinds = "explain,select",
	  .reads = "a,b", .unfiltered = "a,b"),
};

/* ---- PREPARE / EXECUTE / DEALLOCATE, cursors ---- */
static const InspectCase corpus_prepared[] = {
	C(.sql = "PREPARE q AS SELECT * FROM t WHERE id = $1", .kinds = "prepare,select", .reads = "t",
	  .prepare = "q"),
	C(.sql = "PREPARE del (int) AS DELETE FROM t WHERE id = $1", .kinds = "prepare,delete", .writes = "t",
	  .prepare = "del"),
	C(.sql = "PREPARE wipe AS DELETE FROM t", .kinds = "prepare,delete", .writes = "t", .del = true,
	  .prepare = "wipe"),
	C(.sql = "PREPARE \"MixedName\" AS UPDATE t SET v = 1", .kinds = "prepare,update", .writes = "t",
	  .upd = true, .prepare = "MixedName"),
	C(.sql = "PREPARE ins (int) AS INSERT INTO t VALUES ($1)", .kinds = "prepare,insert,select", .writes = "t",
	  .prepare = "ins"),
	C(.sql = "EXECUTE q(42)", .kinds = "execute", .execute = "q"),
	C(.sql = "EXECUTE MixedName", .kinds = "execute", .execute = "mixedname"),
	C(.sql = "EXECUTE q(now())", .kinds = "execute", .functions = "now", .execute = "q"),
	C(.sql = "DEALLOCATE q", .kinds = "deallocate"),
	C(.sql = "DEALLOCATE ALL", .kinds = "deallocate"),
	C(.sql = "DEALLOCATE PREPARE q", .kinds = "deallocate"),
	C(.sql = "DECLARE c CURSOR FOR SELECT * FROM t", .kinds = "declare_cursor,select", .reads = "t",
	  .unfiltered = "t"),
	C(.sql = "DECLARE c BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT id FROM t WHERE t.a = 1",
	  .kinds = "declare_cursor,select", .reads = "t"),
	C(.sql = "FETCH 10 FROM c", .kinds = "fetch"),
	C(.sql = "FETCH ALL IN c", .kinds = "fetch"),
	C(.sql = "MOVE NEXT IN c", .kinds = "fetch"),
	C(.sql = "CLOSE c", .kinds = "close_cursor"),
	C(.sql = "CLOSE ALL", .kinds = "close_cursor"),
};

/* ---- COPY ---- */
/* COPY t TO dumps the whole table, so t is in unfiltered_reads, as for COPY (SELECT * FROM t) TO. */
static const InspectCase corpus_copy[] = {
	C(.sql = "COPY t TO STDOUT", .kinds = "copy_to", .reads = "t", .unfiltered = "t"),
	C(.sql = "COPY t (a, b) TO STDOUT", .kinds = "copy_to", .reads = "t", .unfiltered = "t"),
	C(.sql = "COPY \"Mixed\".\"Case\" TO STDOUT", .kinds = "copy_to", .reads = "Mixed.Case", .unfiltered = "Mixed.Case"),
	C(.sql = "COPY (SELECT * FROM t WHERE t.a > 1) TO STDOUT WITH (FORMAT csv)", .kinds = "copy_to,select",
	  .reads = "t"),
	C(.sql = "COPY (SELECT * FROM t) TO STDOUT", .kinds = "copy_to,select", .reads = "t", .unfiltered = "t"),
	C(.sql = "COPY t FROM STDIN", .kinds = "copy_from", .writes = "t"),
	C(.sql = "COPY s.t (a, b) FROM STDIN WITH (FORMAT csv, HEADER)", .kinds = "copy_from", .writes = "s.t"),
	C(.sql = "COPY t FROM STDIN WHERE f(a) > 0", .kinds = "copy_from", .writes = "t", .functions = "f"),
	C(.sql = "COPY t TO PROGRAM 'gzip > /tmp/t.gz'", .kinds = "copy_to,copy_to_program", .reads = "t", .unfiltered = "t"),
	C(.sql = "COPY t FROM PROGRAM 'curl http://example.com/x'", .kinds = "copy_from,copy_from_program",
	  .writes = "t"),
	C(.sql = "COPY (SELECT * FROM t) TO PROGRAM 'cat'", .kinds = "copy_to,copy_to_program,select", .reads = "t",
	  .unfiltered = "t"),
	C(.sql = "COPY t TO '/tmp/t.csv' CSV", .kinds = "copy_to,copy_to_file", .reads = "t", .unfiltered = "t"),
	C(.sql = "COPY t (a) FROM '/etc/passwd'", .kinds = "copy_from,copy_from_file", .writes = "t"),
	C(.sql = "COPY (SELECT pg_read_file('/etc/passwd')) TO '/tmp/x'", .kinds = "copy_to,copy_to_file,select",
	  .functions = "pg_read_file"),
	C(.sql = "COPY (DELETE FROM t RETURNING *) TO STDOUT", .kinds = "copy_to,delete", .writes = "t",
	  .del = true),
};

/* ---- function calls in every clause ---- */
static const InspectCase corpus_functions[] = {
	C(.sql = "SELECT upper(lower(name)) FROM t WHERE t.id = 1", .kinds = "select", .reads = "t",
	  .functions = "upper,lower"),
	C(.sql = "SELECT * FROM generate_series(1, 10) AS g(i)", .kinds = "select", .functions = "generate_series"),
	C(.sql = "SELECT * FROM ROWS FROM (f(1), s.g(2))", .kinds = "select", .functions = "f,s.g"),
	C(.sql = "SELECT * FROM t WHERE is_visible(t.id)", .kinds = "select", .reads = "t",
	  .functions = "is_visible"),
	C(.sql = "SELECT date_trunc('day', ts), count(*) FROM t WHERE t.ok GROUP BY date_trunc('day', ts)",
	  .kinds = "select", .reads = "t", .functions = "date_trunc,count"),
	C(.sql = "SELECT k FROM t WHERE t.ok GROUP BY k HAVING sum(v) > threshold()", .kinds = "select",
	  .reads = "t", .functions = "sum,threshold"),
	C(.sql = "SELECT * FROM t WHERE t.ok ORDER BY random()", .kinds = "select", .reads = "t",
	  .functions = "random"),
	C(.sql = "SELECT * FROM t LIMIT page_size() OFFSET page_start()", .kinds = "select", .reads = "t",
	  .functions = "page_size,page_start", .unfiltered = "t", .limit = true),
	C(.sql = "VALUES (now()), (clock_timestamp())", .kinds = "select", .functions = "now,clock_timestamp"),
	C(.sql = "SELECT row_number() OVER (PARTITION BY lower(k) ORDER BY v), sum(v) OVER w FROM t "
		 "WHERE t.ok WINDOW w AS (ORDER BY hash(v))",
	  .kinds = "select", .reads = "t", .functions = "row_number,lower,sum,hash"),
	C(.sql = "SELECT count(*) FILTER (WHERE is_big(v)), array_agg(v ORDER BY f(v)) FROM t WHERE t.ok",
	  .kinds = "select", .reads = "t", .functions = "count,is_big,array_agg,f"),
	C(.sql = "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY v) FROM t", .kinds = "select", .reads = "t",
	  .functions = "percentile_cont", .unfiltered = "t"),
	C(.sql = "SELECT CASE WHEN f(x) THEN g(x) ELSE COALESCE(h(x), 0) END FROM t WHERE t.x > 0",
	  .kinds = "select", .reads = "t", .functions = "f,g,h"),
	C(.sql = "SELECT extract(year FROM ts), substring(s FROM 1 FOR 2), trim(s), current_user FROM t "
		 "WHERE t.id = 1",
	  .kinds = "select", .reads = "t", .functions = "pg_catalog.extract,pg_catalog.substring,pg_catalog.btrim"),
	C(.sql = "SELECT t.x FROM t WHERE t.x = ANY (get_ids())", .kinds = "select", .reads = "t",
	  .functions = "get_ids"),
	C(.sql = "SELECT pg_read_file('/etc/passwd')", .kinds = "select", .functions = "pg_read_file"),
	C(.sql = "SELECT pg_catalog.pg_read_file('/etc/passwd')", .kinds = "select",
	  .functions = "pg_catalog.pg_read_file"),
	C(.sql = "SELECT \"pg_read_file\"('/etc/passwd'), PG_LS_DIR('.')", .kinds = "select",
	  .functions = "pg_read_file,pg_ls_dir"),
	C(.sql = "SELECT lo_export(16384, '/tmp/x'), lo_import('/etc/hosts')", .kinds = "select",
	  .functions = "lo_export,lo_import"),
	C(.sql = "SELECT * FROM dblink('dbname=prod', 'SELECT secret FROM s') AS t(secret text)", .kinds = "select",
	  .functions = "dblink"),
	C(.sql = "SELECT dblink_exec('dbname=prod', 'DROP TABLE t')", .kinds = "select", .functions = "dblink_exec"),
	C(.sql = "SELECT pg_sleep(10)", .kinds = "select", .functions = "pg_sleep"),
	C(.sql = "SELECT pg_catalog.pg_sleep(1), public.my_func(2)", .kinds = "select",
	  .functions = "pg_catalog.pg_sleep,public.my_func"),
	C(.sql = "SELECT nextval('s.seq')", .kinds = "select", .functions = "nextval"),
	C(.sql = "SELECT pg_notify('ch', 'x')", .kinds = "select", .functions = "pg_notify"),
	C(.sql = "SELECT current_setting('role')", .kinds = "select", .functions = "current_setting"),
};

/* ---- SET / RESET / SHOW / transactions ---- */
static const InspectCase corpus_settings[] = {
	C(.sql = "SET ROLE admin", .kinds = "set,set_role"),
	C(.sql = "SET LOCAL ROLE admin", .kinds = "set,set_role"),
	C(.sql = "SET ROLE NONE", .kinds = "set,set_role"),
	C(.sql = "RESET ROLE", .kinds = "set,set_role,reset_role"),
	/* was wrong: run-time parameter names are case-insensitive; reset_role is missing. */
	C(.sql = "RESET \"Role\"", .kinds = "set,set_role,reset_role"),
	C(.sql = "SET SESSION AUTHORIZATION bob", .kinds = "set,set_session_authorization"),
	C(.sql = "SET SESSION AUTHORIZATION DEFAULT", .kinds = "set,set_session_authorization"),
	C(.sql = "RESET SESSION AUTHORIZATION", .kinds = "set,set_session_authorization"),
	C(.sql = "SET search_path = evil, public", .kinds = "set,set_search_path"),
	C(.sql = "SET search_path TO DEFAULT", .kinds = "set,set_search_path"),
	C(.sql = "SET SCHEMA 'evil'", .kinds = "set,set_search_path"),
	C(.sql = "RESET search_path", .kinds = "set,set_search_path"),
	C(.sql = "SET \"Search_Path\" = x", .kinds = "set,set_search_path"),
	C(.sql = "SET LOCAL statement_timeout = 0", .kinds = "set,set_statement_timeout", .timeout = "0"),
	C(.sql = "SET statement_timeout TO '5s'", .kinds = "set,set_statement_timeout", .timeout = "5000"),
	C(.sql = "SET statement_timeout = '1min'", .kinds = "set,set_statement_timeout", .timeout = "60000"),
	C(.sql = "SET statement_timeout = 500", .kinds = "set,set_statement_timeout", .timeout = "500"),
	C(.sql = "SET statement_timeout = '250ms'", .kinds = "set,set_statement_timeout", .timeout = "250"),
	C(.sql = "SET SESSION statement_timeout = '2h'", .kinds = "set,set_statement_timeout", .timeout = "7200000"),
	C(.sql = "SET statement_timeout TO DEFAULT", .kinds = "set,set_statement_timeout"),
	C(.sql = "RESET statement_timeout", .kinds = "set,set_statement_timeout"),
	C(.sql = "SET statement_timeout = 'forever'", .kinds = "set,set_statement_timeout", .timeout = "unknown"),
	C(.sql = "SET statement_timeout = 1.5", .kinds = "set,set_statement_timeout", .timeout = "unknown"),
	/* was wrong: parameter names are case-insensitive, so this disables the timeout; timeout_ms is
	 * TIMEOUT_NOT_SET instead of 0. */
	C(.sql = "SET \"STATEMENT_TIMEOUT\" = 0", .kinds = "set,set_statement_timeout", .timeout = "0"),
	C(.sql = "SET lock_timeout = 0", .kinds = "set"),
	C(.sql = "SET TIME ZONE 'UTC'", .kinds = "set"),
	C(.sql = "SET application_name = 'x'", .kinds = "set"),
	C(.sql = "SET client_encoding TO 'LATIN1'", .kinds = "set,set_client_encoding"),
	C(.sql = "SET NAMES 'LATIN1'", .kinds = "set,set_client_encoding"),
	C(.sql = "RESET client_encoding", .kinds = "set,set_client_encoding"),
	C(.sql = "SELECT set_config('CLIENT_ENCODING', 'LATIN1', false)", .kinds = "select,set,set_client_encoding",
	  .functions = "set_config"),
	C(.sql = "RESET ALL", .kinds = "set,reset_all,set_search_path,set_read_only,set_client_encoding"),
	C(.sql = "SET TRANSACTION READ WRITE", .kinds = "set,set_read_only"),
	C(.sql = "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", .kinds = "set"),
	C(.sql = "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", .kinds = "set,set_read_only"),
	C(.sql = "SET default_transaction_read_only = off", .kinds = "set,set_read_only"),
	C(.sql = "SET transaction_read_only TO false", .kinds = "set,set_read_only"),
	C(.sql = "BEGIN READ WRITE", .kinds = "transaction,set_read_only"),
	C(.sql = "START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ WRITE", .kinds = "transaction,set_read_only"),
	C(.sql = "BEGIN", .kinds = "transaction"),
	C(.sql = "COMMIT", .kinds = "transaction"),
	C(.sql = "SAVEPOINT s1", .kinds = "transaction"),
	C(.sql = "DISCARD ALL", .kinds = "discard,set_session_authorization,reset_all,set_search_path,set_read_only,set_client_encoding"),
	C(.sql = "DISCARD PLANS", .kinds = "discard"),
	C(.sql = "SHOW search_path", .kinds = "show"),
	C(.sql = "SHOW ALL", .kinds = "show"),
	/* set_config */
	C(.sql = "SELECT set_config('role', 'admin', false)", .kinds = "select,set,set_role", .functions = "set_config"),
	C(.sql = "SELECT set_config('search_path', 'evil', true)", .kinds = "select,set,set_search_path",
	  .functions = "set_config"),
	C(.sql = "SELECT set_config('session_authorization', 'postgres', false)",
	  .kinds = "select,set,set_session_authorization", .functions = "set_config"),
	C(.sql = "SELECT set_config('statement_timeout', '0', false)", .kinds = "select,set,set_statement_timeout",
	  .functions = "set_config", .timeout = "0"),
	C(.sql = "SELECT set_config('statement_timeout', '30s', false)", .kinds = "select,set,set_statement_timeout",
	  .functions = "set_config", .timeout = "30000"),
	C(.sql = "SELECT set_config('transaction_read_only', 'off', true)", .kinds = "select,set,set_read_only",
	  .functions = "set_config"),
	C(.sql = "SELECT set_config('application_name', 'x', false)", .kinds = "select,set", .functions = "set_config"),
	/* a setting name that is not a literal may be any of them */
	C(.sql = "SELECT set_config(name, setting, false) FROM my_settings",
	  .kinds = "select,set,set_role,set_session_authorization,set_search_path,set_read_only,set_statement_timeout,set_client_encoding,set_unsafe_encoding,set_standard_conforming_strings",
	  .reads = "my_settings", .functions = "set_config", .unfiltered = "my_settings", .timeout = "unknown"),
	C(.sql = "SELECT pg_catalog.set_config($1, $2, false)",
	  .kinds = "select,set,set_role,set_session_authorization,set_search_path,set_read_only,set_statement_timeout,set_client_encoding,set_unsafe_encoding,set_standard_conforming_strings",
	  .functions = "pg_catalog.set_config", .timeout = "unknown"),
	C(.sql = "SELECT * FROM t WHERE set_config('role', 'admin', true) IS NOT NULL", .kinds = "select,set,set_role",
	  .reads = "t", .functions = "set_config", .unfiltered = "t"),
};

/* ---- LISTEN/NOTIFY, LOCK, VACUUM, GRANT, DO, functions/procedures ---- */
static const InspectCase corpus_misc[] = {
	C(.sql = "LISTEN ch", .kinds = "listen"),
	C(.sql = "NOTIFY ch, 'payload'", .kinds = "notify"),
	C(.sql = "UNLISTEN *", .kinds = "unlisten"),
	C(.sql = "LOCK TABLE t IN ACCESS EXCLUSIVE MODE", .kinds = "lock", .writes = "t"),
	C(.sql = "LOCK a, s.b", .kinds = "lock", .writes = "a,s.b"),
	C(.sql = "VACUUM", .kinds = "vacuum"),
	C(.sql = "VACUUM (FULL, ANALYZE) t (a), s.u", .kinds = "vacuum", .reads = "t,s.u"),
	C(.sql = "ANALYZE t", .kinds = "vacuum", .reads = "t"),
	C(.sql = "GRANT SELECT, INSERT ON t, s.u TO bob", .kinds = "grant", .reads = "t,s.u"),
	C(.sql = "GRANT ALL ON ALL TABLES IN SCHEMA public TO bob", .kinds = "grant"),
	C(.sql = "REVOKE ALL ON t FROM PUBLIC", .kinds = "grant", .reads = "t"),
	C(.sql = "GRANT admin TO mallory", .kinds = "grant_role"),
	/* DO bodies are opaque */
	C(.sql = "DO $$BEGIN PERFORM pg_sleep(1); END$$", .kinds = "do_block"),
	C(.sql = "DO LANGUAGE plpgsql 'BEGIN DELETE FROM t; END'", .kinds = "do_block"),
	C(.sql = "CREATE FUNCTION f(a int DEFAULT g()) RETURNS int LANGUAGE sql AS 'SELECT 1'",
	  .kinds = "create_function", .functions = "g"),
	C(.sql = "CREATE OR REPLACE FUNCTION f() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER "
		 "AS $$BEGIN RETURN NEW; END$$",
	  .kinds = "create_function"),
	/* was wrong: a function's own SET clause applies while it runs, not to this session; kinds gains
	 * set,set_statement_timeout and timeout_ms becomes 0. */
	C(.sql = "CREATE FUNCTION slow() RETURNS void LANGUAGE sql SET statement_timeout = 0 AS 'SELECT 1'",
	  .kinds = "create_function"),
	C(.sql = "CREATE PROCEDURE p() LANGUAGE sql AS $$DELETE FROM t$$", .kinds = "create_procedure"),
	C(.sql = "CALL p(1)", .kinds = "call", .functions = "p"),
	C(.sql = "CALL s.proc(now(), f(2))", .kinds = "call", .functions = "s.proc,now,f"),
	C(.sql = "CHECKPOINT", .kinds = "check_point"),
	C(.sql = "LOAD 'auto_explain'", .kinds = "load"),
};

/* ---- several statements, errors, empty input ---- */
static const InspectCase corpus_multi[] = {
	C(.sql = "SELECT 1; DELETE FROM t", .nstmts = 2, .stmt = 0, .kinds = "select"),
	C(.sql = "SELECT 1; DELETE FROM t", .nstmts = 2, .stmt = 1, .kinds = "delete", .writes = "t", .del = true),
	C(.sql = "BEGIN; SET LOCAL statement_timeout = 0; UPDATE t SET v = 1; COMMIT", .nstmts = 4, .stmt = 1,
	  .kinds = "set,set_statement_timeout", .timeout = "0"),
	C(.sql = "BEGIN; SET LOCAL statement_timeout = 0; UPDATE t SET v = 1; COMMIT", .nstmts = 4, .stmt = 2,
	  .kinds = "update", .writes = "t", .upd = true),
	C(.sql = "BEGIN; SET LOCAL statement_timeout = 0; UPDATE t SET v = 1; COMMIT", .nstmts = 4, .stmt = 3,
	  .kinds = "transaction"),
	C(.sql = "SET ROLE admin; SELECT * FROM secrets", .nstmts = 2, .stmt = 0, .kinds = "set,set_role"),
	C(.sql = "SET ROLE admin; SELECT * FROM secrets", .nstmts = 2, .stmt = 1, .kinds = "select",
	  .reads = "secrets", .unfiltered = "secrets"),
	C(.sql = "SELECT 1;;SELECT 2;", .nstmts = 2, .stmt = 1, .kinds = "select"),
	C(.sql = "PREPARE p AS SELECT 1; EXECUTE p", .nstmts = 2, .stmt = 0, .kinds = "prepare,select",
	  .prepare = "p"),
	C(.sql = "PREPARE p AS SELECT 1; EXECUTE p", .nstmts = 2, .stmt = 1, .kinds = "execute", .execute = "p"),
	/* facts do not leak between statements */
	C(.sql = "WITH t AS (SELECT 1) SELECT * FROM t; SELECT * FROM t", .nstmts = 2, .stmt = 1, .kinds = "select",
	  .reads = "t", .unfiltered = "t"),
	C(.sql = "SELECT * FROM t LIMIT 1; DELETE FROM u WHERE id = 1", .nstmts = 2, .stmt = 1, .kinds = "delete",
	  .writes = "u"),
	/* errors: no statements at all, even if a part of the text was fine */
	C(.sql = "SELEC 1", .error = true),
	C(.sql = "SELECT * FROM", .error = true),
	C(.sql = "DELETE t", .error = true),
	C(.sql = "SELECT (1", .error = true),
	C(.sql = "SELECT 1; SELEC 2", .error = true),
	C(.sql = "SELECT 'unterminated", .error = true),
	C(.sql = "/* unterminated comment", .error = true),
	/* nothing to run */
	C(.sql = "", .nstmts = NONE),
	C(.sql = "   \n\t ", .nstmts = NONE),
	C(.sql = "-- just a comment", .nstmts = NONE),
	C(.sql = "/* block comment */", .nstmts = NONE),
	C(.sql = ";", .nstmts = NONE),
};

#endif
