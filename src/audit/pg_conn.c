/* Connections to the gateway's own PostgreSQL databases, with timeouts. */
#include "audit/pg_conn.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

PGconn *pg_conn_open(const char *url, const char *application_name)
{
	/* Defaults first: the URL, expanded last, wins for whatever it sets itself. */
	const char *const keys[] = {"connect_timeout", "keepalives_idle",  "keepalives_interval", "keepalives_count",
				    "tcp_user_timeout", "application_name", "dbname",              NULL};
	const char *const values[] = {"10", "10", "5", "3", "30000", application_name, url, NULL};
	return PQconnectdbParams(keys, values, 1);
}

void pg_conn_first_line(const char *message, char *out, size_t len)
{
	snprintf(out, len, "%.*s", (int)strcspn(message, "\n"), message);
}

PgWait pg_conn_wait(PGconn *c, int silence_ms, char *why, size_t whylen)
{
	for (;;) {
		int unsent = PQflush(c);
		if (unsent < 0)
			break;
		if (!unsent && !PQisBusy(c))
			return PG_WAIT_READY;
		/* Reading too while sending: a server blocked on its own sends would never take ours. */
		struct pollfd p = {.fd = PQsocket(c), .events = POLLIN | (unsent ? POLLOUT : 0)};
		if (p.fd < 0)
			break;
		int ready = poll(&p, 1, silence_ms ? silence_ms : -1);
		if (ready == 0) {
			snprintf(why, whylen, "no answer within %d ms", silence_ms);
			return PG_WAIT_SILENT;
		}
		if (ready < 0 && errno != EINTR) {
			snprintf(why, whylen, "%s", strerror(errno));
			return PG_WAIT_FAILED;
		}
		if (ready > 0 && ((p.revents & POLLNVAL) || ((p.revents & (POLLIN | POLLERR | POLLHUP)) && !PQconsumeInput(c))))
			break;
	}
	pg_conn_first_line(PQerrorMessage(c), why, whylen);
	return PG_WAIT_FAILED;
}

PGresult *pg_conn_exec(PGconn *c, const char *sql, int n, const char *const *params, int silence_ms, char *why,
		       size_t whylen)
{
	if (!PQsendQueryParams(c, sql, n, NULL, params, NULL, NULL, 0)) {
		pg_conn_first_line(PQerrorMessage(c), why, whylen);
		return NULL;
	}
	PGresult *last = NULL;
	for (;;) {
		if (pg_conn_wait(c, silence_ms, why, whylen) != PG_WAIT_READY) {
			PQclear(last);
			return NULL;
		}
		PGresult *r = PQgetResult(c);
		if (!r)
			return last;
		PQclear(last);
		last = r;
	}
}
