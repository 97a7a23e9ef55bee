/*
 * Policies: which configured policies apply to an identity, merged into one effective
 * policy (blocks add up, the smallest limit wins, read_only wins, table scopes unite),
 * and the decision for a statement's facts. Pure functions over config and facts.
 * See docs/policies.md.
 */
#ifndef PGC_POLICY_H
#define PGC_POLICY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "policy/inspect.h"

typedef struct {
	const char *item;   /* kind, function, or table pattern */
	const char *policy; /* which policy contributed it */
} PolicyRule;

typedef struct {
	PolicyRule *items;
	int n;
} RuleList;

typedef struct EffectivePolicy {
	uint64_t id;        /* unique per computation: keys decision memos */
	int matched;        /* how many policies matched */
	const char *role;   /* the database role the session runs as: it may not leave it */
	bool allow_all;     /* no policy matched and default: allow (or no policies at all) */
	bool deny_all;      /* no policy matched and default: deny */
	bool unrestricted;  /* policies matched but none restricts anything: skip inspection */
	char names[256];    /* matched policy names, comma-separated, for logs */
	const char *read_only_by;
	RuleList block_kinds;
	RuleList block_functions;
	const char *delete_without_where_by;
	const char *update_without_where_by;
	RuleList select_without_where;
	bool scoped;
	RuleList scope;     /* union of tables patterns */
	char scope_by[128];
	int64_t max_rows;
	const char *max_rows_by;
	int timeout_ms;
	const char *timeout_by;
	/* Masking: the rules of every matched policy, in config order (they point into the config). */
	const MaskRule **mask;
	int nmask;
	bool masks_columns;   /* some rule names columns or types: statements are rewritten */
	unsigned detect;      /* DETECT_* of every detect rule */
	bool mask_predicate_block; /* on_masked_predicate: block (the default) */
	char mask_by[128];
	/* Review (docs/approvals.md): what is held for a human's approval. */
	RuleList review_kinds;
	RuleList review_tables;
	int64_t estimated_rows_over;
	const char *estimated_rows_by;
	int64_t returned_rows_over;
	const char *returned_rows_by;
	/* Active grants: tables they add to the scope; .policy is the grant's id. */
	RuleList grant_reads;   /* read access (write grants are in both lists) */
	RuleList grant_writes;
	char **owned;           /* strings the grant rules point to */
	int nowned;
} EffectivePolicy;

/* Merges every policy of c matching the identity and database. Caller frees. */
EffectivePolicy *policy_effective(const Config *c, const char *user, char *const *groups, int ngroups,
				  const char *database);
void policy_free(EffectivePolicy *ep);

/* The role for an identity: the first roles: entry (in config order) naming one of its groups. */
const char *policy_role_for(const Config *c, char *const *groups, int ngroups);
/* Pins the session to role: SET ROLE, RESET ROLE, SET SESSION AUTHORIZATION are refused. */
void policy_set_role(EffectivePolicy *ep, const char *role);
/* Widens a table scope with an active grant's table pattern (copied), for reading or writing. */
void policy_add_grant(EffectivePolicy *ep, const char *grant_id, const char *pattern, bool write);

/* DEC_REVIEW: allowed, but held until a human approves it (docs/approvals.md). */
typedef enum { DEC_ALLOW, DEC_BLOCK, DEC_REVIEW } DecisionKind;

typedef struct {
	DecisionKind kind;
	const char *sqlstate;
	const char *policy;  /* policy behind a refusal or a hold, or "" */
	const char *rule;    /* short rule id for logs: "statements", "read_only", "scope", ... */
	char message[320];
	char why[128];       /* a hold's detail: the kind or table that triggered it */
	const char *grant;   /* allowed only thanks to this grant (its id), or NULL */
	char approval[17];   /* allowed by this approval request (its id), or "" */
	/* Allowed, unless the planner estimates more rows than this (0: no such rule). */
	int64_t estimate_over;
	const char *estimate_by;
} Decision;

/* Looks up the facts of a prepared statement (SQL PREPARE) by name; NULL if unknown. */
typedef const QueryFacts *(*PreparedLookup)(void *arg, const char *name);

/* Decides a whole query string: every statement must pass. */
void policy_decide(const EffectivePolicy *ep, const QueryFacts *q, PreparedLookup lookup, void *arg,
		   Decision *out);

/*
 * Checks the client's startup parameters against the policy: settings that would widen
 * access (role, session_authorization, search_path under a scope, read-only and
 * statement_timeout overrides) are refused. Returns false with a message.
 */
bool policy_check_startup(const EffectivePolicy *ep, const char *const *names, const char *const *values,
			  int n, char *err, size_t errlen);

/* True when relation name (as written) is inside the effective scope. */
bool policy_in_scope(const EffectivePolicy *ep, const char *relation);

#endif
