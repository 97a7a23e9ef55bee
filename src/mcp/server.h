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
 * Handles one message (a line of the stdio transport, without its newline). Returns the
 * response to send as a NUL-terminated line without a newline (the caller frees it), or
 * NULL when there is nothing to answer (a notification, or a response).
 */
char *mcp_handle(McpDb *db, const char *msg, size_t len);

/* The parse error for a message longer than MCP_MAX_MESSAGE (the caller frees it). */
char *mcp_too_long(void);

/* The JSON text of msg's id when it is a request, else NULL (the caller frees it). */
char *mcp_request_id(const char *msg, size_t len);

/*
 * When msg is a notifications/cancelled, the JSON text of the request id it names, else
 * NULL (the caller frees it).
 */
char *mcp_cancelled_id(const char *msg, size_t len);

/* When msg is a well-formed ping, its response, else NULL: pings are answered even while a call runs. */
char *mcp_ping_reply(const char *msg, size_t len);

#endif
