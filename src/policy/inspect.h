/*
 * Statement inspection: SQL text → facts, with the real PostgreSQL 15 grammar
 * (libpg_query). Pure: no sockets, no policy, no logging. The facts are what the
 * statement says, not what the catalog makes of it: relation names are kept as written
 * (after the parser's case folding), so resolution against a search_path is the
 * policy layer's job.
 */
#ifndef PGC_INSPECT_H
#define PGC_INSPECT_H

#include <stdbool.h>
#include <stdint.h>

#define TIMEOUT_NOT_SET (-2)   /* the statement does not touch statement_timeout */
#define TIMEOUT_UNKNOWN (-1)   /* it does, with a value we cannot read (fail closed) */

typedef struct {
	char **items;
	int n;
	int cap;
} StrSet; /* small, ordered by first appearance, no duplicates */

typedef struct {
	/* Statement kinds, e.g. "select", "delete", "drop_table", "copy_to", "copy_to_program",
	 * "set_role", "do_block"; nested statements (writable CTEs, EXPLAIN ANALYZE,
	 * PREPARE ... AS) add theirs. The first is the top-level kind. */
	StrSet kinds;
	StrSet reads;     /* relations read: "rel", "schema.rel" or "db.schema.rel" */
	StrSet writes;    /* relations written or altered (DML targets, DDL objects) */
	StrSet functions; /* functions called, qualified as written: "pg_read_file", "pg_catalog.now" */
	StrSet unfiltered_reads; /* relations read whole: a SELECT without a WHERE that looks at a
				  * column, or COPY table TO */
	bool delete_without_where;
	bool update_without_where;
	bool has_limit;       /* the statement's own LIMIT n (or that of the query EXPLAIN,
			       * PREPARE, DECLARE or COPY wraps); LIMIT ALL is no limit */
	int64_t timeout_ms;  /* new statement_timeout this statement sets, or TIMEOUT_* */
	char *prepare_name;  /* PREPARE name AS ... */
	char *execute_name;  /* EXECUTE name */
} StatementFacts;

typedef struct {
	StatementFacts *stmts;
	int nstmts;
	char *error;          /* parse error (the parser's message), NULL when parsed */
	const char *error_sqlstate; /* when not the grammar but the inspection refused the text:
				     * 54001 nests too deeply, 53000 no thread for its parse; else NULL */
	int error_pos;        /* 1-based cursor position of the error, 0 if none */
	uint64_t fingerprint; /* libpg_query fingerprint of the whole text (0 on error) */
} QueryFacts;

/* Never returns NULL; a parse failure is reported in ->error. */
QueryFacts *inspect_sql(const char *sql);
void inspect_free(QueryFacts *q);

bool strset_has(const StrSet *s, const char *item);
/* Whether kind is a statement kind inspect_sql can report (for validating policies). */
bool inspect_known_kind(const char *kind);
/* Whether a client_encoding name is one in which the server and the gateway's parser may
 * read a string literal's end differently (SJIS, BIG5, GBK, ... under any alias). */
bool inspect_encoding_unsafe(const char *name);

#endif
