/* Effective policies and decisions over statement facts. */
#include "policy/policy.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/util.h"

static uint64_t next_policy_id; /* atomic */

/* Functions that read data named by a string argument: a table scope cannot see inside. */
static const char *const scope_escaping_functions[] = {
	"query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "table_to_xml",
	"table_to_xmlschema", "table_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
	"schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
	"database_to_xmlschema", "database_to_xml_and_xmlschema", "ts_stat", "dblink", "dblink_exec",
	"dblink_open", "dblink_fetch", "dblink_send_query", "pg_read_file", "pg_read_binary_file",
	"pg_ls_dir", "pg_stat_file", "lo_import", "lo_export", "lo_get", "lo_open", "loread",
	"pg_file_read", "xpath_table", "crosstab", "crosstab2", "crosstab3", "crosstab4", "connectby",
	"ts_rewrite", /* its second argument is a query */
	/* logical decoding: the changes of every table */
	"pg_logical_slot_get_changes", "pg_logical_slot_peek_changes", "pg_logical_slot_get_binary_changes",
	"pg_logical_slot_peek_binary_changes", NULL,
};

/* Statements that run SQL the inspector cannot see, now or later (in a body, on an event). */
static const char *const uninspectable_kinds[] = {
	"do_block", "create_function", "create_procedure", "alter_function", "create_trig", "rule",
	"create_event_trig", "create_p_lang", "load", NULL,
};

/*
 * Statements that bind existing functions to syntax the inspector does not see as a call:
 * an operator, an aggregate's state or final function, a cast, a type's I/O. Through
 * them a blocked or scope-escaping built-in (pg_sleep, ts_stat) runs without its name.
 */
static const char *const binding_kinds[] = {
	"create_aggregate", "create_operator", "create_type", "create_ts_parser", "create_ts_template",
	"create_cast", "create_conversion", "create_transform", "create_am", "create_op_class",
	"create_op_family", "alter_op_family", "alter_operator", "alter_type", "create_range", "create_fdw",
	"alter_fdw", NULL,
};

/* Functions that write large objects: PostgreSQL allows them in a read-only transaction. */
static const char *const large_object_writes[] = {
	"lo_create", "lo_creat", "lo_from_bytea", "lo_put", "lo_unlink", "lo_truncate", "lo_truncate64",
	"lowrite", "lo_import", "lo_export", NULL,
};

/* Statement kinds a read-only identity may run. */
static const char *const read_only_kinds[] = {
	"select", "show", "explain", "explain_analyze", "transaction", "set", "set_statement_timeout",
	"set_search_path", "prepare", "execute", "deallocate", "declare_cursor", "fetch", "close_cursor",
	"copy_to", "listen", "unlisten", NULL,
};

static bool in_list(const NameList *l, const char *s)
{
	for (int i = 0; i < l->n; i++)
		if (strcmp(l->items[i], s) == 0)
			return true;
	return false;
}

static bool matches(const Policy *p, const char *user, char *const *groups, int ngroups, const char *database)
{
	if (p->match_databases.n && !in_list(&p->match_databases, database))
		return false;
	if (p->match_all || (!p->match_users.n && !p->match_groups.n))
		return true;
	if (in_list(&p->match_users, user))
		return true;
	for (int i = 0; i < ngroups; i++)
		if (in_list(&p->match_groups, groups[i]))
			return true;
	return false;
}

static void add_rules(RuleList *l, const NameList *items, const char *policy)
{
	if (!items->n)
		return;
	l->items = xrealloc(l->items, (size_t)(l->n + items->n) * sizeof *l->items);
	for (int i = 0; i < items->n; i++)
		l->items[l->n++] = (PolicyRule){items->items[i], policy};
}

static void append_name(char *buf, size_t len, const char *name)
{
	size_t o = strlen(buf);
	snprintf(buf + o, len - o, "%s%s", o ? "," : "", name);
}

