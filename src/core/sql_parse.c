/* libpg_query's JSON parse, on a stack deep enough for any tree the text can make. */
#include "core/sql_parse.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "core/util.h"

/*
 * Stack per byte of text: the deepest trees take two bytes of text a level ("+1") and 128
 * bytes of stack a level (measured on x86_64 for +, *, ||, ->, COLLATE, AT TIME ZONE and
 * JOIN chains; casts, IS NULL and UNION take less), so 64 a byte; twice that, for frames
 * not measured. Nesting by parentheses is bounded by the grammar's own stack (about
 * 10,000 levels, then "memory exhausted").
 */
#define STACK_PER_BYTE 128
#define STACK_BASE (1024 * 1024)

typedef struct {
	const char *sql;
	PgQueryParseResult result;
} ParseJob;

static void *parse_main(void *arg)
{
	ParseJob *job = arg;
	job->result = pg_query_parse(job->sql);
	return NULL; /* libpg_query frees this thread's memory context as it exits */
}

bool sql_parse_json(const char *sql, PgQueryParseResult *out, char *err, size_t errlen)
{
	size_t len = strlen(sql);
	if (len <= SQL_PARSE_INLINE_MAX) {
		*out = pg_query_parse(sql);
		return true;
	}
	ParseJob job = {.sql = sql};
	pthread_t thread;
	int rc = util_thread_start(&thread, STACK_BASE + len * STACK_PER_BYTE, false, parse_main, &job);
	if (rc != 0) {
		snprintf(err, errlen, "no thread for the parse of a %zu-byte statement: %s", len, strerror(rc));
		return false;
	}
	pthread_join(thread, NULL);
	*out = job.result;
	return true;
}
