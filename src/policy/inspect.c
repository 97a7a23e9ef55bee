/* Statement inspection: walks libpg_query's parse tree (JSON) and collects facts. */
#include "policy/inspect.h"

#include <ctype.h>
#include <jansson.h>
#include <math.h>
#include <pg_query.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/sql_parse.h"
#include "core/util.h"

/* ---- small string sets ---- */

bool strset_has(const StrSet *s, const char *item)
{
	for (int i = 0; i < s->n; i++)
		if (strcmp(s->items[i], item) == 0)
			return true;
	return false;
}

static void strset_add(StrSet *s, const char *item)
{
	if (!item || strset_has(s, item))
		return;
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 4;
		s->items = xrealloc(s->items, (size_t)s->cap * sizeof *s->items);
	}
	s->items[s->n++] = xstrdup(item);
}

static void strset_free(StrSet *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->items[i]);
	free(s->items);
	memset(s, 0, sizeof *s);
}

/* ---- walking ---- */

typedef struct {
	StatementFacts *f;
	/* CTE names visible at this point of the walk (a stack). */
	const char *ctes[64];
	int nctes;
	bool cte_overflow;
	int depth; /* statements entered: 1 while in the top-level one */
	const char *default_schema; /* inside CREATE SCHEMA s ...: where unqualified objects go */
} Walk;

static void walk(Walk *w, json_t *node, const char *parent_type, const char *key);
static bool is_statement_type(const char *type);

static const char *str_of(json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);
	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* The text of a String node: {"String": {"sval": "x"}} (PG15) or {"String": {"str": "x"}}. */
static const char *string_node(json_t *n)
{
	json_t *s = json_object_get(n, "String");
	if (!s)
		return NULL;
	const char *v = str_of(s, "sval");
	return v ? v : str_of(s, "str");
}

/* Joins a list of String nodes with dots ("pg_catalog.pg_read_file"). */
static void dotted_name(json_t *list, char *out, size_t outlen)
{
	size_t o = 0;
	out[0] = 0;
	size_t i;
	json_t *item;
	json_array_foreach(list, i, item)
	{
		const char *part = string_node(item);
		if (!part)
			continue;
		int n = snprintf(out + o, outlen - o, "%s%s", o ? "." : "", part);
		if (n < 0 || (size_t)n >= outlen - o)
			break;
		o += (size_t)n;
	}
}

static bool is_cte(Walk *w, const char *name)
{
	for (int i = w->nctes - 1; i >= 0; i--)
		if (strcmp(w->ctes[i], name) == 0)
			return true;
	return false;
}

static void relation_name(json_t *rv, char *out, size_t outlen)
{
	const char *cat = str_of(rv, "catalogname");
	const char *schema = str_of(rv, "schemaname");
	const char *rel = str_of(rv, "relname");
	if (cat && schema)
		snprintf(out, outlen, "%s.%s.%s", cat, schema, rel);
	else if (schema)
		snprintf(out, outlen, "%s.%s", schema, rel);
	else
		snprintf(out, outlen, "%s", rel);
}

/* Statement types whose "relation"/"relations" field is a target they change. */
static bool writes_its_relation(const char *type)
{
	static const char *const readers[] = {"SelectStmt",      "CopyStmt",       "ExplainStmt",
					      "RangeSubselect",  "JoinExpr",       "VacuumRelation",
					      "RangeTableSample", "TableLikeClause", NULL};
	if (!type)
		return false;
	for (const char *const *r = readers; *r; r++)
		if (strcmp(type, *r) == 0)
			return false;
	return true;
}

/* Is a RangeVar under this field a relation the statement creates or changes? */
static bool target_field(const char *parent_type, const char *key)
{
	if (!key)
		return false;
	/* IntoClause.rel, ViewStmt.view, CreateSeqStmt.sequence, CreatePolicyStmt.table,
	 * PartitionCmd.name (ATTACH/DETACH PARTITION). */
	if (strcmp(key, "rel") == 0 || strcmp(key, "view") == 0 || strcmp(key, "sequence") == 0 ||
	    strcmp(key, "table") == 0 || strcmp(key, "name") == 0)
		return true;
	return (strcmp(key, "relation") == 0 || strcmp(key, "relations") == 0) && writes_its_relation(parent_type);
}

static void add_relation(Walk *w, json_t *rv, bool write)
{
	const char *rel = str_of(rv, "relname");
	if (!rel)
		return;
	/* A WITH query, not a table; but what a statement writes is always a table. */
	if (!write && !str_of(rv, "schemaname") && is_cte(w, rel))
		return;
	char name[256];
	if (w->default_schema && !str_of(rv, "schemaname"))
		snprintf(name, sizeof name, "%s.%s", w->default_schema, rel);
	else
		relation_name(rv, name, sizeof name);
	strset_add(write ? &w->f->writes : &w->f->reads, name);
}

