'use strict';
// node-postgres driver for the policy tests (tests/integration/test_policies.py).
// Connection settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
// POLICY_STEPS is a JSON list of steps run in order on one connection:
//   {"text": "SQL"}                          simple protocol (no values)
//   {"text": "SQL", "values": [...]}         extended protocol (unnamed statement)
//   {"text": "SQL", "values": [...], "name": "n"}  extended protocol, named statement
// Prints one JSON object: {"connect": null | error, "results": [...]}, where each result
// is {"ok": true, "rows": [...], "rowCount": n, "command": "..."} or
// {"ok": false, "code": "...", "message": "...", "severity": "..."}.

const { Client } = require('pg');

function errorOf(e) {
  return { ok: false, code: e.code || null, message: e.message, severity: e.severity || null };
}

async function main() {
  const steps = JSON.parse(process.env.POLICY_STEPS || '[]');
  const out = { connect: null, results: [] };
  const c = new Client({
    host: process.env.PGHOST,
    port: Number(process.env.PGPORT),
    user: process.env.PGUSER,
    password: process.env.PGPASSWORD,
    database: process.env.PGDATABASE,
    ssl: false,
    connectionTimeoutMillis: 10000,
    application_name: 'pgcordon-node-policy',
  });
  // A refused login or a dying connection must not crash the process.
  c.on('error', () => {});
  try {
    await c.connect();
  } catch (e) {
    out.connect = errorOf(e);
    process.stdout.write(JSON.stringify(out));
    return;
  }
  for (const step of steps) {
    const q = { text: step.text, rowMode: 'array' };
    if (step.values !== undefined) q.values = step.values;
    if (step.name !== undefined) q.name = step.name;
    try {
      const r = await c.query(q);
      out.results.push({ ok: true, rows: r.rows, rowCount: r.rowCount, command: r.command });
    } catch (e) {
      out.results.push(errorOf(e));
    }
  }
  await c.end();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => {
  process.stderr.write(String(e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
