/*
 * Connections to the gateway's own PostgreSQL databases: the audit store and the approvals
 * store. A server that stops answering, or a lock someone holds on their tables, must not
 * hold a gateway thread for minutes: the connections get timeouts, as defaults that the
 * URL's own parameters override.
 */
#ifndef PGC_AUDIT_PG_CONN_H
#define PGC_AUDIT_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * Connects to url (a postgresql:// URL) with connect_timeout 10 s, TCP keepalives and
 * tcp_user_timeout 30 s, shown as application_name; the caller checks PQstatus.
 */
PGconn *pg_conn_open(const char *url, const char *application_name);
/*
 * The query that makes a lock wait fail after 5 s, unless the server, the role or the URL
 * set a lock_timeout. Run it after each connect (a reset loses it).
 */
#define PG_CONN_LIMIT_LOCK_WAIT \
	"SELECT set_config('lock_timeout', '5s', false) WHERE current_setting('lock_timeout') = '0'"

/* The first line of a libpq message (they end in a newline, and may go on with a detail). */
void pg_conn_first_line(const char *message, char *out, size_t len);

typedef enum {
	PG_WAIT_READY,  /* the next result can be read without blocking */
	PG_WAIT_SILENT, /* nothing came for silence_ms while an answer was owed */
	PG_WAIT_FAILED, /* the connection failed */
} PgWait;
/*
 * For a connection in nonblocking mode with a command sent: sends what is buffered, and
 * waits until the next result can be read without blocking. A server that stops answering
 * (stopped, or a network that drops packets without a reset) keeps a connection up that
 * neither keepalives nor lock_timeout fail: silence_ms (0: no limit) bounds it. A slow
 * server that goes on answering is not cut off. Unless ready, why says what happened.
 */
PgWait pg_conn_wait(PGconn *c, int silence_ms, char *why, size_t whylen);
/*
 * Runs sql with its text params on a nonblocking connection, waiting as pg_conn_wait does,
 * and returns its last result (the caller checks its status). NULL, with why: no answer, or
 * the connection failed; the caller drops the connection (a command may be under way on it).
 */
PGresult *pg_conn_exec(PGconn *c, const char *sql, int n, const char *const *params, int silence_ms, char *why,
		       size_t whylen);

#endif