/* Does an expression look at any column? "WHERE true" and "WHERE 1=1" do not. */
static bool mentions_column(json_t *n)
{
	if (json_is_object(n)) {
		if (json_object_get(n, "ColumnRef") || json_object_get(n, "CurrentOfExpr"))
			return true; /* WHERE CURRENT OF touches exactly one row */
		const char *k;
		json_t *v;
		json_object_foreach(n, k, v)
		{
			if (mentions_column(v))
				return true;
		}
	} else if (json_is_array(n)) {
		size_t i;
		json_t *v;
		json_array_foreach(n, i, v)
		{
			if (mentions_column(v))
				return true;
		}
	}
	return false;
}

/* Relations named directly in a FROM list (tables and joins, not subqueries). */
static void direct_from_relations(Walk *w, json_t *n, StrSet *out)
{
	if (json_is_array(n)) {
		size_t i;
		json_t *v;
		json_array_foreach(n, i, v) direct_from_relations(w, v, out);
		return;
	}
	json_t *rv = json_object_get(n, "RangeVar");
	if (rv) {
		const char *rel = str_of(rv, "relname");
		if (rel && (str_of(rv, "schemaname") || !is_cte(w, rel))) {
			char name[256];
			relation_name(rv, name, sizeof name);
			strset_add(out, name);
		}
		return;
	}
	json_t *ts = json_object_get(n, "RangeTableSample");
	if (ts) {
		json_t *rel = json_object_get(ts, "relation");
		if (rel)
			direct_from_relations(w, rel, out);
		return;
	}
	json_t *j = json_object_get(n, "JoinExpr");
	if (j) {
		direct_from_relations(w, json_object_get(j, "larg"), out);
		direct_from_relations(w, json_object_get(j, "rarg"), out);
	}
}

static void add_kind(Walk *w, const char *kind) { strset_add(&w->f->kinds, kind); }

/* "CreateTrigStmt" → "create_trig"; the fallback name of a statement kind. */
static void snake_kind(const char *type, char *out, size_t outlen)
{
	size_t o = 0;
	size_t len = strlen(type);
	if (len > 4 && strcmp(type + len - 4, "Stmt") == 0)
		len -= 4;
	for (size_t i = 0; i < len && o + 2 < outlen; i++) {
		if (isupper((unsigned char)type[i])) {
			if (i > 0)
				out[o++] = '_';
			out[o++] = (char)tolower((unsigned char)type[i]);
		} else {
			out[o++] = type[i];
		}
	}
	out[o] = 0;
}

/*
 * The client encodings in which a multibyte character can end in a quote or a backslash
 * byte (PostgreSQL's client-only encodings, under every name it accepts, compared as it
 * does: letters and digits only, any case). The gateway's parser reads UTF-8: under one of
 * these the server would read a string literal's end where the gateway does not.
 */
bool inspect_encoding_unsafe(const char *name)
{
	static const char *const unsafe[] = {
		"big5", "cp932", "cp936", "cp949", "cp950", "gb18030", "gbk", "johab", "mskanji",
		"shiftjis", "shiftjis2004", "sjis", "uhc", "win932", "win936", "win949", "win950",
		"windows932", "windows936", "windows949", "windows950", NULL,
	};
	char clean[64];
	size_t o = 0;
	for (const char *p = name; *p && o < sizeof clean - 1; p++)
		if (isalnum((unsigned char)*p))
			clean[o++] = (char)tolower((unsigned char)*p);
	clean[o] = 0;
	for (const char *const *u = unsafe; *u; u++)
		if (strcmp(clean, *u) == 0)
			return true;
	return false;
}

/* A client_encoding value (an A_Const, or NULL for none given) the gateway cannot vouch for. */
static bool encoding_value_unsafe(json_t *value)
{
	json_t *c = value ? json_object_get(value, "A_Const") : NULL;
	json_t *sv = c ? json_object_get(c, "sval") : NULL;
	const char *name = sv ? str_of(sv, "sval") : NULL;
	return !name || inspect_encoding_unsafe(name);
}

/* Kinds for setting a run-time parameter by name (SET, RESET, set_config); value NULL: a reset. */
static void setting_kinds(Walk *w, const char *name, json_t *value, bool reset)
{
	if (!name) {
		/* Unknown target: assume the worst. */
		add_kind(w, "set_role");
		add_kind(w, "set_session_authorization");
		add_kind(w, "set_search_path");
		add_kind(w, "set_read_only");
		add_kind(w, "set_statement_timeout");
		add_kind(w, "set_client_encoding");
		add_kind(w, "set_unsafe_encoding");
		add_kind(w, "set_standard_conforming_strings");
		return;
	}
	char lower[128];
	size_t i;
	for (i = 0; name[i] && i < sizeof lower - 1; i++)
		lower[i] = (char)tolower((unsigned char)name[i]);
	lower[i] = 0;
	if (strcmp(lower, "role") == 0)
		add_kind(w, "set_role");
	else if (strcmp(lower, "session_authorization") == 0)
		add_kind(w, "set_session_authorization");
	else if (strcmp(lower, "search_path") == 0)
		add_kind(w, "set_search_path");
	else if (strcmp(lower, "statement_timeout") == 0)
		add_kind(w, "set_statement_timeout");
	else if (strcmp(lower, "default_transaction_read_only") == 0 || strcmp(lower, "transaction_read_only") == 0)
		add_kind(w, "set_read_only");
	else if (strcmp(lower, "client_encoding") == 0 || strcmp(lower, "names") == 0) {
		add_kind(w, "set_client_encoding");
		if (!reset && encoding_value_unsafe(value))
			add_kind(w, "set_unsafe_encoding");
	} else if (strcmp(lower, "standard_conforming_strings") == 0)
		add_kind(w, "set_standard_conforming_strings");
}

