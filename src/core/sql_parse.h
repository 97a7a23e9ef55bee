/*
 * libpg_query's JSON parse, safe from deep trees. Its writer of the JSON recurses about
 * 128 bytes of stack per level of the tree, and a chain like 1+1+1... nests one level per
 * two bytes of text: a 130 KB statement overflowed a worker's 8 MiB stack and killed the
 * gateway. A long text is therefore parsed on a thread of its own whose stack fits the
 * deepest tree the text can make; a short one on the caller's.
 */
#ifndef PGC_SQL_PARSE_H
#define PGC_SQL_PARSE_H

#include <pg_query.h>
#include <stdbool.h>
#include <stddef.h>

/* Texts up to this many bytes are parsed on the caller's stack (at most 1 MiB of it). */
#define SQL_PARSE_INLINE_MAX (8 * 1024)

/*
 * pg_query_parse(sql). false: the parse could not be run (no thread or memory for its
 * stack; err says so) and *out is untouched. true: *out is libpg_query's result, error
 * included, for the caller to free with pg_query_free_parse_result.
 */
bool sql_parse_json(const char *sql, PgQueryParseResult *out, char *err, size_t errlen)
	__attribute__((warn_unused_result));

#endif
