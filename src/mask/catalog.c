/*
 * The sensitive-column catalog: which relations of a database hold a column some rule
 * masks (with all their columns, for the masking subquery), which views are built on
 * them, and which functions live outside pg_catalog. Loaded with one query per session
 * (and after DDL); no per-row lookups.
 */
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"
#include "mask/mask.h"

typedef struct {
	char *buf;
	size_t len, cap;
} Str;

static void add(Str *s, const char *t)
{
	size_t n = strlen(t);
	if (s->len + n + 1 > s->cap) {
		s->cap = (s->len + n + 1) * 2;
		s->buf = xrealloc(s->buf, s->cap);
	}
	memcpy(s->buf + s->len, t, n + 1);
	s->len += n;
}

/* A rule pattern as a LIKE pattern ('!' escapes), as a literal: nothing to inject. */
static void add_like(Str *s, const char *pattern)
{
	char lit[1024];
	size_t n = 0;
	int dots = 0;
	for (const char *p = pattern; *p; p++)
		dots += *p == '.';
	if (dots == 1) {
		/* table.column: in any schema */
		lit[n++] = '%';
		lit[n++] = '.';
	}
	for (const char *p = pattern; *p && n < sizeof lit - 3; p++) {
		if (*p == '*') {
			lit[n++] = '%';
			continue;
		}
		if (*p == '%' || *p == '_' || *p == '!')
			lit[n++] = '!';
		lit[n++] = *p;
	}
	lit[n] = 0;
	char *t = mask__sql_text(lit);
	add(s, t);
	free(t);
}

static void add_literal(Str *s, const char *text)
{
	char *t = mask__sql_text(text);
	add(s, t);
	free(t);
}