/* Reads an A_Const as milliseconds for statement_timeout (integer ms, or "5s", "100ms", "1min"). */
static int64_t timeout_value(json_t *aconst)
{
	json_t *c = json_object_get(aconst, "A_Const");
	if (!c)
		return TIMEOUT_UNKNOWN;
	json_t *iv = json_object_get(c, "ival");
	if (iv) {
		json_t *v = json_object_get(iv, "ival");
		return v ? (int64_t)json_integer_value(v) : 0; /* an empty ival object is 0 */
	}
	json_t *sv = json_object_get(c, "sval");
	const char *s = sv ? str_of(sv, "sval") : NULL;
	if (!s)
		return TIMEOUT_UNKNOWN;
	char *end;
	double v = strtod(s, &end);
	if (end == s || !isfinite(v) || v < 0) /* 'nan' and 'inf' too: PostgreSQL refuses them, this fails closed */
		return TIMEOUT_UNKNOWN;
	while (*end == ' ')
		end++;
	double mult;
	if (!*end || strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "min") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else if (strcmp(end, "d") == 0)
		mult = 86400000;
	else if (strcmp(end, "us") == 0)
		mult = 0.001;
	else
		return TIMEOUT_UNKNOWN;
	double ms = v * mult;
	return ms < 0x1p62 ? (int64_t)ms : TIMEOUT_UNKNOWN; /* beyond int64, converting is undefined */
}

static void on_variable_set(Walk *w, json_t *n)
{
	const char *kind = str_of(n, "kind");
	const char *name = str_of(n, "name");
	add_kind(w, "set");
	if (kind && strcmp(kind, "VAR_RESET_ALL") == 0) {
		/* RESET ALL leaves role alone (GUC_NO_RESET_ALL) but resets the rest to session defaults. */
		add_kind(w, "reset_all");
		add_kind(w, "set_search_path");
		add_kind(w, "set_read_only");
		add_kind(w, "set_client_encoding");
		return;
	}
	if (name && (strcmp(name, "TRANSACTION") == 0 || strcmp(name, "SESSION CHARACTERISTICS") == 0 ||
		     strcmp(name, "TRANSACTION SNAPSHOT") == 0)) {
		json_t *args = json_object_get(n, "args");
		size_t i;
		json_t *a;
		json_array_foreach(args, i, a)
		{
			json_t *de = json_object_get(a, "DefElem");
			const char *dn = de ? str_of(de, "defname") : NULL;
			if (dn && strcmp(dn, "transaction_read_only") == 0)
				add_kind(w, "set_read_only");
		}
		return;
	}
	bool reset = kind && (strcmp(kind, "VAR_RESET") == 0 || strcmp(kind, "VAR_SET_DEFAULT") == 0);
	json_t *args = json_object_get(n, "args");
	setting_kinds(w, name, json_array_size(args) == 1 ? json_array_get(args, 0) : NULL, reset);
	if (kind && strcmp(kind, "VAR_RESET") == 0 && name && strcasecmp(name, "role") == 0)
		add_kind(w, "reset_role");
	if (name && strcasecmp(name, "statement_timeout") == 0) {
		if (kind && (strcmp(kind, "VAR_RESET") == 0 || strcmp(kind, "VAR_SET_DEFAULT") == 0)) {
			w->f->timeout_ms = TIMEOUT_NOT_SET; /* back to the session default, which the gateway set */
		} else {
			w->f->timeout_ms = json_array_size(args) == 1 ? timeout_value(json_array_get(args, 0))
								      : TIMEOUT_UNKNOWN;
		}
	}
}

static void on_func_call(Walk *w, json_t *n)
{
	char name[256];
	dotted_name(json_object_get(n, "funcname"), name, sizeof name);
	if (!name[0])
		return;
	strset_add(&w->f->functions, name);
	const char *bare = strrchr(name, '.');
	bare = bare ? bare + 1 : name;
	if (strcmp(bare, "set_config") == 0) {
		json_t *args = json_object_get(n, "args");
		json_t *first = json_array_get(args, 0);
		json_t *c = first ? json_object_get(first, "A_Const") : NULL;
		json_t *sv = c ? json_object_get(c, "sval") : NULL;
		const char *setting = sv ? str_of(sv, "sval") : NULL;
		add_kind(w, "set");
		setting_kinds(w, setting, json_array_get(args, 1), false);
		if (!setting || strcasecmp(setting, "statement_timeout") == 0)
			w->f->timeout_ms = json_array_size(args) >= 2 ? timeout_value(json_array_get(args, 1))
								      : TIMEOUT_UNKNOWN;
	}
}

