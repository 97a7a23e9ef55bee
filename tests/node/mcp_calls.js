'use strict';
// What tests/node/mcp_check.js (stdio) and mcp_http_check.js (HTTP) ask of a connected MCP
// SDK client, the same over either transport: its tools, a ping, each of MCP_CALLS (a JSON
// array of [tool, arguments]), and an unknown tool. Adds them to out.

async function exercise(client, out) {
  out.tools = (await client.listTools()).tools;
  out.ping = await client.ping();
  out.calls = [];
  for (const [name, args] of JSON.parse(process.env.MCP_CALLS)) {
    const r = await client.callTool({ name, arguments: args });
    out.calls.push({ isError: r.isError === true, text: r.content[0].text, structured: r.structuredContent });
  }
  try {
    await client.callTool({ name: 'no_such_tool', arguments: {} });
    out.unknownTool = 'no error';
  } catch (e) {
    out.unknownTool = { code: e.code, message: e.message };
  }
  return out;
}

module.exports = { exercise };