EffectivePolicy *policy_effective(const Config *c, const char *user, char *const *groups, int ngroups,
				  const char *database)
{
	EffectivePolicy *ep = xcalloc(1, sizeof *ep);
	ep->id = __atomic_add_fetch(&next_policy_id, 1, __ATOMIC_RELAXED);
	int matched = 0;
	for (int i = 0; i < c->npolicies; i++) {
		const Policy *p = &c->policies[i];
		if (!matches(p, user, groups, ngroups, database))
			continue;
		matched++;
		append_name(ep->names, sizeof ep->names, p->name);
		if (p->read_only && !ep->read_only_by)
			ep->read_only_by = p->name;
		add_rules(&ep->block_kinds, &p->block_statements, p->name);
		add_rules(&ep->block_functions, &p->block_functions, p->name);
		if (p->delete_without_where && !ep->delete_without_where_by)
			ep->delete_without_where_by = p->name;
		if (p->update_without_where && !ep->update_without_where_by)
			ep->update_without_where_by = p->name;
		add_rules(&ep->select_without_where, &p->select_without_where, p->name);
		if (p->has_tables) {
			ep->scoped = true;
			add_rules(&ep->scope, &p->tables, p->name);
			append_name(ep->scope_by, sizeof ep->scope_by, p->name);
		}
		if (p->max_rows && (!ep->max_rows || p->max_rows < ep->max_rows)) {
			ep->max_rows = p->max_rows;
			ep->max_rows_by = p->name;
		}
		if (p->statement_timeout_ms && (!ep->timeout_ms || p->statement_timeout_ms < ep->timeout_ms)) {
			ep->timeout_ms = p->statement_timeout_ms;
			ep->timeout_by = p->name;
		}
		add_rules(&ep->review_kinds, &p->review_statements, p->name);
		add_rules(&ep->review_tables, &p->review_tables, p->name);
		if (p->review_estimated_rows &&
		    (!ep->estimated_rows_over || p->review_estimated_rows < ep->estimated_rows_over)) {
			ep->estimated_rows_over = p->review_estimated_rows;
			ep->estimated_rows_by = p->name;
		}
		if (p->review_returned_rows &&
		    (!ep->returned_rows_over || p->review_returned_rows < ep->returned_rows_over)) {
			ep->returned_rows_over = p->review_returned_rows;
			ep->returned_rows_by = p->name;
		}
		if (p->nmask) {
			ep->mask = xrealloc(ep->mask, (size_t)(ep->nmask + p->nmask) * sizeof *ep->mask);
			for (int k = 0; k < p->nmask; k++) {
				const MaskRule *r = &p->mask[k];
				ep->mask[ep->nmask++] = r;
				ep->detect |= r->detect;
				ep->masks_columns |= r->ncolumns > 0 || r->ntypes > 0;
			}
			append_name(ep->mask_by, sizeof ep->mask_by, p->name);
			/* block unless every masking policy says allow */
			if (p->masked_predicate != 2)
				ep->mask_predicate_block = true;
		}
	}
	ep->matched = matched;
	if (!matched) {
		ep->allow_all = c->default_allow;
		ep->deny_all = !c->default_allow;
	}
	ep->unrestricted = ep->allow_all ||
			   (matched && !ep->read_only_by && !ep->block_kinds.n && !ep->block_functions.n &&
			    !ep->delete_without_where_by && !ep->update_without_where_by &&
			    !ep->select_without_where.n && !ep->scoped && !ep->timeout_ms && !ep->nmask &&
			    !ep->review_kinds.n && !ep->review_tables.n && !ep->estimated_rows_over &&
			    !ep->returned_rows_over);
	return ep;
}

const char *policy_role_for(const Config *c, char *const *groups, int ngroups)
{
	for (int r = 0; r < c->nroles; r++)
		for (int g = 0; g < ngroups; g++)
			if (strcmp(c->roles[r].group, groups[g]) == 0)
				return c->roles[r].role;
	return NULL;
}