static const char *drop_kind(const char *remove_type)
{
	static const struct {
		const char *type, *kind;
	} map[] = {
		{"OBJECT_TABLE", "drop_table"},       {"OBJECT_VIEW", "drop_view"},
		{"OBJECT_MATVIEW", "drop_materialized_view"}, {"OBJECT_INDEX", "drop_index"},
		{"OBJECT_SEQUENCE", "drop_sequence"}, {"OBJECT_SCHEMA", "drop_schema"},
		{"OBJECT_FUNCTION", "drop_function"}, {"OBJECT_PROCEDURE", "drop_procedure"},
		{"OBJECT_FOREIGN_TABLE", "drop_foreign_table"}, {"OBJECT_TYPE", "drop_type"},
		{"OBJECT_EXTENSION", "drop_extension"}, {"OBJECT_TRIGGER", "drop_trigger"},
	};
	for (size_t i = 0; remove_type && i < sizeof map / sizeof map[0]; i++)
		if (strcmp(map[i].type, remove_type) == 0)
			return map[i].kind;
	return "drop";
}

/* DROP TRIGGER/POLICY/RULE name ON table: the object is [schema.]table.name. */
static bool drop_names_table_member(const char *remove_type)
{
	return remove_type && (strcmp(remove_type, "OBJECT_TRIGGER") == 0 || strcmp(remove_type, "OBJECT_POLICY") == 0 ||
			       strcmp(remove_type, "OBJECT_RULE") == 0);
}

/* Relation-like objects of DROP are lists of String nodes, not RangeVars. */
static bool drop_names_relations(const char *remove_type)
{
	return remove_type && (strcmp(remove_type, "OBJECT_TABLE") == 0 || strcmp(remove_type, "OBJECT_VIEW") == 0 ||
			       strcmp(remove_type, "OBJECT_MATVIEW") == 0 || strcmp(remove_type, "OBJECT_INDEX") == 0 ||
			       strcmp(remove_type, "OBJECT_SEQUENCE") == 0 ||
			       strcmp(remove_type, "OBJECT_FOREIGN_TABLE") == 0);
}

static bool defelem_true(json_t *options, const char *name)
{
	size_t i;
	json_t *o;
	json_array_foreach(options, i, o)
	{
		json_t *de = json_object_get(o, "DefElem");
		const char *dn = de ? str_of(de, "defname") : NULL;
		if (!dn || strcmp(dn, name) != 0)
			continue;
		json_t *arg = json_object_get(de, "arg");
		if (!arg)
			return true;
		/* "analyze false" / "analyze off" / "analyze 0" */
		const char *sv = string_node(arg);
		json_t *c = json_object_get(arg, "A_Const");
		if (sv)
			return strcmp(sv, "false") != 0 && strcmp(sv, "off") != 0;
		if (c) {
			json_t *b = json_object_get(c, "boolval");
			if (b)
				return json_is_true(json_object_get(b, "boolval"));
			json_t *iv = json_object_get(c, "ival");
			if (iv)
				return json_integer_value(json_object_get(iv, "ival")) != 0;
			json_t *s = json_object_get(c, "sval");
			const char *t = s ? str_of(s, "sval") : NULL;
			return !t || (strcmp(t, "false") != 0 && strcmp(t, "off") != 0);
		}
		return true;
	}
	return false;
}

/* Sets kinds for a typed statement node and handles its special fields. */
/* LIMIT n on the statement itself (LIMIT ALL is a null constant: no limit). */
static bool limits_rows(json_t *select)
{
	json_t *lc = json_object_get(select, "limitCount");
	if (!lc)
		return false;
	json_t *c = json_object_get(lc, "A_Const");
	return !(c && json_is_true(json_object_get(c, "isnull")));
}

