/*
 * The Model Context Protocol server: JSON-RPC 2.0 messages in, responses out, independent
 * of the transport. Requests: initialize, ping, tools/list, tools/call; notifications are
 * taken and not answered. Every malformed message gets the JSON-RPC error it deserves, and
 * the server goes on.
 */
#ifndef PGC_MCP_SERVER_H
#define PGC_MCP_SERVER_H

#include <stdbool.h>
#include <stddef.h>

#include "mcp/tools.h"

/* The largest message taken; a longer one is answered with a parse error and skipped. */
#define MCP_MAX_MESSAGE (4u << 20)

/*
 * Called with the JSON text of a request's id before the request is carried out (it stays
 * valid until mcp_handle returns); false drops the request unanswered (it was cancelled).
 */
typedef bool (*McpStarts)(void *arg, const char *id);

/*
 * Handles one message (a line of the stdio transport, without its newline). Returns the
 * response to send as a NUL-terminated line without a newline (the caller frees it), or
 * NULL when there is nothing to answer (a notification, a response, a dropped request).
 * starts may be NULL.
 */
char *mcp_handle(McpDb *db, const char *msg, size_t len, McpStarts starts, void *arg);

/* The parse error for a message longer than MCP_MAX_MESSAGE (the caller frees it). */
char *mcp_too_long(void);

/*
 * A look at a message that arrives while a call runs (one parse): a ping's response, to
 * send at once; or NULL, with *cancelled_id the JSON text of the request id that a
 * notifications/cancelled names (else NULL; the caller frees both).
 */
char *mcp_peek(const char *msg, size_t len, char **cancelled_id);

#endif
