'use strict';
// The official MCP TypeScript SDK's client over Streamable HTTP against the gateway's
// /mcp (admin.mcp), driven by tests/integration/test_mcp_http.py. Reads MCP_URL, MCP_KEY
// (the Bearer credential) and MCP_CALLS (a JSON array of [tool, arguments]); prints one
// JSON object: what the server said at initialize, its tools, each call's result, the
// session id, and whether ending the session worked.

const { Client } = require('@modelcontextprotocol/sdk/client/index.js');
const { exercise } = require('./mcp_calls.js');
const { StreamableHTTPClientTransport } = require('@modelcontextprotocol/sdk/client/streamableHttp.js');

async function main() {
  const transport = new StreamableHTTPClientTransport(new URL(process.env.MCP_URL), {
    requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_KEY}` } },
  });
  const client = new Client({ name: 'pgcordon-mcp-http-check', version: '1.0.0' });
  await client.connect(transport);
  const out = {
    server: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    sessionId: transport.sessionId,
  };
  await exercise(client, out);
  await transport.terminateSession();
  out.terminated = transport.sessionId === undefined;
  await client.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