static void on_statement(Walk *w, const char *type, json_t *n, const char *parent_type)
{
	char kind[64];
	if (strcmp(type, "SelectStmt") == 0) {
		add_kind(w, "select");
		if (json_object_get(n, "lockingClause"))
			add_kind(w, "select_for_update");
		/* The statement's own LIMIT, or that of the query EXPLAIN/PREPARE/DECLARE/COPY wraps. */
		bool outer = w->depth == 1 ||
			     (w->depth == 2 && parent_type &&
			      (strcmp(parent_type, "ExplainStmt") == 0 || strcmp(parent_type, "PrepareStmt") == 0 ||
			       strcmp(parent_type, "DeclareCursorStmt") == 0 || strcmp(parent_type, "CopyStmt") == 0));
		if (outer && limits_rows(n))
			w->f->has_limit = true;
		if (json_object_get(n, "intoClause")) {
			add_kind(w, "select_into");
			add_kind(w, "create_table");
		}
		json_t *from = json_object_get(n, "fromClause");
		json_t *where = json_object_get(n, "whereClause");
		if (from && (!where || !mentions_column(where)))
			direct_from_relations(w, from, &w->f->unfiltered_reads);
		return;
	}
	if (strcmp(type, "InsertStmt") == 0) {
		add_kind(w, "insert");
		json_t *oc = json_object_get(n, "onConflictClause");
		const char *action = oc ? str_of(oc, "action") : NULL;
		if (action && strcmp(action, "ONCONFLICT_UPDATE") == 0)
			add_kind(w, "update"); /* INSERT ... ON CONFLICT DO UPDATE updates rows */
		return;
	}
	if (strcmp(type, "UpdateStmt") == 0) {
		add_kind(w, "update");
		json_t *where = json_object_get(n, "whereClause");
		if (!where || !mentions_column(where))
			w->f->update_without_where = true;
		return;
	}
	if (strcmp(type, "DeleteStmt") == 0) {
		add_kind(w, "delete");
		json_t *where = json_object_get(n, "whereClause");
		if (!where || !mentions_column(where))
			w->f->delete_without_where = true;
		return;
	}
	if (strcmp(type, "MergeStmt") == 0) {
		add_kind(w, "merge");
		/* each WHEN clause is the statement it runs: a rule on delete holds for MERGE too */
		json_t *on = json_object_get(n, "joinCondition");
		bool unfiltered = !on || !mentions_column(on);
		size_t i;
		json_t *wc;
		json_array_foreach(json_object_get(n, "mergeWhenClauses"), i, wc)
		{
			const char *cmd = str_of(json_object_get(wc, "MergeWhenClause"), "commandType");
			if (!cmd)
				continue;
			if (strcmp(cmd, "CMD_DELETE") == 0) {
				add_kind(w, "delete");
				w->f->delete_without_where |= unfiltered;
			} else if (strcmp(cmd, "CMD_UPDATE") == 0) {
				add_kind(w, "update");
				w->f->update_without_where |= unfiltered;
			} else if (strcmp(cmd, "CMD_INSERT") == 0) {
				add_kind(w, "insert");
			}
		}
		return;
	}
	if (strcmp(type, "DefineStmt") == 0) {
		/* CREATE AGGREGATE/OPERATOR/TYPE/COLLATION/TEXT SEARCH ...: named by what it makes */
		add_kind(w, "define");
		static const struct {
			const char *object, *kind;
		} made[] = {
			{"OBJECT_AGGREGATE", "create_aggregate"}, {"OBJECT_OPERATOR", "create_operator"},
			{"OBJECT_TYPE", "create_type"},           {"OBJECT_TSPARSER", "create_ts_parser"},
			{"OBJECT_TSTEMPLATE", "create_ts_template"},
		};
		const char *object = str_of(n, "kind");
		for (size_t i = 0; object && i < sizeof made / sizeof made[0]; i++)
			if (strcmp(object, made[i].object) == 0)
				add_kind(w, made[i].kind);
		return;
	}
	if (strcmp(type, "DropOwnedStmt") == 0) {
		/* DROP OWNED drops every table the role owns */
		add_kind(w, "drop_owned");
		add_kind(w, "drop_table");
		return;
	}
	if (strcmp(type, "DropStmt") == 0) {
		const char *rt = str_of(n, "removeType");
		add_kind(w, drop_kind(rt));
		/* DROP SCHEMA ... CASCADE drops the tables in it: a rule on drop_table holds for it */
		const char *behavior = str_of(n, "behavior");
		if (rt && strcmp(rt, "OBJECT_SCHEMA") == 0 && behavior && strcmp(behavior, "DROP_CASCADE") == 0)
			add_kind(w, "drop_table");
		if (drop_names_relations(rt) || drop_names_table_member(rt)) {
			size_t i;
			json_t *obj;
			json_array_foreach(json_object_get(n, "objects"), i, obj)
			{
				json_t *list = json_object_get(obj, "List");
				char name[256];
				dotted_name(list ? json_object_get(list, "items") : NULL, name, sizeof name);
				if (drop_names_table_member(rt)) {
					char *dot = strrchr(name, '.'); /* drop the trigger/policy name */
					if (dot)
						*dot = 0;
					else
						name[0] = 0;
				}
				if (name[0])
					strset_add(&w->f->writes, name);
			}
		}
		return;
	}
	if (strcmp(type, "DropdbStmt") == 0) {
		add_kind(w, "drop_database");
		return;
	}
	if (strcmp(type, "CopyStmt") == 0) {
		bool from = json_is_true(json_object_get(n, "is_from"));
		add_kind(w, from ? "copy_from" : "copy_to");
		if (json_is_true(json_object_get(n, "is_program")))
			add_kind(w, from ? "copy_from_program" : "copy_to_program");
		else if (str_of(n, "filename"))
			add_kind(w, from ? "copy_from_file" : "copy_to_file");
		json_t *rel = json_object_get(n, "relation");
		if (rel) {
			add_relation(w, rel, from);
			if (!from) {
				/* COPY table TO is the whole table: a SELECT without WHERE. */
				char name[256];
				relation_name(rel, name, sizeof name);
				strset_add(&w->f->unfiltered_reads, name);
			}
		}
		return;
	}
	if (strcmp(type, "CreateFunctionStmt") == 0) {
		add_kind(w, json_is_true(json_object_get(n, "is_procedure")) ? "create_procedure" : "create_function");
		return;
	}
	if (strcmp(type, "DoStmt") == 0) {
		add_kind(w, "do_block");
		return;
	}
	if (strcmp(type, "VariableSetStmt") == 0) {
		/* In CREATE/ALTER FUNCTION ... SET x = y the setting applies only inside the function. */
		if (!parent_type || strcmp(parent_type, "DefElem") != 0)
			on_variable_set(w, n);
		return;
	}
	if (strcmp(type, "VariableShowStmt") == 0) {
		add_kind(w, "show");
		return;
	}
	if (strcmp(type, "TransactionStmt") == 0) {
		add_kind(w, "transaction");
		json_t *opts = json_object_get(n, "options");
		size_t i;
		json_t *o;
		json_array_foreach(opts, i, o)
		{
			json_t *de = json_object_get(o, "DefElem");
			const char *dn = de ? str_of(de, "defname") : NULL;
			if (dn && strcmp(dn, "transaction_read_only") == 0)
				add_kind(w, "set_read_only");
		}
		return;
	}
	if (strcmp(type, "ExplainStmt") == 0) {
		/* EXPLAIN ANALYZE runs the statement; plain EXPLAIN is judged as if it did (fail closed). */
		add_kind(w, defelem_true(json_object_get(n, "options"), "analyze") ? "explain_analyze" : "explain");
		return;
	}
	if (strcmp(type, "PrepareStmt") == 0) {
		add_kind(w, "prepare");
		const char *name = str_of(n, "name");
		if (name && !w->f->prepare_name)
			w->f->prepare_name = xstrdup(name);
		return;
	}
	if (strcmp(type, "ExecuteStmt") == 0) {
		add_kind(w, "execute");
		const char *name = str_of(n, "name");
		if (name && !w->f->execute_name)
			w->f->execute_name = xstrdup(name);
		return;
	}
	if (strcmp(type, "DeallocateStmt") == 0) {
		add_kind(w, "deallocate");
		return;
	}
	if (strcmp(type, "DeclareCursorStmt") == 0) {
		add_kind(w, "declare_cursor");
		return;
	}
	if (strcmp(type, "ClosePortalStmt") == 0) {
		add_kind(w, "close_cursor");
		return;
	}
	if (strcmp(type, "CreateStmt") == 0) {
		add_kind(w, "create_table");
		return;
	}
	if (strcmp(type, "CreateTableAsStmt") == 0) {
		const char *objtype = str_of(n, "objtype");
		add_kind(w, objtype && strcmp(objtype, "OBJECT_MATVIEW") == 0 ? "create_materialized_view"
									      : "create_table_as");
		add_kind(w, "create_table");
		return;
	}
	if (strcmp(type, "ViewStmt") == 0) {
		add_kind(w, "create_view");
		return;
	}
	if (strcmp(type, "DiscardStmt") == 0) {
		/* DISCARD ALL includes SET SESSION AUTHORIZATION DEFAULT and RESET ALL. */
		add_kind(w, "discard");
		const char *target = str_of(n, "target");
		if (target && strcmp(target, "DISCARD_ALL") == 0) {
			add_kind(w, "set_session_authorization");
			add_kind(w, "reset_all");
			add_kind(w, "set_search_path");
			add_kind(w, "set_read_only");
			add_kind(w, "set_client_encoding");
		}
		return;
	}
	if (strcmp(type, "CallStmt") == 0) {
		add_kind(w, "call");
		json_t *fc = json_object_get(n, "funccall"); /* a typed field: not wrapped */
		if (fc)
			on_func_call(w, fc);
		return;
	}
	if (strcmp(type, "IndexStmt") == 0) {
		add_kind(w, "create_index");
		return;
	}
	snake_kind(type, kind, sizeof kind);
	add_kind(w, kind);
}

