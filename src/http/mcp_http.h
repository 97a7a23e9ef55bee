/*
 * MCP over HTTP (the Streamable HTTP transport, answered with JSON): POST /mcp on the admin
 * listener, with admin.mcp set. Each MCP session is a client of the gateway's own
 * PostgreSQL listener (mcp/tools.h) that logs in as the caller, with the caller's own
 * credential: the same single enforcement path as `pgcordon mcp` and psql. A session is
 * bound to the credential that opened it; its id (Mcp-Session-Id) is useless with another.
 */
#ifndef PGC_HTTP_MCP_HTTP_H
#define PGC_HTTP_MCP_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "config/config.h"

#define MCP_SESSIONS_MAX 64  /* open at once; past it, idle ones are closed first */
#define MCP_CALLS_MAX 16     /* calls running at once: the admin API keeps threads of its own */
#define MCP_SESSION_ID_LEN 33 /* 32 hex digits and a NUL */

typedef struct {
	unsigned status;                 /* HTTP status */
	char *body;                      /* JSON text (malloc'd), or NULL for none */
	char session_id[MCP_SESSION_ID_LEN]; /* set: send it as Mcp-Session-Id */
} McpHttpAnswer;

/*
 * One POSTed message from the identity `user`, authenticated with `credential`.
 * session: the Mcp-Session-Id header (NULL when absent); database: the ?database= argument.
 * May take as long as the statement it runs (a held one waits for its approval).
 */
void mcp_http_post(const Config *c, const char *user, const char *credential, const char *session,
		   const char *database, const char *body, size_t len, McpHttpAnswer *out);

/* DELETE /mcp: ends the session (a call under way is cancelled). Returns the HTTP status. */
unsigned mcp_http_delete(const char *credential, const char *session);

/* Cancels the calls under way (the admin listener is stopping: none may hold it up). */
void mcp_http_cancel_all(void);
/* Closes every session (the admin listener has stopped). */
void mcp_http_stop(void);

#endif
