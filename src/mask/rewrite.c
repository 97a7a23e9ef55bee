/*
 * Statement rewriting for masking. Every relation a statement reads in a FROM position
 * that holds a masked column is replaced, in the text, by a subquery that masks those
 * columns first:  customers c  ->  (SELECT "id", <mask>("ssn") AS "ssn", ... FROM
 * "public"."customers") c. Whatever the statement then does with the values (functions,
 * casts, aggregates, JSON of the whole row, predicates, set operations, errors) it does
 * with masked ones. What cannot be rewritten that way is refused: masked columns of a
 * DML target in SET/WHERE/RETURNING, views built on masked tables, functions whose body
 * is unknown, statistics views, DO blocks, EXPLAIN of a masked relation.
 */
#include <ctype.h>
#include <jansson.h>
#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/sql_parse.h"
#include "core/util.h"
#include "mask/mask.h"

typedef struct {
	size_t start, end; /* the span of sql replaced */
	char *text;
	size_t gen;        /* where in text the masked relation's own name is */
} Edit;

/* One token of the statement, as PostgreSQL's scanner reads it. */
typedef struct {
	size_t start, end;
	int token;
} Tok;

typedef struct {
	const MaskCatalog *c;
	const RewriteOptions *o;
	const char *sql;
	size_t sqllen;
	Edit *edits;
	int nedits;
	char **ctes; /* every CTE name in the statement */
	int nctes;
	bool refused;
	char *reason;
	size_t reasonlen;
	Tok *toks; /* scanned on first use */
	int ntoks;
	bool scanned;
} Rw;

typedef enum { CTX_OTHER, CTX_FROM } Ctx;

static void walk(Rw *w, json_t *node, Ctx ctx);

static void refuse(Rw *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void refuse(Rw *w, const char *fmt, ...)
{
	if (w->refused)
		return;
	w->refused = true;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->reason, w->reasonlen, fmt, ap);
	va_end(ap);
}

