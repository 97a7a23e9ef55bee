/* pgcordon mcp: a Model Context Protocol server on stdio that queries through the gateway. */
#ifndef PGC_MCP_CMD_H
#define PGC_MCP_CMD_H

/* Serves until stdin ends; returns the process exit code. */
int mcp_cmd_main(int argc, char **argv);

#endif
