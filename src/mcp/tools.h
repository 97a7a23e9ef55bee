/*
 * The MCP tools: query, list_tables, describe_table. Each runs as an ordinary client of the
 * gateway's own PostgreSQL listener (libpq, one session kept open between calls), so the
 * agent's identity, policies, approvals, masking and the audit apply exactly as they do to
 * psql: there is no second enforcement path.
 */
#ifndef PGC_MCP_TOOLS_H
#define PGC_MCP_TOOLS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef struct McpDb McpDb;

typedef struct McpLimits {
	long max_rows;	  /* rows returned per call; the rest are not fetched */
	size_t max_bytes; /* bytes of row values returned per call */
} McpLimits;

/*
 * Asked while a statement runs, whenever the caller's own input (fd) is readable. CANCEL
 * when the call should stop (the client cancelled it or went away): the statement is then
 * cancelled through the gateway. STOP_WATCHING when the caller cannot take more input
 * for now.
 */
typedef enum McpWatch { MCP_GO_ON, MCP_STOP_WATCHING, MCP_CANCEL } McpWatch;
typedef McpWatch (*McpInterrupt)(void *arg);

/* conninfo: libpq keywords or a URI, without a password (libpq takes it from PGPASSWORD). */
McpDb *mcp_db_new(const char *conninfo, McpLimits limits);
void mcp_db_free(McpDb *db);
/* Where the interrupt callback's input comes from: fd, or -1 for none. */
void mcp_db_watch(McpDb *db, int fd, McpInterrupt cb, void *arg);

/* The tools' descriptions for tools/list (a new reference). */
json_t *mcp_tools_list(void);

/*
 * Runs tool name with arguments (an object, or NULL). Returns an MCP CallToolResult (a new
 * reference); a failure of the tool (bad arguments, a refused statement, no connection) is
 * a result with isError true, as the protocol asks. NULL when no tool has that name.
 */
json_t *mcp_tools_call(McpDb *db, const char *name, json_t *arguments);

#endif