void policy_set_role(EffectivePolicy *ep, const char *role)
{
	ep->role = role;
	if (role) {
		ep->allow_all = false;
		ep->unrestricted = false;
	}
}

void policy_free(EffectivePolicy *ep)
{
	if (!ep)
		return;
	free(ep->block_kinds.items);
	free(ep->block_functions.items);
	free(ep->select_without_where.items);
	free(ep->mask);
	free(ep->scope.items);
	free(ep->review_kinds.items);
	free(ep->review_tables.items);
	free(ep->grant_reads.items);
	free(ep->grant_writes.items);
	for (int i = 0; i < ep->nowned; i++)
		free(ep->owned[i]);
	free(ep->owned);
	free(ep);
}

static char *own(EffectivePolicy *ep, const char *text)
{
	ep->owned = xrealloc(ep->owned, (size_t)(ep->nowned + 1) * sizeof *ep->owned);
	return ep->owned[ep->nowned++] = xstrdup(text);
}

static void add_rule(RuleList *l, const char *item, const char *policy)
{
	l->items = xrealloc(l->items, (size_t)(l->n + 1) * sizeof *l->items);
	l->items[l->n++] = (PolicyRule){.item = item, .policy = policy};
}

void policy_add_grant(EffectivePolicy *ep, const char *grant_id, const char *pattern, bool write)
{
	const char *id = own(ep, grant_id), *pat = own(ep, pattern);
	add_rule(&ep->grant_reads, pat, id);
	if (write)
		add_rule(&ep->grant_writes, pat, id);
}

/* ---- relation names and patterns ---- */

/* Does "schema.table" match a pattern ("*", "schema.*", "schema.table", "table" = public.table)? */
static bool pattern_matches(const char *pattern, const char *schema, const char *table)
{
	if (strcmp(pattern, "*") == 0)
		return true;
	const char *dot = strchr(pattern, '.');
	if (!dot)
		return strcmp(schema, "public") == 0 && strcmp(pattern, table) == 0;
	size_t slen = (size_t)(dot - pattern);
	if (strlen(schema) != slen || strncmp(pattern, schema, slen) != 0)
		return false;
	return strcmp(dot + 1, "*") == 0 || strcmp(dot + 1, table) == 0;
}

/*
 * The schemas an as-written name may resolve to. Unqualified names are looked up with the
 * default search_path ("$user", public) behind pg_catalog, which PostgreSQL searches first;
 * catalog relation names all start with pg_. Scoped identities cannot change search_path.
 */
static int candidates(const char *relation, char schemas[2][128], const char **table)
{
	const char *last = strrchr(relation, '.');
	if (!last) {
		*table = relation;
		snprintf(schemas[0], 128, "public");
		if (strncmp(relation, "pg_", 3) == 0) {
			snprintf(schemas[1], 128, "pg_catalog");
			return 2;
		}
		return 1;
	}
	*table = last + 1;
	const char *first = relation;
	const char *mid = memchr(relation, '.', (size_t)(last - relation));
	if (mid)
		first = mid + 1; /* db.schema.table: the database part is the server's business */
	snprintf(schemas[0], 128, "%.*s", (int)(last - first), first);
	return 1;
}

static const char *rule_policy_for(const RuleList *l, const char *relation, bool all_candidates)
{
	char schemas[2][128];
	const char *table;
	int n = candidates(relation, schemas, &table);
	for (int r = 0; r < l->n; r++) {
		int hits = 0;
		for (int i = 0; i < n; i++)
			if (pattern_matches(l->items[r].item, schemas[i], table))
				hits++;
		if (all_candidates ? hits == n : hits > 0)
			return l->items[r].policy;
	}
	return NULL;
}