static const char *str_of(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

static const char *string_node(json_t *n)
{
	json_t *s = json_object_get(n, "String");
	if (!s)
		return NULL;
	const char *v = str_of(s, "sval");
	return v ? v : str_of(s, "str");
}

/* The single "Type": {...} of a node, or NULL. */
static const char *node_type(json_t *n, json_t **body)
{
	if (!json_is_object(n) || json_object_size(n) != 1)
		return NULL;
	const char *k = json_object_iter_key(json_object_iter(n));
	json_t *v = json_object_iter_value(json_object_iter(n));
	if (!json_is_object(v) || !isupper((unsigned char)k[0]))
		return NULL;
	*body = v;
	return k;
}

/* What a tree search does at one object node: found, look inside it, or not inside it. */
typedef enum { SEEK_DESCEND, SEEK_FOUND, SEEK_SKIP } Seek;

/* Whether the search at finds any object node in the tree n (arrays and fields are walked). */
static bool tree_any(json_t *n, Seek (*at)(json_t *obj, const void *arg), const void *arg)
{
	if (json_is_array(n)) {
		size_t i;
		json_t *v;
		json_array_foreach(n, i, v) if (tree_any(v, at, arg)) return true;
		return false;
	}
	if (!json_is_object(n))
		return false;
	Seek s = at(n, arg);
	if (s != SEEK_DESCEND)
		return s == SEEK_FOUND;
	const char *k;
	json_t *v;
	json_object_foreach(n, k, v) if (tree_any(v, at, arg)) return true;
	return false;
}

static bool is_cte_name(const Rw *w, const char *name)
{
	for (int i = 0; i < w->nctes; i++)
		if (strcmp(w->ctes[i], name) == 0)
			return true;
	return false;
}

/* Relations whose contents repeat other tables' values or statements' text. */
static bool denied_relation(const char *schema, const char *name)
{
	static const char *const names[] = {
		"pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data",
		"pg_stat_activity", "pg_stat_statements", "pg_prepared_statements", "pg_cursors", "pg_largeobject",
	};
	if (schema && strcmp(schema, "pg_catalog") != 0 && strcmp(schema, "public") != 0)
		return false;
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/* Built-in functions that run SQL given as text, read files or other sessions' statements. */
static bool denied_function(const char *name)
{
	static const char *const names[] = {
		"query_to_xml", "query_to_xml_and_xmlschema", "query_to_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
		"table_to_xml", "table_to_xml_and_xmlschema", "table_to_xmlschema", "schema_to_xml",
		"schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xml_and_xmlschema", "current_query",
		"pg_stat_get_activity", "lo_get", "lo_export", "lo_import", "lo_from_bytea", "lo_put", "loread",
		"pg_read_file", "pg_read_binary_file", "pg_stat_statements", "dblink", "dblink_exec",
		/* run SQL given as text */
		"ts_stat", "ts_rewrite",
		/* logical decoding: every table's changes, unmasked */
		"pg_logical_slot_get_changes", "pg_logical_slot_peek_changes", "pg_logical_slot_get_binary_changes",
		"pg_logical_slot_peek_binary_changes",
		/* statement text of this or other sessions (the rewritten text holds the hash pads) */
		"pg_stat_get_backend_activity", "pg_prepared_statement", "pg_cursor",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(name, names[i]) == 0)
			return true;
	return false;
}

/* ---- the name as written: where it ends in the text ---- */

static size_t skip_space(const char *s, size_t n, size_t i)
{
	while (i < n && isspace((unsigned char)s[i]))
		i++;
	return i;
}

/* One identifier at i: returns its end, or 0 when there is none we can read. */
static size_t ident_end(const char *s, size_t n, size_t i)
{
	if (i >= n)
		return 0;
	if (s[i] == '"') {
		for (size_t k = i + 1; k < n; k++) {
			if (s[k] == '"') {
				if (k + 1 < n && s[k + 1] == '"') {
					k++;
					continue;
				}
				return k + 1;
			}
		}
		return 0;
	}
	unsigned char c = (unsigned char)s[i];
	if (!(isalpha(c) || c == '_' || c >= 0x80) || ((c == 'u' || c == 'U') && i + 1 < n && s[i + 1] == '&'))
		return 0;
	size_t k = i + 1;
	while (k < n && (isalnum((unsigned char)s[k]) || s[k] == '_' || s[k] == '$' || (unsigned char)s[k] >= 0x80))
		k++;
	return k;
}

/* The end of a dotted name of parts identifiers starting at i, or 0. */
static size_t name_end(const char *s, size_t n, size_t i, int parts)
{
	size_t e = ident_end(s, n, i);
	for (int p = 1; e && p < parts; p++) {
		size_t d = skip_space(s, n, e);
		if (d >= n || s[d] != '.')
			return 0;
		e = ident_end(s, n, skip_space(s, n, d + 1));
	}
	return e;
}

static void quote_ident(char *out, size_t outlen, const char *id)
{
	size_t o = 0;
	if (outlen < 3)
		return;
	out[o++] = '"';
	for (const char *p = id; *p && o + 3 < outlen; p++) {
		if (*p == '"')
			out[o++] = '"';
		out[o++] = *p;
	}
	out[o++] = '"';
	out[o] = 0;
}

/* (SELECT <masked columns> FROM "schema"."name"); *from_at: where "schema" starts in it. */
static char *masking_subquery(const Rw *w, const MaskRelation *r, size_t *from_at)
{
	size_t cap = 256, len = 0;
	char *q = xmalloc(cap);
	len = (size_t)snprintf(q, cap, "(SELECT ");
	for (int i = 0; i < r->ncols; i++) {
		char id[300];
		quote_ident(id, sizeof id, r->cols[i].name);
		char *item = r->cols[i].rule >= 0 ? mask_sql_expr(w->c, &r->cols[i], id) : NULL;
		char *piece = item ? xasprintf("%s%s AS %s", i ? ", " : "", item, id) : xasprintf("%s%s", i ? ", " : "", id);
		free(item);
		size_t pl = strlen(piece);
		if (len + pl + 1 > cap) {
			cap = (len + pl + 1) * 2;
			q = xrealloc(q, cap);
		}
		memcpy(q + len, piece, pl + 1);
		len += pl;
		free(piece);
	}
	char sch[300], nm[300];
	quote_ident(sch, sizeof sch, r->schema);
	quote_ident(nm, sizeof nm, r->name);
	char *out = xasprintf("%s FROM %s.%s)", q, sch, nm);
	*from_at = strlen(q) + strlen(" FROM ");
	free(q);
	return out;
}

static void add_edit(Rw *w, size_t start, size_t end, char *text, size_t gen)
{
	w->edits = xrealloc(w->edits, (size_t)(w->nedits + 1) * sizeof *w->edits);
	w->edits[w->nedits++] = (Edit){start, end, text, gen};
}

/*
 * Edits are placed by the scanner's tokens, never by reading characters around a name: a
 * comment or a quoted identifier that merely looks like a keyword or a parenthesis must
 * not move an edit, or text the parser read as a literal could turn into live SQL.
 */
static bool scan(Rw *w)
{
	if (w->scanned)
		return w->toks != NULL;
	w->scanned = true;
	PgQueryScanResult sr = pg_query_scan(w->sql);
	PgQuery__ScanResult *u =
		sr.error ? NULL : pg_query__scan_result__unpack(NULL, sr.pbuf.len, (const uint8_t *)sr.pbuf.data);
	pg_query_free_scan_result(sr);
	if (!u) {
		refuse(w, "the statement could not be scanned for masking");
		return false;
	}
	w->toks = xcalloc(u->n_tokens + 1, sizeof *w->toks);
	for (size_t i = 0; i < u->n_tokens; i++) {
		PgQuery__ScanToken *t = u->tokens[i];
		if (t->token == PG_QUERY__TOKEN__SQL_COMMENT || t->token == PG_QUERY__TOKEN__C_COMMENT)
			continue;
		w->toks[w->ntoks++] = (Tok){(size_t)t->start, (size_t)t->end, (int)t->token};
	}
	pg_query__scan_result__free_unpacked(u, NULL);
	return true;
}

/* The index of the token that starts at pos, or -1. */
static int token_at(Rw *w, size_t pos)
{
	if (!scan(w))
		return -1;
	int lo = 0, hi = w->ntoks - 1;
	while (lo <= hi) {
		int mid = (lo + hi) / 2;
		if (w->toks[mid].start == pos)
			return mid;
		if (w->toks[mid].start < pos)
			lo = mid + 1;
		else
			hi = mid - 1;
	}
	return -1;
}

/* The masked (or derived) relation a RangeVar names, NULL when none; refuses denied ones. */
static const MaskRelation *relation_of(Rw *w, json_t *rv)
{
	const char *schema = str_of(rv, "schemaname"), *name = str_of(rv, "relname");
	if (!name)
		return NULL;
	if (str_of(rv, "catalogname")) {
		refuse(w, "a database-qualified name (%s) cannot be masked", name);
		return NULL;
	}
	/* Before the CTE check: a CTE named like one must not let the real one through elsewhere. */
	if (denied_relation(schema, name)) {
		refuse(w, "%s repeats values or statements of other relations and is not readable under masking", name);
		return NULL;
	}
	if (!schema && is_cte_name(w, name))
		return NULL; /* a CTE of the statement: its own body is rewritten */
	return mask_catalog_resolve(w->c, schema, name);
}

/* A view built on masked columns that no rule names cannot be masked: refuses it. */
static bool refused_derived(Rw *w, const MaskRelation *r)
{
	if (r->derived)
		refuse(w, "%s.%s is a view over masked columns that the masking rules do not name"
			  " (name its columns that show them)", r->schema, r->name);
	return r->derived;
}

/* Where the RangeVar's name is written in the statement; refuses when it cannot be found. */
static bool name_span(Rw *w, json_t *rv, const MaskRelation *r, size_t *start, size_t *end)
{
	json_t *loc = json_object_get(rv, "location");
	int parts = 1 + (str_of(rv, "schemaname") ? 1 : 0);
	*start = json_is_integer(loc) ? (size_t)json_integer_value(loc) : (size_t)-1;
	*end = *start < w->sqllen ? name_end(w->sql, w->sqllen, *start, parts) : 0;
	if (!*end)
		refuse(w, "cannot locate the name of %s.%s in the statement", r->schema, r->name);
	return *end != 0;
}

/*
 * TABLE name (short for SELECT * FROM name): where the keyword starts, else start itself.
 * Without comments in the statement the characters before the name say it exactly; with
 * one, the scanner says whether "table" there is the keyword or text in a comment (a
 * plain read's rewrite is cheaper than a scan, so it scans only then).
 */
static size_t table_keyword(Rw *w, size_t start)
{
	if (strstr(w->sql, "--") || strstr(w->sql, "/*")) {
		int t = token_at(w, start);
		return t > 0 && w->toks[t - 1].token == PG_QUERY__TOKEN__TABLE ? w->toks[t - 1].start : start;
	}
	size_t i = start;
	while (i > 0 && isspace((unsigned char)w->sql[i - 1]))
		i--;
	if (i < 5 || strncasecmp(w->sql + i - 5, "table", 5) != 0)
		return start;
	size_t kw = i - 5;
	if (kw > 0) {
		unsigned char c = (unsigned char)w->sql[kw - 1];
		if (isalnum(c) || c == '_' || c == '$' || c == '"' || c >= 0x80)
			return start;
	}
	return kw;
}

/* A masked relation read in a FROM position: replace its name by the masking subquery. */
static void on_from_relation(Rw *w, json_t *rv, const MaskRelation *r)
{
	if (refused_derived(w, r))
		return;
	if (!json_is_true(json_object_get(rv, "inh"))) {
		refuse(w, "ONLY on a masked relation (%s.%s) is not supported", r->schema, r->name);
		return;
	}
	if (w->o->predicate_block && json_object_get(json_object_get(rv, "alias"), "colnames")) {
		refuse(w, "column aliases on a masked relation (%s.%s) hide masked columns from on_masked_predicate: block",
		       r->schema, r->name);
		return;
	}
	size_t start, end;
	if (!name_span(w, rv, r, &start, &end))
		return;
	size_t gen;
	char *sub = masking_subquery(w, r, &gen);
	if (!json_object_get(rv, "alias")) {
		char id[300];
		quote_ident(id, sizeof id, r->name);
		size_t kw = table_keyword(w, start);
		const char *prefix = kw < start ? "SELECT * FROM " : "";
		char *t = xasprintf("%s%s AS %s", prefix, sub, id);
		free(sub);
		sub = t;
		gen += strlen(prefix);
		start = kw;
	}
	add_edit(w, start, end, sub, gen);
}

/* ---- references to a DML target's columns (which is not rewritten) ---- */

/* A relation and how a statement names it. */
typedef struct {
	const MaskRelation *r;
	const char *alias;
} RelRef;

static bool masked_column_named(const MaskRelation *r, const char *name)
{
	for (int i = 0; i < r->ncols; i++)
		if (r->cols[i].rule >= 0 && strcmp(r->cols[i].name, name) == 0)
			return true;
	return false;
}

/* Whether name is a column of the relation, system columns included. */
static bool column_named(const MaskRelation *r, const char *name)
{
	static const char *const system[] = {"tableoid", "ctid", "xmin", "xmax", "cmin", "cmax"};
	for (size_t i = 0; i < sizeof system / sizeof system[0]; i++)
		if (strcmp(system[i], name) == 0)
			return true;
	for (int i = 0; i < r->ncols; i++)
		if (strcmp(r->cols[i].name, name) == 0)
			return true;
	return false;
}

/*
 * A ColumnRef that names a masked column of the relation, its whole row, or a star. Also
 * alias.name where name is no column of it: PostgreSQL reads that as a function of the
 * whole row (c.row_to_json is row_to_json(c)).
 */
static bool column_ref_reaches_masked(const RelRef *t, json_t *cr)
{
	json_t *fields = json_object_get(cr, "fields");
	size_t nf = json_array_size(fields);
	const char *last = string_node(json_array_get(fields, nf - 1));
	if (!last || masked_column_named(t->r, last))
		return true;
	if (nf == 1)
		return strcmp(last, t->alias) == 0;
	const char *qualifier = string_node(json_array_get(fields, nf - 2));
	return qualifier && strcmp(qualifier, t->alias) == 0 && !column_named(t->r, last);
}

static Seek at_target_ref(json_t *n, const void *arg)
{
	json_t *cr = json_object_get(n, "ColumnRef");
	if (!cr)
		return SEEK_DESCEND;
	return column_ref_reaches_masked(arg, cr) ? SEEK_FOUND : SEEK_SKIP;
}

/* Whether n refers to masked columns of a DML target (which is not rewritten). */
static bool refs_target(json_t *n, const MaskRelation *r, json_t *rv)
{
	json_t *alias = json_object_get(rv, "alias");
	const char *a = alias ? str_of(alias, "aliasname") : NULL;
	RelRef t = {r, a ? a : r->name};
	return tree_any(n, at_target_ref, &t);
}

/*
 * A RangeVar field: libpg_query writes fields typed RangeVar* without the {"RangeVar": ...}
 * wrapper (only Node* fields carry their type), so accept both forms.
 */
static json_t *range_var(json_t *field)
{
	json_t *rv = json_object_get(field, "RangeVar");
	if (rv)
		return rv;
	return json_object_get(field, "relname") ? field : NULL;
}

/* INSERT, UPDATE, DELETE, MERGE on a relation with masked columns. */
static void on_dml_target(Rw *w, const char *type, json_t *stmt)
{
	json_t *rv = range_var(json_object_get(stmt, "relation"));
	const MaskRelation *r = rv ? relation_of(w, rv) : NULL;
	if (!r)
		return;
	if (refused_derived(w, r))
		return;
	if (strcmp(type, "MergeStmt") == 0) {
		refuse(w, "MERGE into %s.%s, which has masked columns, is not supported", r->schema, r->name);
		return;
	}
	if (json_array_size(json_object_get(stmt, "returningList")) && refs_target(json_object_get(stmt, "returningList"), r, rv)) {
		refuse(w, "RETURNING would return masked columns of %s.%s", r->schema, r->name);
		return;
	}
	if (json_object_get(stmt, "onConflictClause")) {
		refuse(w, "INSERT ... ON CONFLICT on %s.%s, which has masked columns, is not supported", r->schema, r->name);
		return;
	}
	if (strcmp(type, "UpdateStmt") == 0 && refs_target(json_object_get(stmt, "targetList"), r, rv)) {
		refuse(w, "UPDATE would copy masked columns of %s.%s", r->schema, r->name);
		return;
	}
	/* The target is not rewritten: its WHERE sees raw values and the row count would tell. */
	json_t *where = json_object_get(stmt, "whereClause");
	if (where && refs_target(where, r, rv)) {
		refuse(w, "a condition on masked columns of %s.%s, the target of %s", r->schema, r->name,
		       strcmp(type, "DeleteStmt") == 0 ? "DELETE" : "UPDATE");
		return;
	}
}

/* COPY table TO: becomes COPY (SELECT ... FROM <masking subquery>) TO. */
static void on_copy(Rw *w, json_t *stmt)
{
	json_t *rv = range_var(json_object_get(stmt, "relation"));
	const MaskRelation *r = rv ? relation_of(w, rv) : NULL;
	if (!r)
		return;
	if (json_is_true(json_object_get(stmt, "is_from")))
		return; /* writing into it shows nothing */
	if (refused_derived(w, r))
		return;
	size_t i;
	json_t *opt;
	json_array_foreach(json_object_get(stmt, "options"), i, opt)
	{
		json_t *d = json_object_get(opt, "DefElem");
		const char *dn = d ? str_of(d, "defname") : NULL;
		const char *val = d ? string_node(json_object_get(d, "arg")) : NULL;
		if (dn && strcmp(dn, "format") == 0 && val && strcmp(val, "binary") == 0) {
			refuse(w, "COPY of %s.%s in binary format cannot be masked; use text or csv", r->schema, r->name);
			return;
		}
	}
	size_t start, end;
	if (!name_span(w, rv, r, &start, &end))
		return;
	/*
	 * An optional column list follows the name: its end is the matching ')' token, and the
	 * list itself is written anew from the parse tree's names.
	 */
	json_t *attlist = json_object_get(stmt, "attlist");
	char *cols = NULL; /* NULL: all of them */
	if (json_array_size(attlist)) {
		int t = token_at(w, start);
		while (t >= 0 && t < w->ntoks && w->toks[t].end < end)
			t++;
		int open = t >= 0 ? t + 1 : -1, depth = 0, close = -1;
		for (int k = open; k >= 0 && k < w->ntoks && close < 0; k++) {
			depth += w->toks[k].token == '(' ? 1 : w->toks[k].token == ')' ? -1 : 0;
			if (depth == 0)
				close = k;
		}
		if (open < 0 || open >= w->ntoks || w->toks[open].token != '(' || close < 0) {
			refuse(w, "cannot read the column list of COPY %s.%s", r->schema, r->name);
			return;
		}
		json_t *a;
		json_array_foreach(attlist, i, a)
		{
			const char *nm = string_node(a);
			char id[300];
			quote_ident(id, sizeof id, nm ? nm : "");
			char *more = xasprintf("%s%s%s", cols ? cols : "", i ? ", " : "", id);
			free(cols);
			cols = more;
		}
		end = w->toks[close].end;
	}
	size_t gen;
	char *sub = masking_subquery(w, r, &gen), id[300];
	quote_ident(id, sizeof id, r->name);
	const char *list = cols ? cols : "*";
	char *text = xasprintf("(SELECT %s FROM %s AS %s)", list, sub, id);
	add_edit(w, start, end, text, strlen("(SELECT ") + strlen(list) + strlen(" FROM ") + gen);
	free(cols);
	free(sub);
}

/* Names of every CTE in the tree (a CTE shadows a table of the same name). */
static void collect_ctes(Rw *w, json_t *n)
{
	if (json_is_array(n)) {
		size_t i;
		json_t *v;
		json_array_foreach(n, i, v) collect_ctes(w, v);
		return;
	}
	if (!json_is_object(n))
		return;
	json_t *cte = json_object_get(n, "CommonTableExpr");
	const char *name = cte ? str_of(cte, "ctename") : NULL;
	if (name) {
		w->ctes = xrealloc(w->ctes, (size_t)(w->nctes + 1) * sizeof(char *));
		w->ctes[w->nctes++] = xstrdup(name);
	}
	const char *k;
	json_t *v;
	json_object_foreach(n, k, v) collect_ctes(w, v);
}

static void on_func_call(Rw *w, json_t *fc)
{
	json_t *names = json_object_get(fc, "funcname");
	size_t n = json_array_size(names);
	const char *last = string_node(json_array_get(names, n - 1));
	const char *schema = n >= 2 ? string_node(json_array_get(names, n - 2)) : NULL;
	if (!last)
		return;
	if (denied_function(last)) {
		refuse(w, "%s() can read data around masking", last);
		return;
	}
	if ((schema && strcmp(schema, "pg_catalog") != 0) || (!schema && mask_catalog_has_function(w->c, last)))
		refuse(w, "%s() is not a built-in function: what it reads cannot be masked", last);
}

/* Predicates and orderings on masked columns (on_masked_predicate: block). */
static Seek at_masked_name(json_t *n, const void *arg)
{
	const Rw *w = arg;
	json_t *cr = json_object_get(n, "ColumnRef");
	if (cr) {
		json_t *fields = json_object_get(cr, "fields");
		const char *lname = string_node(json_array_get(fields, json_array_size(fields) - 1));
		for (int i = 0; lname && i < w->c->nrels; i++)
			if (masked_column_named(&w->c->rels[i], lname))
				return SEEK_FOUND;
		return SEEK_SKIP;
	}
	if (json_object_get(n, "SelectStmt") || json_object_get(n, "SubLink"))
		return SEEK_SKIP; /* a subquery's own clauses are checked when it is walked */
	return SEEK_DESCEND;
}

static void check_predicate(Rw *w, json_t *clause, const char *what)
{
	if (!clause || !w->o->predicate_block || w->refused)
		return;
	if (tree_any(clause, at_masked_name, w))
		refuse(w, "%s on a masked column (on_masked_predicate: block)", what);
}

/* ORDER BY 2, GROUP BY 2 or by an output name: the target they stand for. */
static json_t *target_named(json_t *targets, json_t *item)
{
	json_t *sb = json_object_get(item, "SortBy");
	json_t *node = sb ? json_object_get(sb, "node") : item;
	json_t *c = json_object_get(node, "A_Const");
	json_t *ival = c ? json_object_get(json_object_get(c, "ival"), "ival") : NULL;
	if (c) {
		json_int_t k = json_is_integer(ival) ? json_integer_value(ival) : 0;
		json_t *t = k >= 1 ? json_array_get(targets, (size_t)k - 1) : NULL;
		return t ? json_object_get(json_object_get(t, "ResTarget"), "val") : NULL;
	}
	json_t *fields = json_object_get(json_object_get(node, "ColumnRef"), "fields");
	const char *name = json_array_size(fields) == 1 ? string_node(json_array_get(fields, 0)) : NULL;
	size_t i;
	json_t *t;
	json_array_foreach(targets, i, t)
	{
		json_t *rt = json_object_get(t, "ResTarget");
		const char *out = str_of(rt, "name");
		if (name && out && strcmp(name, out) == 0)
			return json_object_get(rt, "val");
	}
	return NULL;
}

static bool statement_touches_masked(Rw *w, json_t *n);

/* Orderings and groupings by position or output name on a masked column (block). */
static void check_by_target(Rw *w, json_t *select, const char *key, const char *what)
{
	size_t i;
	json_t *item;
	json_array_foreach(json_object_get(select, key), i, item)
	{
		json_t *val = target_named(json_object_get(select, "targetList"), item);
		if (val)
			check_predicate(w, val, what);
	}
}

/* JOIN ... USING (col) and NATURAL JOIN compare columns by name (block). */
static void check_join_names(Rw *w, json_t *join)
{
	if (!w->o->predicate_block || w->refused)
		return;
	if (json_is_true(json_object_get(join, "isNatural")) &&
	    (statement_touches_masked(w, json_object_get(join, "larg")) ||
	     statement_touches_masked(w, json_object_get(join, "rarg")))) {
		refuse(w, "NATURAL JOIN of a relation with masked columns (on_masked_predicate: block)");
		return;
	}
	size_t i;
	json_t *n;
	json_array_foreach(json_object_get(join, "usingClause"), i, n)
	{
		const char *name = string_node(n);
		for (int k = 0; name && k < w->c->nrels; k++)
			if (masked_column_named(&w->c->rels[k], name)) {
				refuse(w, "a join condition on a masked column (on_masked_predicate: block)");
				return;
			}
	}
}

static void walk_list(Rw *w, json_t *list, Ctx ctx)
{
	size_t i;
	json_t *v;
	json_array_foreach(list, i, v) walk(w, v, ctx);
}

static void walk_typed(Rw *w, const char *type, json_t *b, Ctx ctx);

/* The fields of a node: FROM lists put their items in FROM position. */
static void walk_fields(Rw *w, json_t *b)
{
	const char *k;
	json_t *v;
	json_object_foreach(b, k, v)
	{
		if (strcmp(k, "fromClause") == 0 || strcmp(k, "usingClause") == 0)
			walk(w, v, CTX_FROM);
		else
			walk(w, v, CTX_OTHER);
	}
}

/* The type of a node written without its wrapper (a field typed as a struct, not Node*). */
static const char *implied_type(json_t *o)
{
	if (json_object_get(o, "relname") && json_object_get(o, "relpersistence"))
		return "RangeVar";
	if (json_object_get(o, "limitOption") && json_object_get(o, "op"))
		return "SelectStmt";
	return NULL;
}

/* A statement whose query the catalog keeps as text: views, materialized views, policies. */
static bool keeps_its_text(const char *type, json_t *b)
{
	const char *objtype = str_of(b, "objtype");
	return strcmp(type, "ViewStmt") == 0 || strcmp(type, "CreatePolicyStmt") == 0 ||
	       strcmp(type, "AlterPolicyStmt") == 0 ||
	       (strcmp(type, "CreateTableAsStmt") == 0 && objtype && strcmp(objtype, "OBJECT_MATVIEW") == 0);
}

static void walk_typed(Rw *w, const char *type, json_t *b, Ctx ctx)
{
	if (strcmp(type, "RangeVar") == 0) {
		const MaskRelation *r = relation_of(w, b);
		if (!r)
			return;
		if (ctx == CTX_FROM)
			on_from_relation(w, b, r);
		else
			refuse(w, "%s.%s has masked columns and cannot be used this way under masking", r->schema, r->name);
		return;
	}
	if (strcmp(type, "FuncCall") == 0) {
		on_func_call(w, b);
		check_predicate(w, json_object_get(b, "agg_filter"), "FILTER");
		check_predicate(w, json_object_get(b, "agg_order"), "an aggregate's ORDER BY");
		json_t *over = json_object_get(b, "over"); /* a WindowDef, written without its wrapper */
		check_predicate(w, json_object_get(over, "partitionClause"), "PARTITION BY");
		check_predicate(w, json_object_get(over, "orderClause"), "a window's ORDER BY");
	}
	if (strcmp(type, "DoStmt") == 0 || strcmp(type, "CreateFunctionStmt") == 0 || strcmp(type, "RuleStmt") == 0 ||
	    strcmp(type, "CreateTrigStmt") == 0) {
		if (w->c->nrels)
			refuse(w, "code run by the server (DO, functions, rules, triggers) can read around masking");
		return;
	}
	if (w->c->nrels && (strcmp(type, "AlterRoleSetStmt") == 0 || strcmp(type, "AlterDatabaseSetStmt") == 0 ||
			    strcmp(type, "DefineStmt") == 0 || strcmp(type, "AlterSystemStmt") == 0 ||
			    strcmp(type, "RenameStmt") == 0 || strcmp(type, "AlterObjectSchemaStmt") == 0)) {
		/* settings for later sessions (search_path), operators over any function, renamed
		 * schemas and tables: each would move names away from where the catalog found them */
		refuse(w, "this statement can move names or code around masking");
		return;
	}
	if (strcmp(type, "CreateTableAsStmt") == 0 && w->c->nrels && json_object_get(json_object_get(b, "query"), "ExecuteStmt")) {
		/* a statement prepared by the protocol may run as written, its rows masked on the way out */
		refuse(w, "CREATE TABLE AS EXECUTE is not allowed under masking");
		return;
	}
	if (w->c->nrels && keeps_its_text(type, b) && statement_touches_masked(w, b)) {
		/* the catalog would keep the rewritten text, which pg_get_viewdef or pg_policies
		 * show: the hash method's key is in it */
		refuse(w, "a view or policy over masked columns would keep the masking's own text in the catalog");
		return;
	}
	if (strcmp(type, "ExplainStmt") == 0 && w->c->nrels &&
	    (statement_touches_masked(w, json_object_get(b, "query")) || json_object_get(json_object_get(b, "query"), "ExecuteStmt"))) {
		refuse(w, "EXPLAIN of a statement on masked columns would show the masking itself");
		return;
	}
	if (strcmp(type, "InsertStmt") == 0 || strcmp(type, "UpdateStmt") == 0 || strcmp(type, "DeleteStmt") == 0 ||
	    strcmp(type, "MergeStmt") == 0) {
		on_dml_target(w, type, b);
		const char *k;
		json_t *v;
		json_object_foreach(b, k, v)
		{
			if (strcmp(k, "relation") == 0)
				continue;
			bool from = strcmp(k, "fromClause") == 0 || strcmp(k, "usingClause") == 0 || strcmp(k, "sourceRelation") == 0;
			if (from)
				walk(w, v, CTX_FROM);
			else
				walk(w, v, CTX_OTHER);
		}
		return;
	}
	if (strcmp(type, "CopyStmt") == 0) {
		on_copy(w, b);
		walk(w, json_object_get(b, "query"), CTX_OTHER);
		return;
	}
	if (strcmp(type, "TruncateStmt") == 0 || strcmp(type, "LockStmt") == 0 || strcmp(type, "VacuumStmt") == 0)
		return; /* name the relation, return none of its values */
	if (strcmp(type, "SelectStmt") == 0) {
		check_predicate(w, json_object_get(b, "whereClause"), "WHERE");
		check_predicate(w, json_object_get(b, "havingClause"), "HAVING");
		check_predicate(w, json_object_get(b, "groupClause"), "GROUP BY");
		check_predicate(w, json_object_get(b, "sortClause"), "ORDER BY");
		check_predicate(w, json_object_get(b, "distinctClause"), "DISTINCT ON");
		check_predicate(w, json_object_get(b, "windowClause"), "a window");
		check_by_target(w, b, "sortClause", "ORDER BY");
		check_by_target(w, b, "groupClause", "GROUP BY");
	}
	if (strcmp(type, "JoinExpr") == 0) {
		check_predicate(w, json_object_get(b, "quals"), "a join condition");
		check_join_names(w, b);
		walk(w, json_object_get(b, "larg"), CTX_FROM);
		walk(w, json_object_get(b, "rarg"), CTX_FROM);
		walk(w, json_object_get(b, "quals"), CTX_OTHER);
		return;
	}
	if (strcmp(type, "WindowDef") == 0) {
		check_predicate(w, json_object_get(b, "partitionClause"), "PARTITION BY");
		check_predicate(w, json_object_get(b, "orderClause"), "a window's ORDER BY");
	}
	walk_fields(w, b);
}

static void walk(Rw *w, json_t *node, Ctx ctx)
{
	if (!node || w->refused)
		return;
	if (json_is_array(node)) {
		walk_list(w, node, ctx);
		return;
	}
	json_t *b;
	const char *type = node_type(node, &b);
	if (type) {
		walk_typed(w, type, b, ctx);
		return;
	}
	if (json_is_object(node)) {
		const char *implied = implied_type(node);
		if (implied)
			walk_typed(w, implied, node, ctx);
		else
			walk_fields(w, node);
	}
}

static Seek at_masked_relation(json_t *n, const void *arg)
{
	const Rw *w = arg;
	json_t *rv = range_var(n);
	if (!rv)
		return SEEK_DESCEND;
	const char *schema = str_of(rv, "schemaname"), *name = str_of(rv, "relname");
	return name && (schema || !is_cte_name(w, name)) && mask_catalog_resolve(w->c, schema, name) ? SEEK_FOUND
												      : SEEK_SKIP;
}

/* Whether n reads a masked relation anywhere (for EXPLAIN and NATURAL JOIN). */
static bool statement_touches_masked(Rw *w, json_t *n) { return tree_any(n, at_masked_relation, w); }

/* ---- results masked in the gateway: one masked relation read plainly ---- */

/* What a SELECT on one masked relation names it by, for its column references. */
typedef struct {
	const Rw *w;
	RelRef rel;
	json_t *targets;
} Plain;

static Seek at_plain_mention(json_t *n, const void *arg)
{
	if (json_object_get(n, "SubLink") || json_object_get(n, "SelectStmt") || json_object_get(n, "RangeSubselect"))
		return SEEK_FOUND;
	return at_target_ref(n, arg);
}

/* Whether n refers to a masked column, the whole row, or a star, or holds a subquery. */
static bool mentions_masked(const Plain *p, json_t *n) { return tree_any(n, at_plain_mention, &p->rel); }

/* A target that is a column of the relation as it is (name, alias.name, *, alias.*). */
static bool bare_column(const Plain *p, json_t *val)
{
	json_t *cr = json_object_get(val, "ColumnRef");
	json_t *fields = cr ? json_object_get(cr, "fields") : NULL;
	size_t nf = json_array_size(fields);
	if (nf < 1 || nf > 2 || json_object_size(val) != 1)
		return false;
	if (nf == 2 && (!string_node(json_array_get(fields, 0)) || strcmp(string_node(json_array_get(fields, 0)), p->rel.alias) != 0))
		return false;
	json_t *last = json_array_get(fields, nf - 1);
	if (json_object_get(last, "A_Star"))
		return true;
	const char *name = string_node(last);
	/* alias alone is the whole row; alias.f where f is no column, a function of it */
	return name && !(nf == 1 && strcmp(name, p->rel.alias) == 0) && column_named(p->rel.r, name);
}

/* ORDER BY 2 or ORDER BY an output name orders by a target, which may be a masked column. */
static bool sorts_by_target(const Plain *p, json_t *sort)
{
	size_t i;
	json_t *item;
	json_array_foreach(sort, i, item)
	{
		json_t *node = json_object_get(json_object_get(item, "SortBy"), "node");
		if (!node || json_object_get(node, "A_Const"))
			return true;
		json_t *fields = json_object_get(json_object_get(node, "ColumnRef"), "fields");
		const char *name = json_array_size(fields) == 1 ? string_node(json_array_get(fields, 0)) : NULL;
		size_t k;
		json_t *t;
		json_array_foreach(p->targets, k, t)
		{
			const char *out = str_of(json_object_get(t, "ResTarget"), "name");
			if (name && out && strcmp(name, out) == 0)
				return true;
		}
	}
	return false;
}

static bool text_type(const char *type)
{
	return strcmp(type, "text") == 0 || strcmp(type, "character varying") == 0 ||
	       strncmp(type, "character varying(", 18) == 0;
}

/* Masked columns a target outputs are all text (the gateway masks text only). */
static bool text_output(const Plain *p, json_t *val)
{
	json_t *fields = json_object_get(json_object_get(val, "ColumnRef"), "fields");
	json_t *last = json_array_get(fields, json_array_size(fields) - 1);
	if (!last)
		return true; /* not a column: mentions no masked one */
	const char *name = string_node(last);
	for (int i = 0; i < p->rel.r->ncols; i++) {
		const MaskColumn *c = &p->rel.r->cols[i];
		if (c->rule >= 0 && (!name || strcmp(c->name, name) == 0) && !text_type(c->type))
			return false;
	}
	return true;
}

/*
 * Whether the statement can go as written, its results masked in the gateway by the origin
 * of each field: a plain SELECT of one masked relation (text columns only) in which masked
 * columns appear only as output columns by themselves: never inside an expression, a
 * condition, an ordering, a subquery or a whole row. Values then leave only through fields
 * whose RowDescription names their masked column. Anything else is rewritten.
 */
static bool plain_select(const Rw *w, json_t *root)
{
	json_t *stmts = json_object_get(root, "stmts");
	if (json_array_size(stmts) != 1)
		return false;
	json_t *b = json_object_get(json_object_get(json_array_get(stmts, 0), "stmt"), "SelectStmt");
	if (!b)
		return false;
	static const char *const allowed[] = {"targetList", "fromClause", "whereClause", "sortClause",
					      "limitCount", "limitOffset", "limitOption", "op"};
	const char *k;
	json_t *v;
	json_object_foreach(b, k, v)
	{
		bool ok = false;
		for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
			ok = ok || strcmp(k, allowed[i]) == 0;
		if (!ok)
			return false;
	}
	const char *op = str_of(b, "op");
	json_t *from = json_object_get(b, "fromClause");
	json_t *rv = json_object_get(json_array_get(from, 0), "RangeVar");
	if (!op || strcmp(op, "SETOP_NONE") != 0 || json_array_size(from) != 1 || !rv)
		return false;
	const char *schema = str_of(rv, "schemaname"), *name = str_of(rv, "relname");
	const MaskRelation *r = name ? mask_catalog_resolve(w->c, schema, name) : NULL;
	if (!r || r->derived || str_of(rv, "catalogname") || !json_is_true(json_object_get(rv, "inh")))
		return false;
	json_t *alias = json_object_get(rv, "alias");
	Plain p = {w, {r, alias ? str_of(alias, "aliasname") : name}, json_object_get(b, "targetList")};
	if (!p.rel.alias || json_object_get(alias, "colnames"))
		return false; /* t AS x(a, b): columns under other names */
	size_t i;
	json_t *t;
	json_array_foreach(p.targets, i, t)
	{
		json_t *rt = json_object_get(t, "ResTarget");
		json_t *val = rt ? json_object_get(rt, "val") : NULL;
		if (!val || (!bare_column(&p, val) && mentions_masked(&p, val)) || !text_output(&p, val))
			return false;
	}
	return !mentions_masked(&p, json_object_get(b, "whereClause")) &&
	       !mentions_masked(&p, json_object_get(b, "sortClause")) && !sorts_by_target(&p, json_object_get(b, "sortClause")) &&
	       !mentions_masked(&p, json_object_get(b, "limitCount")) && !mentions_masked(&p, json_object_get(b, "limitOffset"));
}

/* The parse tree of sql as JSON; NULL when it does not parse. */
static json_t *parse_tree(const char *sql)
{
	PgQueryParseResult pr;
	char err[200];
	if (!sql_parse_json(sql, &pr, err, sizeof err))
		return NULL;
	json_t *root = pr.error ? NULL : json_loads(pr.parse_tree, 0, NULL);
	pg_query_free_parse_result(pr);
	return root;
}

/* Every column of the relation is masked by some rule. */
static bool all_masked(const MaskRelation *r)
{
	for (int i = 0; i < r->ncols; i++)
		if (r->cols[i].rule < 0)
			return false;
	return true;
}

static Seek at_view_mention(json_t *n, const void *arg)
{
	if (json_object_get(n, "SubLink") || json_object_get(n, "SelectStmt"))
		return SEEK_FOUND;
	return at_target_ref(n, arg);
}

/*
 * Whether the rules that name columns of view v mask everything its definition takes from
 * a masked column: each output column that is, or is computed from, a masked column (or the
 * whole row) of its one base relation must itself be masked. A definition of another shape
 * (joins, subqueries, set operations, CTEs), or a view over another view built on masked
 * relations (viewdef NULL), passes only if every column of v is masked.
 */
bool mask_view_covered(const MaskCatalog *c, const MaskRelation *v, const char *viewdef)
{
	if (all_masked(v))
		return true;
	if (!viewdef)
		return false; /* a view over another view built on masked relations */
	json_t *root = parse_tree(viewdef);
	bool ok = false;
	json_t *stmts = json_object_get(root, "stmts");
	json_t *b = json_object_get(json_object_get(json_array_get(stmts, 0), "stmt"), "SelectStmt");
	json_t *from = json_object_get(b, "fromClause");
	json_t *rv = json_object_get(json_array_get(from, 0), "RangeVar");
	json_t *targets = json_object_get(b, "targetList");
	const char *op = str_of(b, "op");
	const char *name = rv ? str_of(rv, "relname") : NULL;
	const MaskRelation *base = name ? mask_catalog_resolve(c, str_of(rv, "schemaname"), name) : NULL;
	if (json_array_size(stmts) == 1 && op && strcmp(op, "SETOP_NONE") == 0 && !json_object_get(b, "withClause") &&
	    json_array_size(from) == 1 && base && base != v && !base->derived && json_array_size(targets) == (size_t)v->ncols) {
		json_t *alias = json_object_get(rv, "alias");
		RelRef ref = {base, alias && str_of(alias, "aliasname") ? str_of(alias, "aliasname") : name};
		ok = !json_object_get(alias, "colnames");
		size_t i;
		json_t *t;
		json_array_foreach(targets, i, t)
		{
			json_t *val = json_object_get(json_object_get(t, "ResTarget"), "val");
			if (v->cols[i].rule < 0 && (!val || tree_any(val, at_view_mention, &ref)))
				ok = false;
		}
	}
	json_decref(root);
	return ok;
}

/* Where a parse tree names masked relations: the RangeVars' locations. */
typedef struct {
	size_t *at;
	int n;
} Spots;

static void spots_add(Spots *s, size_t at)
{
	s->at = xrealloc(s->at, (size_t)(s->n + 1) * sizeof *s->at);
	s->at[s->n++] = at;
}

static void masked_spots(const MaskCatalog *c, json_t *n, Spots *s)
{
	if (json_is_array(n)) {
		size_t i;
		json_t *v;
		json_array_foreach(n, i, v) masked_spots(c, v, s);
		return;
	}
	if (!json_is_object(n))
		return;
	const char *name = str_of(n, "relname");
	json_t *loc = json_object_get(n, "location");
	if (name && json_is_integer(loc) && mask_catalog_resolve(c, str_of(n, "schemaname"), name))
		spots_add(s, (size_t)json_integer_value(loc));
	const char *k;
	json_t *v;
	json_object_foreach(n, k, v) masked_spots(c, v, s);
}

static int size_cmp(const void *a, const void *b)
{
	size_t x = *(const size_t *)a, y = *(const size_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * The rewritten text, parsed again, must name masked relations exactly where the rewrite
 * meant to: each replaced name's own subquery, and every other name where it moved to. A
 * name anywhere else was text the first parse read as a literal or a comment; one missing
 * means a masking subquery did not land. Either way the statement is refused.
 */
static bool lands_as_meant(const Rw *w, const Spots *before, const char *t, const size_t *gen_at)
{
	Spots want = {0}, got = {0};
	for (int i = 0; i < before->n; i++) {
		size_t at = before->at[i];
		long shift = 0;
		bool replaced = false;
		for (int e = 0; e < w->nedits; e++) {
			if (at >= w->edits[e].start && at < w->edits[e].end)
				replaced = true;
			else if (w->edits[e].end <= at)
				shift += (long)strlen(w->edits[e].text) - (long)(w->edits[e].end - w->edits[e].start);
		}
		if (!replaced)
			spots_add(&want, (size_t)((long)at + shift));
	}
	for (int e = 0; e < w->nedits; e++)
		spots_add(&want, gen_at[e]);
	json_t *root = parse_tree(t);
	if (root)
		masked_spots(w->c, json_object_get(root, "stmts"), &got);
	json_decref(root);
	bool ok = root && got.n == want.n;
	if (ok) {
		qsort(want.at, (size_t)want.n, sizeof *want.at, size_cmp);
		qsort(got.at, (size_t)got.n, sizeof *got.at, size_cmp);
		for (int i = 0; i < want.n && ok; i++)
			ok = want.at[i] == got.at[i];
	}
	free(want.at);
	free(got.at);
	return ok;
}

static int edit_cmp(const void *a, const void *b)
{
	const Edit *x = a, *y = b;
	return x->start < y->start ? -1 : x->start > y->start;
}

RewriteResult mask_rewrite(const MaskCatalog *c, const RewriteOptions *o, const char *sql, char **out, char *reason,
			   size_t reasonlen)
{
	*out = NULL;
	Rw w = {.c = c, .o = o, .sql = sql, .sqllen = strlen(sql), .reason = reason, .reasonlen = reasonlen};
	reason[0] = 0;
	PgQueryParseResult pr;
	if (!sql_parse_json(sql, &pr, reason, reasonlen))
		return REWRITE_REFUSE;
	if (pr.error) {
		pg_query_free_parse_result(pr);
		return REWRITE_PASS; /* the server rejects it too, without reading anything */
	}
	json_t *root = json_loads(pr.parse_tree, 0, NULL);
	pg_query_free_parse_result(pr);
	if (!root) {
		snprintf(reason, reasonlen, "the statement could not be analysed for masking");
		return REWRITE_REFUSE;
	}
	collect_ctes(&w, root);
	for (int i = 0; i < w.nctes && !w.refused; i++) {
		for (int k = 0; k < c->nrels; k++)
			if (strcmp(c->rels[k].name, w.ctes[i]) == 0)
				refuse(&w, "a CTE may not be named like the masked relation %s", w.ctes[i]);
	}
	walk(&w, json_object_get(root, "stmts"), CTX_OTHER);
	bool plain = !w.refused && w.nedits && o->rows_in_gateway && plain_select(&w, root);
	Spots before = {0};
	if (!w.refused && !plain && w.nedits)
		masked_spots(c, json_object_get(root, "stmts"), &before);
	json_decref(root);
	size_t *gen_at = NULL;
	RewriteResult res = REWRITE_PASS;
	if (w.refused) {
		res = REWRITE_REFUSE;
	} else if (plain) {
		res = REWRITE_ROWS;
	} else if (w.nedits) {
		qsort(w.edits, (size_t)w.nedits, sizeof *w.edits, edit_cmp);
		size_t cap = w.sqllen + 1, len = 0, at = 0;
		for (int i = 0; i < w.nedits; i++)
			cap += strlen(w.edits[i].text);
		char *t = xmalloc(cap);
		gen_at = xcalloc((size_t)w.nedits, sizeof *gen_at);
		for (int i = 0; i < w.nedits; i++) {
			if (w.edits[i].start < at) {
				free(t);
				snprintf(reason, reasonlen, "overlapping relation names; cannot mask");
				res = REWRITE_REFUSE;
				goto done;
			}
			memcpy(t + len, sql + at, w.edits[i].start - at);
			len += w.edits[i].start - at;
			gen_at[i] = len + w.edits[i].gen;
			size_t el = strlen(w.edits[i].text);
			memcpy(t + len, w.edits[i].text, el);
			len += el;
			at = w.edits[i].end;
		}
		memcpy(t + len, sql + at, w.sqllen - at);
		len += w.sqllen - at;
		t[len] = 0;
		if (!lands_as_meant(&w, &before, t, gen_at)) {
			free(t);
			snprintf(reason, reasonlen, "the statement's text does not read as its parse tree; cannot mask");
			res = REWRITE_REFUSE;
			goto done;
		}
		*out = t;
		res = REWRITE_DONE;
	}
done:
	free(before.at);
	free(gen_at);
	free(w.toks);
	for (int i = 0; i < w.nedits; i++)
		free(w.edits[i].text);
	free(w.edits);
	for (int i = 0; i < w.nctes; i++)
		free(w.ctes[i]);
	free(w.ctes);
	return res;
}

/* ---- which statements name a masked relation ---- */

/* A RangeVar: wrapped ({"RangeVar": {...}}) in lists, bare in typed fields (InsertStmt.relation). */
static Seek masked_range_var(json_t *obj, const void *arg)
{
	const char *name = str_of(obj, "relname");
	if (!name)
		return SEEK_DESCEND;
	return mask_catalog_resolve(arg, str_of(obj, "schemaname"), name) ? SEEK_FOUND : SEEK_SKIP;
}

bool mask_names_masked(const MaskCatalog *c, const char *sql)
{
	json_t *root = parse_tree(sql);
	if (!root)
		return true; /* cannot tell: count it in */
	bool found = tree_any(json_object_get(root, "stmts"), masked_range_var, c);
	json_decref(root);
	return found;
}
