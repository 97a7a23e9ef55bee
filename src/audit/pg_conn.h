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

/*
 * Connects to url (a postgresql:// URL) with connect_timeout 10 s, TCP keepalives and
 * tcp_user_timeout 30 s, shown as application_name; the caller checks PQstatus.
 */
PGconn *pg_conn_open(const char *url, const char *application_name);
/*
 * Makes a lock wait fail after 5 s, unless the server, the role or the URL set a
 * lock_timeout. Call after each connect (a reset loses it); false: see PQerrorMessage.
 * PG_CONN_LIMIT_LOCK_WAIT is its query, for a connection in nonblocking use.
 */
#define PG_CONN_LIMIT_LOCK_WAIT \
	"SELECT set_config('lock_timeout', '5s', false) WHERE current_setting('lock_timeout') = '0'"
bool pg_conn_limit_lock_wait(PGconn *c);

#endif