bool policy_in_scope(const EffectivePolicy *ep, const char *relation)
{
	if (!ep->scoped)
		return true;
	/* Every place the name may resolve to must be inside the scope (any pattern each). */
	char schemas[2][128];
	const char *table;
	int n = candidates(relation, schemas, &table);
	for (int i = 0; i < n; i++) {
		bool ok = false;
		for (int r = 0; r < ep->scope.n && !ok; r++)
			ok = pattern_matches(ep->scope.items[r].item, schemas[i], table);
		if (!ok)
			return false;
	}
	return true;
}

/* ---- decisions ---- */

static void upper_words(const char *kind, char *out, size_t len)
{
	size_t o = 0;
	for (const char *p = kind; *p && o + 1 < len; p++)
		out[o++] = *p == '_' ? ' ' : (char)toupper((unsigned char)*p);
	out[o] = 0;
}

static void block(Decision *d, const char *sqlstate, const char *policy, const char *rule, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void block(Decision *d, const char *sqlstate, const char *policy, const char *rule, const char *fmt, ...)
{
	char what[256];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	d->kind = DEC_BLOCK;
	d->sqlstate = sqlstate;
	d->policy = policy;
	d->rule = rule;
	snprintf(d->message, sizeof d->message, "pgcordon: blocked by policy %s: %s", policy, what);
}

/* Built-in wrappers that only call another function: a rule on that one holds for them. */
static const char *wrapped_function(const char *bare)
{
	if (strcmp(bare, "pg_sleep_for") == 0 || strcmp(bare, "pg_sleep_until") == 0)
		return "pg_sleep";
	return NULL;
}

static bool function_matches(const char *rule, const char *called)
{
	/* A bare rule name matches the function in any schema; a qualified one only there. */
	char lower[256];
	size_t i;
	for (i = 0; called[i] && i < sizeof lower - 1; i++)
		lower[i] = (char)tolower((unsigned char)called[i]);
	lower[i] = 0;
	char *dot = strrchr(lower, '.');
	const char *bare = dot ? dot + 1 : lower, *inner = wrapped_function(bare);
	if (strchr(rule, '.')) {
		if (strcmp(rule, lower) == 0)
			return true;
		if (!inner)
			return false;
		char qualified[300];
		snprintf(qualified, sizeof qualified, "%.*s%s", dot ? (int)(dot - lower + 1) : 0, lower, inner);
		return strcmp(rule, qualified) == 0;
	}
	return strcmp(rule, bare) == 0 || (inner && strcmp(rule, inner) == 0);
}

static bool kind_allowed_read_only(const char *kind)
{
	for (const char *const *k = read_only_kinds; *k; k++)
		if (strcmp(*k, kind) == 0)
			return true;
	return false;
}

/* The first of kinds (a NULL-ended list) the statement is, or NULL. */
static const char *first_kind_of(const StatementFacts *f, const char *const *kinds)
{
	for (const char *const *k = kinds; *k; k++)
		if (strset_has(&f->kinds, *k))
			return *k;
	return NULL;
}

static void decide_statement(const EffectivePolicy *ep, const StatementFacts *f, Decision *d)
{
	char words[96];
	if (ep->role) {
		/*
		 * The upstream session_user is the gateway's login role, and PostgreSQL lets a
		 * session SET ROLE to any role its session_user belongs to. So everything that can
		 * run SQL the inspector cannot see (DO, new functions and their SET clauses,
		 * triggers, rules) is refused too, not only SET ROLE itself.
		 */
		static const char *const escapes[] = {
			"reset_role", "set_role", "set_session_authorization", "do_block", "create_function",
			"create_procedure", "alter_function", "alter_role", "alter_role_set", "alter_database_set",
			"create_trig", "rule", "create_event_trig", "create_p_lang", "load", NULL,
		};
		for (const char *const *k = escapes; *k; k++) {
			if (strset_has(&f->kinds, *k)) {
				upper_words(*k, words, sizeof words);
				block(d, "42501", "roles", "role", "%s is not allowed: the session runs as role %s", words,
				      ep->role);
				return;
			}
		}
	}
	if (ep->read_only_by) {
		for (int i = 0; i < f->kinds.n; i++) {
			if (!kind_allowed_read_only(f->kinds.items[i])) {
				upper_words(f->kinds.items[i], words, sizeof words);
				block(d, "42501", ep->read_only_by, "read_only", "read-only access does not allow %s", words);
				return;
			}
		}
		if (f->writes.n) {
			block(d, "42501", ep->read_only_by, "read_only", "read-only access does not allow writing %s",
			      f->writes.items[0]);
			return;
		}
		for (int i = 0; i < f->functions.n; i++)
			for (const char *const *lo = large_object_writes; *lo; lo++)
				if (function_matches(*lo, f->functions.items[i])) {
					block(d, "42501", ep->read_only_by, "read_only",
					      "read-only access does not allow %s: it writes a large object",
					      f->functions.items[i]);
					return;
				}
	}
	/* The most specific kind comes last (RESET ROLE is [set, set_role, reset_role]): name it. */
	for (int k = f->kinds.n - 1; k >= 0; k--) {
		for (int r = 0; r < ep->block_kinds.n; r++) {
			if (strcmp(f->kinds.items[k], ep->block_kinds.items[r].item) == 0) {
				upper_words(f->kinds.items[k], words, sizeof words);
				block(d, "42501", ep->block_kinds.items[r].policy, "statements", "%s is not allowed", words);
				return;
			}
		}
	}
	for (int i = 0; i < f->functions.n; i++) {
		for (int r = 0; r < ep->block_functions.n; r++) {
			if (function_matches(ep->block_functions.items[r].item, f->functions.items[i])) {
				block(d, "42501", ep->block_functions.items[r].policy, "functions",
				      "function %s is not allowed", f->functions.items[i]);
				return;
			}
		}
	}
	/*
	 * The gateway reads every statement as the server does with standard_conforming_strings
	 * on and a client encoding in which no character hides a quote or a backslash. Changed,
	 * the server would end a string literal where the gateway does not, and whatever
	 * follows would run uninspected. (The session also ends if the server reports either.)
	 */
	if (strset_has(&f->kinds, "set_standard_conforming_strings")) {
		block(d, "42501", ep->names, "lexer",
		      "standard_conforming_strings cannot be changed: statements are inspected as the server reads them "
		      "with it on");
		return;
	}
	if (strset_has(&f->kinds, "set_unsafe_encoding")) {
		block(d, "42501", ep->names, "lexer",
		      "this client_encoding is not allowed: in it a character can hide a quote or a backslash from the "
		      "gateway's parser (use UTF8)");
		return;
	}
	/*
	 * A DO block or a new function, procedure, trigger or rule runs SQL the inspector never
	 * sees: it could read outside a scope, run a blocked statement, or lift the timeout.
	 * So no restricted identity may run one (explicit blocks above name themselves first).
	 * Functions that already exist are the database owner's to grant.
	 */
	const char *code = first_kind_of(f, uninspectable_kinds), *why = "the SQL it runs cannot be inspected";
	if (!code && (code = first_kind_of(f, binding_kinds)))
		why = "it makes functions run where the gateway sees no call";
	if (code) {
		upper_words(code, words, sizeof words);
		block(d, "42501", ep->names, "uninspectable", "%s is not allowed: %s", words, why);
		return;
	}
	if (f->delete_without_where && ep->delete_without_where_by) {
		block(d, "42501", ep->delete_without_where_by, "delete_without_where", "DELETE without WHERE");
		return;
	}
	if (f->update_without_where && ep->update_without_where_by) {
		block(d, "42501", ep->update_without_where_by, "update_without_where", "UPDATE without WHERE");
		return;
	}
	for (int i = 0; i < f->unfiltered_reads.n; i++) {
		const char *p = rule_policy_for(&ep->select_without_where, f->unfiltered_reads.items[i], false);
		if (p) {
			block(d, "42501", p, "select_without_where", "SELECT from %s without WHERE",
			      f->unfiltered_reads.items[i]);
			return;
		}
	}
	if (ep->scoped) {
		const StrSet *sets[] = {&f->reads, &f->writes};
		for (int s = 0; s < 2; s++) {
			for (int i = 0; i < sets[s]->n; i++) {
				if (!policy_in_scope(ep, sets[s]->items[i])) {
					/* An active grant may cover it: every resolution of the name inside it. */
					const char *g = rule_policy_for(s ? &ep->grant_writes : &ep->grant_reads,
									sets[s]->items[i], true);
					if (g) {
						d->grant = g;
						continue;
					}
					block(d, "42501", ep->scope_by, "scope", "table %s is outside the caller's scope",
					      sets[s]->items[i]);
					return;
				}
			}
		}
		for (int i = 0; i < f->functions.n; i++) {
			for (const char *const *e = scope_escaping_functions; *e; e++) {
				if (function_matches(*e, f->functions.items[i])) {
					block(d, "42501", ep->scope_by, "scope",
					      "function %s can read outside the caller's scope", f->functions.items[i]);
					return;
				}
			}
		}
		if (strset_has(&f->kinds, "set_search_path")) {
			block(d, "42501", ep->scope_by, "scope", "changing search_path is not allowed with a table scope");
			return;
		}
	}
	/* Masked relations are found by name: names must keep resolving where they did. */
	if (ep->masks_columns && strset_has(&f->kinds, "set_search_path")) {
		block(d, "42501", ep->mask_by, "mask", "changing search_path is not allowed with masking");
		return;
	}
	if (ep->timeout_ms && strset_has(&f->kinds, "set_statement_timeout") && f->timeout_ms != TIMEOUT_NOT_SET &&
	    (f->timeout_ms <= 0 || f->timeout_ms > ep->timeout_ms)) {
		block(d, "42501", ep->timeout_by, "statement_timeout", "statement_timeout may not exceed %d ms",
		      ep->timeout_ms);
		return;
	}
}

static void review(Decision *d, const char *policy, const char *rule, const char *why)
{
	d->kind = DEC_REVIEW;
	d->sqlstate = "42501";
	d->policy = policy;
	d->rule = rule;
	snprintf(d->why, sizeof d->why, "%s", why);
	snprintf(d->message, sizeof d->message, "statement held for approval (policy %s, rule %s: %s)", policy, rule,
		 why);
}

/* The review: rules, for a statement every other rule allows. */
static void review_statement(const EffectivePolicy *ep, const StatementFacts *f, Decision *d)
{
	/* PREPARE runs nothing: its EXECUTE is reviewed (and a protocol Parse at its Bind). */
	if (f->kinds.n && strcmp(f->kinds.items[0], "prepare") == 0)
		return;
	for (int k = f->kinds.n - 1; k >= 0; k--)
		for (int r = 0; r < ep->review_kinds.n; r++)
			if (strcmp(f->kinds.items[k], ep->review_kinds.items[r].item) == 0) {
				review(d, ep->review_kinds.items[r].policy, "statements", f->kinds.items[k]);
				return;
			}
	const StrSet *sets[] = {&f->reads, &f->writes};
	for (int s = 0; s < 2; s++)
		for (int i = 0; i < sets[s]->n; i++) {
			/* Any place the name may resolve to counts: holding is the safe side. */
			const char *p = rule_policy_for(&ep->review_tables, sets[s]->items[i], false);
			if (p) {
				review(d, p, "tables", sets[s]->items[i]);
				return;
			}
		}
	if (ep->estimated_rows_over && f->kinds.n && strcmp(f->kinds.items[0], "select") == 0) {
		d->estimate_over = ep->estimated_rows_over;
		d->estimate_by = ep->estimated_rows_by;
	}
}

void policy_decide(const EffectivePolicy *ep, const QueryFacts *q, PreparedLookup lookup, void *arg,
		   Decision *out)
{
	memset(out, 0, sizeof *out);
	out->kind = DEC_ALLOW;
	out->policy = "";
	out->rule = "";
	if (q->error) {
		out->kind = DEC_BLOCK;
		out->sqlstate = q->error_sqlstate ? q->error_sqlstate : "42601";
		out->rule = "parse";
		snprintf(out->message, sizeof out->message, "pgcordon: cannot %s statement: %s",
			 q->error_sqlstate ? "inspect" : "parse", q->error);
		return;
	}
	if (ep->allow_all || ep->unrestricted)
		return;
	if (ep->deny_all) {
		out->kind = DEC_BLOCK;
		out->sqlstate = "42501";
		out->rule = "no_policy";
		snprintf(out->message, sizeof out->message, "pgcordon: no policy grants this identity access");
		return;
	}
	for (int i = 0; i < q->nstmts && out->kind == DEC_ALLOW; i++) {
		decide_statement(ep, &q->stmts[i], out);
		/* EXECUTE runs what PREPARE stored: judge that too, under today's policy. */
		if (out->kind == DEC_ALLOW && q->stmts[i].execute_name && lookup) {
			const QueryFacts *prepared = lookup(arg, q->stmts[i].execute_name);
			if (prepared && prepared != q)
				policy_decide(ep, prepared, NULL, NULL, out);
		}
	}
	for (int i = 0; i < q->nstmts && out->kind == DEC_ALLOW; i++)
		review_statement(ep, &q->stmts[i], out);
}

static bool mentions(const char *text, const char *setting)
{
	/*
	 * Case-insensitive substring, with '-' and '_' alike (options accept both), and
	 * backslashes left out: PostgreSQL reads "search\_path" in options as search_path.
	 */
	char plain[1024];
	size_t o = 0;
	for (const char *p = text; *p && o < sizeof plain - 1; p++)
		if (*p != '\\')
			plain[o++] = *p;
	plain[o] = 0;
	if (o == sizeof plain - 1)
		return true; /* too long to read whole: assume the worst */
	size_t n = strlen(setting);
	for (const char *p = plain; *p; p++) {
		size_t i = 0;
		while (i < n && p[i]) {
			char a = (char)tolower((unsigned char)p[i]), b = setting[i];
			if (a == '-')
				a = '_';
			if (a != b)
				break;
			i++;
		}
		if (i == n)
			return true;
	}
	return false;
}

bool policy_check_startup(const EffectivePolicy *ep, const char *const *names, const char *const *values,
			  int n, char *err, size_t errlen)
{
	if (ep->allow_all || ep->unrestricted)
		return true;
	const char *guarded[8];
	int ng = 0;
	guarded[ng++] = "role";
	guarded[ng++] = "session_authorization";
	guarded[ng++] = "standard_conforming_strings"; /* statements are inspected as read with it on */
	if (ep->scoped || ep->masks_columns)
		guarded[ng++] = "search_path";
	if (ep->read_only_by)
		guarded[ng++] = "transaction_read_only"; /* also matches default_transaction_read_only */
	for (int i = 0; i < n; i++) {
		bool options = strcmp(names[i], "options") == 0;
		for (int g = 0; g < ng; g++) {
			bool hit = options ? mentions(values[i], guarded[g]) : mentions(names[i], guarded[g]);
			if (hit) {
				snprintf(err, errlen, "pgcordon: policy %s does not allow setting %s at connection start",
					 ep->names, guarded[g]);
				return false;
			}
		}
		/* the client_encoding parameter by itself is fine unless it is one the parser cannot follow */
		bool unsafe = options ? mentions(values[i], "client_encoding")
				      : strcmp(names[i], "client_encoding") == 0 && inspect_encoding_unsafe(values[i]);
		if (unsafe) {
			snprintf(err, errlen,
				 "pgcordon: policy %s does not allow client_encoding %s: in it a character can hide a quote "
				 "or a backslash from the gateway's parser (use UTF8)",
				 ep->names, options ? "in options" : values[i]);
			return false;
		}
	}
	return true;
}