static bool is_statement_type(const char *type)
{
	size_t len = strlen(type);
	return len > 4 && strcmp(type + len - 4, "Stmt") == 0;
}

/*
 * The fields of one node. type is the node's type when it came wrapped ({"SelectStmt": ...}),
 * or the enclosing node's type for structs embedded in a typed field (IntoClause, WithClause).
 * CTE names of this node's WITH are visible in all of its fields, itself included.
 */
static bool push_cte(Walk *w, json_t *cte)
{
	json_t *c = json_object_get(cte, "CommonTableExpr");
	const char *name = c ? str_of(c, "ctename") : NULL;
	if (!name)
		return false;
	if (w->nctes >= (int)(sizeof w->ctes / sizeof w->ctes[0])) {
		w->cte_overflow = true;
		return false;
	}
	w->ctes[w->nctes++] = name;
	return true;
}

/*
 * A WITH clause: without RECURSIVE each query sees only the ones before it (and not
 * itself); with RECURSIVE it sees all of them. Returns how many names it left pushed for
 * the rest of the statement (all of them).
 */
static int walk_with(Walk *w, json_t *with, const char *type)
{
	json_t *ctes = json_object_get(with, "ctes");
	bool recursive = json_is_true(json_object_get(with, "recursive"));
	int pushed = 0;
	size_t i;
	json_t *cte;
	if (recursive) {
		json_array_foreach(ctes, i, cte) pushed += push_cte(w, cte);
		walk(w, ctes, type, "ctes");
		return pushed;
	}
	json_array_foreach(ctes, i, cte)
	{
		walk(w, cte, type, "ctes");
		pushed += push_cte(w, cte);
	}
	return pushed;
}

