/* Connections to the gateway's own PostgreSQL databases, with timeouts. */
#include "audit/pg_conn.h"

PGconn *pg_conn_open(const char *url, const char *application_name)
{
	/* Defaults first: the URL, expanded last, wins for whatever it sets itself. */
	const char *const keys[] = {"connect_timeout", "keepalives_idle",  "keepalives_interval", "keepalives_count",
				    "tcp_user_timeout", "application_name", "dbname",              NULL};
	const char *const values[] = {"10", "10", "5", "3", "30000", application_name, url, NULL};
	return PQconnectdbParams(keys, values, 1);
}

bool pg_conn_limit_lock_wait(PGconn *c)
{
	PGresult *r = PQexec(c, PG_CONN_LIMIT_LOCK_WAIT);
	bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
	PQclear(r);
	return ok;
}