char *mask_catalog_sql(const MaskRule *const *rules, int nrules)
{
	Str rule = {0};
	add(&rule, "CASE");
	int used = 0;
	for (int i = 0; i < nrules; i++) {
		const MaskRule *r = rules[i];
		if (!r->ncolumns && !r->ntypes)
			continue; /* detect-only */
		char num[16];
		snprintf(num, sizeof num, "%d", i);
		add(&rule, " WHEN false");
		for (int k = 0; k < r->ncolumns; k++) {
			add(&rule, " OR n.nspname || '.' || c.relname || '.' || a.attname LIKE ");
			add_like(&rule, r->columns[k]);
			add(&rule, " ESCAPE '!'");
		}
		for (int k = 0; k < r->ntypes; k++) {
			add(&rule, " OR format_type(a.atttypid, NULL) = ");
			add_literal(&rule, r->types[k]);
			add(&rule, " OR t.typname = ");
			add_literal(&rule, r->types[k]);
		}
		add(&rule, " THEN ");
		add(&rule, num);
		used++;
	}
	add(&rule, " END");
	if (!used) {
		free(rule.buf);
		rule.buf = xstrdup("NULL::int");
	}
	char *sql = xasprintf(
		"WITH RECURSIVE m AS ("
		" SELECT a.attrelid AS rel, a.attnum, (%s) AS rule"
		" FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
		" JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
		" WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')"
		" AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg!_toast%%' ESCAPE '!'),"
		" mm AS (SELECT * FROM m WHERE rule IS NOT NULL),"
		/* partitions and inheritance children hold the same values under the same names */
		" kids(rel, parent) AS (SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i"
		"  WHERE i.inhparent IN (SELECT rel FROM mm)"
		"  UNION SELECT i.inhrelid, k.parent FROM pg_catalog.pg_inherits i JOIN kids k ON i.inhparent = k.rel),"
		/* and the parents of a masked partition or child return its rows: the same names are masked there */
		" ups(rel, base) AS (SELECT i.inhparent, i.inhrelid FROM pg_catalog.pg_inherits i"
		"  WHERE i.inhrelid IN (SELECT rel FROM mm)"
		"  UNION SELECT i.inhparent, u.base FROM pg_catalog.pg_inherits i JOIN ups u ON i.inhrelid = u.rel),"
		" masked AS (SELECT rel, attnum, rule FROM mm UNION"
		"  SELECT k.rel, ca.attnum, mm.rule FROM kids k JOIN mm ON mm.rel = k.parent"
		"  JOIN pg_catalog.pg_attribute pa ON pa.attrelid = mm.rel AND pa.attnum = mm.attnum"
		"  JOIN pg_catalog.pg_attribute ca ON ca.attrelid = k.rel AND ca.attname = pa.attname"
		"  UNION SELECT u.rel, pa.attnum, mm.rule FROM ups u JOIN mm ON mm.rel = u.base"
		"  JOIN pg_catalog.pg_attribute ca ON ca.attrelid = mm.rel AND ca.attnum = mm.attnum"
		"  JOIN pg_catalog.pg_attribute pa ON pa.attrelid = u.rel AND pa.attname = ca.attname),"
		/* views and materialized views built on a masked relation, directly or not */
		" views(rel) AS (SELECT r.ev_class FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d"
		"  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid"
		"  WHERE d.refobjid IN (SELECT rel FROM masked) AND r.ev_class <> d.refobjid"
		"  UNION SELECT r.ev_class FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d"
		"  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid JOIN views v ON d.refobjid = v.rel"
		"  WHERE r.ev_class <> d.refobjid),"
		/* joins, not correlated subqueries: a high cost estimate would make the server JIT-compile it */
		" mcol AS (SELECT rel, attnum, min(rule) AS rule FROM masked GROUP BY rel, attnum),"
		" mrel AS (SELECT DISTINCT rel FROM masked)"
		" SELECT 'c', n.nspname::text, c.relname::text, lpad(a.attnum::text, 5, '0'), a.attname::text,"
		" format_type(a.atttypid, a.atttypmod), t.typcategory::text, coalesce(mc.rule, -1)::text,"
		" (mr.rel IS NULL)::text, c.oid::text"
		" FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
		" JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
		" JOIN pg_catalog.pg_type t ON t.oid = a.atttypid"
		" LEFT JOIN mcol mc ON mc.rel = c.oid AND mc.attnum = a.attnum LEFT JOIN mrel mr ON mr.rel = c.oid"
		" WHERE c.oid IN (SELECT rel FROM masked UNION SELECT rel FROM views)"
		" UNION ALL"
		/* the schemas unqualified names resolve in, in order (pg_temp and pg_catalog included) */
		" SELECT 's', NULL, p.name::text, lpad(p.ord::text, 5, '0'), NULL, NULL, NULL, NULL, NULL, NULL"
		" FROM unnest(current_schemas(true)) WITH ORDINALITY AS p(name, ord)"
		" UNION ALL"
		" SELECT DISTINCT 'f', NULL, p.proname::text, NULL, NULL, NULL, NULL, NULL, NULL, NULL"
		" FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
		" WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')"
		" UNION ALL"
		/* views that rules name partly: what each column takes is read from the definition */
		" SELECT 'v', n.nspname::text, c.relname::text, NULL, NULL, NULL, NULL, NULL, NULL,"
		/* a view over such a view: its base is judged by the same rows, in no set order */
		" CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_depend d"
		"  ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = r.oid"
		"  WHERE r.ev_class = c.oid AND d.refobjid <> c.oid AND d.refobjid IN (SELECT rel FROM views))"
		" THEN NULL ELSE pg_catalog.pg_get_viewdef(c.oid) END"
		" FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
		" WHERE c.oid IN (SELECT rel FROM views) AND c.oid IN (SELECT rel FROM mrel)"
		" ORDER BY 1, 2, 3, 4",
		rule.buf);
	free(rule.buf);
	return sql;
}

MaskCatalog *mask_catalog_new(const MaskRule *const *rules, int nrules, const uint8_t *key, size_t keylen)
{
	MaskCatalog *c = xcalloc(1, sizeof *c);
	c->rules = rules;
	c->nrules = nrules;
	if (key && keylen) {
		uint8_t k[SHA256_DIGEST_LENGTH];
		SHA256(key, keylen, k); /* HMAC keys longer than a block are hashed anyway; this fixes the length */
		for (int i = 0; i < 64; i++) {
			uint8_t b = i < (int)sizeof k ? k[i] : 0;
			c->hash_ipad[i] = b ^ 0x36;
			c->hash_opad[i] = b ^ 0x5c;
		}
		c->has_key = true;
	}
	return c;
}