/*
 * The fields of one node. type is the node's type when it came wrapped ({"SelectStmt": ...}),
 * or the enclosing node's type for structs embedded in a typed field (IntoClause, WithClause).
 */
static void walk_fields(Walk *w, json_t *obj, const char *type, bool wrapped, const char *parent_type)
{
	bool statement = wrapped && is_statement_type(type);
	json_t *with = json_object_get(obj, "withClause");
	if (statement)
		w->depth++;
	if (wrapped && strcmp(type, "FuncCall") == 0) {
		on_func_call(w, obj);
	} else if (statement) {
		/* The statement's own FROM sees all of its WITH names. */
		int visible = 0;
		size_t i;
		json_t *cte;
		json_array_foreach(with ? json_object_get(with, "ctes") : NULL, i, cte) visible += push_cte(w, cte);
		on_statement(w, type, obj, parent_type);
		w->nctes -= visible;
	}
	int pushed = 0;
	if (with)
		pushed = walk_with(w, with, type);
	const char *saved_schema = w->default_schema;
	if (statement && strcmp(type, "CreateSchemaStmt") == 0)
		w->default_schema = str_of(obj, "schemaname");
	const char *k;
	json_t *v;
	json_object_foreach(obj, k, v)
	{
		if (v == with)
			continue;
		if (json_is_object(v) || json_is_array(v))
			walk(w, v, type, k);
	}
	w->default_schema = saved_schema;
	w->nctes -= pushed;
	if (statement)
		w->depth--;
}

static void walk(Walk *w, json_t *node, const char *parent_type, const char *key)
{
	if (json_is_array(node)) {
		size_t i;
		json_t *v;
		json_array_foreach(node, i, v) walk(w, v, parent_type, key);
		return;
	}
	if (!json_is_object(node))
		return;
	/* A bare RangeVar: a typed field such as InsertStmt.relation or IntoClause.rel. */
	if (json_object_get(node, "relname")) {
		if (parent_type && strcmp(parent_type, "CopyStmt") == 0)
			return; /* on_statement knows whether COPY reads or writes it */
		add_relation(w, node, target_field(parent_type, key));
		return;
	}
	/* A wrapped node: one key, the node type, which starts with a capital letter. */
	if (json_object_size(node) == 1) {
		const char *k = json_object_iter_key(json_object_iter(node));
		json_t *v = json_object_iter_value(json_object_iter(node));
		if (isupper((unsigned char)k[0]) && json_is_object(v)) {
			if (strcmp(k, "RangeVar") == 0)
				add_relation(w, v, target_field(parent_type, key));
			else
				walk_fields(w, v, k, true, parent_type);
			return;
		}
	}
	/* The arms of UNION/INTERSECT/EXCEPT are SelectStmt-typed fields, so not wrapped. */
	if (key && parent_type && strcmp(parent_type, "SelectStmt") == 0 &&
	    (strcmp(key, "larg") == 0 || strcmp(key, "rarg") == 0)) {
		walk_fields(w, node, "SelectStmt", true, parent_type);
		return;
	}
	walk_fields(w, node, parent_type, false, parent_type);
}

/* Node-typed fields ({"query": {"SelectStmt": ...}}) are wrapped in libpg_query's JSON;
 * fields with a concrete type (RangeVar *relation, FuncCall *funccall) are not. */

