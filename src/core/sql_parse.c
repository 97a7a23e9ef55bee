/* libpg_query's JSON parse, on a stack deep enough for any tree the text can make. */
#include "core/sql_parse.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

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
	pthread_attr_t attr;
	pthread_t thread;
	int rc = pthread_attr_init(&attr);
	if (rc == 0) {
		rc = pthread_attr_setstacksize(&attr, STACK_BASE + len * STACK_PER_BYTE);
		if (rc == 0)
			rc = pthread_create(&thread, &attr, parse_main, &job);
		pthread_attr_destroy(&attr);
	}
	if (rc != 0) {
		snprintf(err, errlen, "no thread for the parse of a %zu-byte statement: %s", len, strerror(rc));
		return false;
	}
	pthread_join(thread, NULL);
	*out = job.result;
	return true;
}