bool mask_catalog_add_row(MaskCatalog *c, const char *const *v, int n)
{
	if (n != MASK_CATALOG_COLUMNS || !v[0] || !v[2])
		return false;
	if (strcmp(v[0], "s") == 0) {
		char *end;
		long ord = v[3] ? strtol(v[3], &end, 10) : 0;
		if (!v[3] || *end || ord < 1 || ord > 1000 || c->npath >= 64)
			return false;
		/* kept in search order whatever order the rows come in */
		int at = c->npath;
		while (at > 0 && c->path_ord[at - 1] > ord) {
			c->path[at] = c->path[at - 1];
			c->path_ord[at] = c->path_ord[at - 1];
			at--;
		}
		c->path[at] = xstrdup(v[2]);
		c->path_ord[at] = (int)ord;
		c->npath++;
		return true;
	}
	if (strcmp(v[0], "v") == 0) {
		/* after every 'c' row (ORDER BY 1): the view's columns and its base are loaded */
		MaskRelation *r = v[1] ? (MaskRelation *)mask_catalog_find(c, v[1], v[2]) : NULL;
		if (!r)
			return false;
		if (!mask_view_covered(c, r, v[9]))
			r->derived = true;
		return true;
	}
	if (strcmp(v[0], "f") == 0) {
		if (c->nfunctions % 64 == 0)
			c->functions = xrealloc(c->functions, (size_t)(c->nfunctions + 64) * sizeof(char *));
		c->functions[c->nfunctions++] = xstrdup(v[2]);
		return true;
	}
	if (strcmp(v[0], "c") != 0 || !v[1] || !v[3] || !v[4] || !v[5] || !v[6] || !v[7] || !v[8] || !v[9])
		return false;
	char *end;
	long rule = strtol(v[7], &end, 10);
	if (*v[7] == 0 || *end || rule < -1 || rule >= c->nrules)
		return false;
	long attnum = strtol(v[3], &end, 10);
	if (*v[3] == 0 || *end || attnum < 1 || attnum > 32767)
		return false;
	unsigned long long oid = strtoull(v[9], &end, 10);
	if (*v[9] == 0 || *end || oid == 0 || oid > 0xffffffffull)
		return false;
	MaskRelation *r = c->nrels ? &c->rels[c->nrels - 1] : NULL;
	if (!r || strcmp(r->schema, v[1]) != 0 || strcmp(r->name, v[2]) != 0) {
		if (c->nrels % 16 == 0)
			c->rels = xrealloc(c->rels, (size_t)(c->nrels + 16) * sizeof *c->rels);
		r = &c->rels[c->nrels++];
		memset(r, 0, sizeof *r);
		r->schema = xstrdup(v[1]);
		r->name = xstrdup(v[2]);
		r->derived = strcmp(v[8], "true") == 0;
		r->oid = (uint32_t)oid;
	} else if (r->oid != (uint32_t)oid) {
		return false;
	}
	if (r->ncols % 16 == 0)
		r->cols = xrealloc(r->cols, (size_t)(r->ncols + 16) * sizeof *r->cols);
	MaskColumn *col = &r->cols[r->ncols++];
	col->name = xstrdup(v[4]);
	col->type = xstrdup(v[5]);
	col->category = v[6][0];
	col->rule = (int)rule;
	col->attnum = (int)attnum;
	return true;
}

void mask_catalog_free(MaskCatalog *c)
{
	if (!c)
		return;
	for (int i = 0; i < c->nrels; i++) {
		for (int k = 0; k < c->rels[i].ncols; k++) {
			free(c->rels[i].cols[k].name);
			free(c->rels[i].cols[k].type);
		}
		free(c->rels[i].cols);
		free(c->rels[i].schema);
		free(c->rels[i].name);
	}
	free(c->rels);
	for (int i = 0; i < c->nfunctions; i++)
		free(c->functions[i]);
	free(c->functions);
	for (int i = 0; i < c->npath; i++)
		free(c->path[i]);
	free(c);
}

const MaskRelation *mask_catalog_find(const MaskCatalog *c, const char *schema, const char *name)
{
	for (int i = 0; i < c->nrels; i++)
		if (strcmp(c->rels[i].schema, schema) == 0 && strcmp(c->rels[i].name, name) == 0)
			return &c->rels[i];
	return NULL;
}

const MaskRelation *mask_catalog_resolve(const MaskCatalog *c, const char *schema, const char *name)
{
	if (schema)
		return mask_catalog_find(c, schema, name);
	if (!c->npath)
		return mask_catalog_find(c, "public", name);
	for (int i = 0; i < c->npath; i++) {
		const MaskRelation *r = mask_catalog_find(c, c->path[i], name);
		if (r)
			return r;
	}
	return NULL;
}

bool mask_catalog_has_function(const MaskCatalog *c, const char *name)
{
	for (int i = 0; i < c->nfunctions; i++)
		if (strcmp(c->functions[i], name) == 0)
			return true;
	return false;
}

const MaskColumn *mask_catalog_column(const MaskCatalog *c, uint32_t relid, int attnum)
{
	for (int i = 0; i < c->nrels; i++) {
		const MaskRelation *r = &c->rels[i];
		if (r->oid != relid)
			continue;
		for (int k = 0; k < r->ncols; k++)
			if (r->cols[k].attnum == attnum)
				return &r->cols[k];
		return NULL;
	}
	return NULL;
}