QueryFacts *inspect_sql(const char *sql)
{
	QueryFacts *q = xcalloc(1, sizeof *q);
	PgQueryParseResult r;
	char err[200];
	if (!sql_parse_json(sql, &r, err, sizeof err)) {
		q->error = xstrdup(err);
		q->error_sqlstate = "53000"; /* insufficient_resources */
		return q;
	}
	if (r.error) {
		q->error = xstrdup(r.error->message ? r.error->message : "syntax error");
		q->error_pos = r.error->cursorpos;
		pg_query_free_parse_result(r);
		return q;
	}
	json_error_t jerr;
	json_t *root = json_loads(r.parse_tree, 0, &jerr);
	pg_query_free_parse_result(r);
	if (!root) {
		if (json_error_code(&jerr) == json_error_stack_overflow) { /* jansson stops at 2,048 levels */
			q->error = xstrdup("the statement nests too deeply to inspect");
			q->error_sqlstate = "54001"; /* statement_too_complex */
		} else {
			q->error = xstrdup("cannot read the parse tree");
		}
		return q;
	}
	json_t *stmts = json_object_get(root, "stmts");
	size_t n = json_array_size(stmts);
	q->stmts = xcalloc(n ? n : 1, sizeof *q->stmts);
	for (size_t i = 0; i < n; i++) {
		StatementFacts *f = &q->stmts[q->nstmts++];
		f->timeout_ms = TIMEOUT_NOT_SET;
		Walk w = {.f = f};
		walk(&w, json_object_get(json_array_get(stmts, i), "stmt"), NULL, NULL);
		if (w.cte_overflow) {
			/* Too deep to tell CTEs from tables: refuse rather than guess. */
			free(q->error);
			q->error = xstrdup("statement nests too many WITH queries to inspect");
		}
	}
	json_decref(root);
	if (!q->error) {
		PgQueryFingerprintResult fp = pg_query_fingerprint(sql);
		if (!fp.error)
			q->fingerprint = fp.fingerprint;
		pg_query_free_fingerprint_result(fp);
	}
	return q;
}

/* Every kind inspect_sql can report: the explicit ones above and the generic names of
 * PostgreSQL 15's statement nodes. Policies naming anything else are config errors. */
static const char *const known_kinds[] = {
	"select", "select_for_update", "select_into", "create_table", "insert", "update", "delete",
	"merge", "drop", "drop_table", "drop_view", "drop_materialized_view", "drop_index",
	"drop_sequence", "drop_schema", "drop_function", "drop_procedure", "drop_foreign_table",
	"drop_type", "drop_extension", "drop_trigger", "drop_database", "copy_to", "copy_from",
	"copy_to_program", "copy_from_program", "copy_to_file", "copy_from_file", "create_function",
	"create_procedure", "do_block", "set", "set_role", "reset_role", "set_session_authorization",
	"set_search_path", "set_statement_timeout", "set_read_only", "set_client_encoding", "reset_all", "show", "transaction",
	"explain", "explain_analyze", "prepare", "execute", "deallocate", "declare_cursor",
	"close_cursor", "create_table_as", "create_materialized_view", "create_view", "discard", "call",
	"create_index", "alter_table", "alter_domain", "grant", "grant_role", "alter_default_privileges",
	"close_portal", "cluster", "copy", "create", "define", "truncate", "comment", "fetch", "index",
	"alter_function", "do", "rename", "rule", "notify", "listen", "unlisten", "view", "load",
	"create_domain", "createdb", "dropdb", "vacuum", "create_seq", "alter_seq", "variable_set",
	"variable_show", "create_trig", "create_p_lang", "create_role", "alter_role", "drop_role", "lock",
	"constraints_set", "reindex", "check_point", "create_schema", "alter_database",
	"alter_database_refresh_coll", "alter_database_set", "alter_role_set", "create_conversion",
	"create_cast", "create_op_class", "create_op_family", "alter_op_family", "create_table_space",
	"drop_table_space", "alter_object_depends", "alter_object_schema", "alter_owner",
	"alter_operator", "alter_type", "drop_owned", "set_unsafe_encoding", "set_standard_conforming_strings",
	"create_aggregate", "create_operator", "create_type", "create_ts_parser", "create_ts_template",
	"reassign_owned", "composite_type", "create_enum",
	"create_range", "alter_enum", "alter_t_s_dictionary", "alter_t_s_configuration", "create_fdw",
	"alter_fdw", "create_foreign_server", "alter_foreign_server", "create_user_mapping",
	"alter_user_mapping", "drop_user_mapping", "alter_table_space_options", "alter_table_move_all",
	"sec_label", "create_foreign_table", "import_foreign_schema", "create_extension",
	"alter_extension", "alter_extension_contents", "create_event_trig", "alter_event_trig",
	"refresh_mat_view", "replica_identity", "alter_system", "create_policy", "alter_policy",
	"create_transform", "create_am", "create_publication", "alter_publication", "create_subscription",
	"alter_subscription", "drop_subscription", "create_stats", "alter_collation", "alter_stats", NULL,
};

bool inspect_known_kind(const char *kind)
{
	for (const char *const *k = known_kinds; *k; k++)
		if (strcmp(*k, kind) == 0)
			return true;
	return false;
}

void inspect_free(QueryFacts *q)
{
	if (!q)
		return;
	for (int i = 0; i < q->nstmts; i++) {
		StatementFacts *f = &q->stmts[i];
		strset_free(&f->kinds);
		strset_free(&f->reads);
		strset_free(&f->writes);
		strset_free(&f->functions);
		strset_free(&f->unfiltered_reads);
		free(f->prepare_name);
		free(f->execute_name);
	}
	free(q->stmts);
	free(q->error);
	free(q);
}
