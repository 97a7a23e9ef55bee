/*
 * libFuzzer target: the MCP server's JSON-RPC handling of one message (a line of stdin).
 * The tools point at a closed port, so a call fails to connect and is answered as an error.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "mcp/server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static McpDb *db;
	if (!db)
		db = mcp_db_new("host=127.0.0.1 port=1 connect_timeout=1", (McpLimits){.max_rows = 10, .max_bytes = 4096});
	free(mcp_handle(db, (const char *)data, size, NULL, NULL));
	char *cancelled;
	free(mcp_peek((const char *)data, size, &cancelled));
	free(cancelled);
	return 0;
}
