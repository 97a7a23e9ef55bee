'use strict';
// The official MCP TypeScript SDK's client against `pgcordon mcp` on stdio, driven by
// tests/integration/test_mcp.py. Reads MCP_BIN, MCP_CONNECT, MCP_PASSWORD, MCP_TABLE and
// MCP_CALLS (a JSON array of [tool, arguments]); prints one JSON object: what the server
// said at initialize, its tools, and each call's result.

const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { exercise } = require('./mcp_calls.js');
const { StdioClientTransport } = require('@modelcontextprotocol/sdk/client/stdio.js');

async function main() {
  const transport = new StdioClientTransport({
    command: process.env.MCP_BIN,
    args: ['mcp', '--connect', process.env.MCP_CONNECT, '--max-rows', '50'],
    env: { PATH: process.env.PATH, PGPASSWORD: process.env.MCP_PASSWORD },
    stderr: 'inherit',
  });
  const client = new Client({ name: 'pgcordon-mcp-check', version: '1.0.0' });
  await client.connect(transport);
  const out = {
    server: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    instructions: client.getInstructions(),
  };
  await exercise(client, out);
  await client.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
