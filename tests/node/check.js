'use strict';
// node-postgres client checks, driven by tests/integration/test_node.py.
// Connection settings come from PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE.
// Prints one JSON object with everything observed; the Python side runs this against
// PostgreSQL directly and through pgcordon and compares.

const crypto = require('crypto');
const { Readable, Writable } = require('stream');
const { pipeline } = require('stream/promises');
const { Client } = require('pg');
const { from: copyFrom, to: copyTo } = require('pg-copy-streams');

function config() {
  return {
    host: process.env.PGHOST,
    port: Number(process.env.PGPORT),
    user: process.env.PGUSER,
    password: process.env.PGPASSWORD,
    database: process.env.PGDATABASE,
    ssl: false,
    connectionTimeoutMillis: 10000,
    application_name: 'pgcordon-node-check',
  };
}

async function connect() {
  const c = new Client(config());
  await c.connect();
  return c;
}

async function main() {
  const out = {};
  const c = await connect();

  // Parameterised queries of several types.
  let r = await c.query(
    'SELECT $1::int + $2::int AS sum, $3::text AS t, $4::text IS NULL AS isnull, ' +
      '$5::int[] AS arr, $6::jsonb AS j, $7::bytea AS b, $8::numeric AS n, $9::date::text AS d',
    [40, 2, 'héllo ✓', null, [1, 2, 3], { a: [1, 'x'] }, Buffer.from([0, 1, 255]), '12.50',
      '2024-02-29']);
  const row = r.rows[0];
  out.params = { ...row, b: row.b.toString('hex') };
  r = await c.query('SELECT id, name, price::text AS price, tags FROM items WHERE id = ANY($1) ' +
                    'ORDER BY id', [[1, 2, 3]]);
  out.items = r.rows;
  r = await c.query({ text: 'SELECT 1 AS a, $1::text AS b', values: ['two'], rowMode: 'array' });
  out.arrayMode = { rows: r.rows, fields: r.fields.map((f) => [f.name, f.dataTypeID]) };
  // A large parameter (1 MiB) round-trips.
  const big = 'z'.repeat(1 << 20);
  r = await c.query('SELECT length($1::text) AS len, md5($1::text) AS md5', [big]);
  out.bigParam = r.rows[0];
  out.bigParamMd5Ok = r.rows[0].md5 === crypto.createHash('md5').update(big).digest('hex');
  r = await c.query('SELECT current_setting(\'application_name\') AS app');
  out.applicationName = r.rows[0].app;

  // Named prepared statements: node-postgres parses once, then only binds and executes.
  out.named = [];
  for (let i = 1; i <= 6; i++) {
    r = await c.query({
      name: 'pgcordon-node-stmt',
      text: 'SELECT $1::int * 3 AS v, name FROM items WHERE id = $1',
      values: [i],
    });
    out.named.push(r.rows[0]);
  }
  r = await c.query('SELECT name, statement, parameter_types::text AS types ' +
                    'FROM pg_prepared_statements ORDER BY name');
  out.prepared = r.rows;

  // Errors keep every field; the connection stays usable.
  try {
    await c.query('SELECT $1::int / 0', [1]);
    out.error = 'no error';
  } catch (e) {
    out.error = { code: e.code, message: e.message, severity: e.severity, routine: e.routine };
  }
  try {
    await c.query('SELEC 1');
  } catch (e) {
    out.syntaxError = { code: e.code, message: e.message, position: e.position };
  }
  r = await c.query('SELECT 1 AS ok');
  out.afterError = r.rows;

  // Transactions.
  await c.query('CREATE TEMP TABLE nt (id int, t text)');
  await c.query('BEGIN');
  await c.query('INSERT INTO nt VALUES (1, $1)', ['rolled back']);
  await c.query('ROLLBACK');
  r = await c.query('SELECT count(*)::int AS n FROM nt');
  out.afterRollback = r.rows[0].n;

  // COPY FROM STDIN.
  const lines = [];
  for (let i = 0; i < 20000; i++) lines.push(`${i}\tline ${i} ${'x'.repeat(i % 50)}\n`);
  const input = Buffer.from(lines.join(''));
  const ingest = c.query(copyFrom('COPY nt FROM STDIN'));
  const chunks = [];
  for (let off = 0; off < input.length; off += 64 * 1024) chunks.push(input.subarray(off, off + 64 * 1024));
  await pipeline(Readable.from(chunks), ingest);
  out.copyFromRowCount = ingest.rowCount;
  r = await c.query('SELECT count(*)::int AS n, sum(id)::text AS s FROM nt');
  out.copyFromCheck = r.rows[0];

  // COPY TO STDOUT.
  const got = [];
  const source = c.query(copyTo('COPY (SELECT * FROM nt ORDER BY id) TO STDOUT'));
  await pipeline(source, new Writable({
    write(chunk, _enc, cb) { got.push(chunk); cb(); },
  }));
  const copied = Buffer.concat(got);
  out.copyTo = {
    bytes: copied.length,
    sha256: crypto.createHash('sha256').update(copied).digest('hex'),
    sameAsInput: copied.equals(input),
  };

  // A failing COPY FROM reports the error and the connection recovers.
  try {
    const bad = c.query(copyFrom('COPY nt (id) FROM STDIN'));
    await pipeline(Readable.from([Buffer.from('1\nnot-a-number\n')]), bad);
    out.copyError = 'no error';
  } catch (e) {
    out.copyError = { code: e.code };
  }
  r = await c.query('SELECT count(*)::int AS n FROM nt');
  out.afterCopyError = r.rows[0].n;

  // LISTEN / NOTIFY between two connections.
  const listener = await connect();
  const channel = 'node_chan';
  const received = [];
  const done = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('notifications not received within 10s')), 10000);
    listener.on('notification', (m) => {
      received.push({ channel: m.channel, payload: m.payload });
      if (received.length === 2) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  await listener.query(`LISTEN ${channel}`);
  await c.query(`NOTIFY ${channel}, 'first'`);
  await c.query('SELECT pg_notify($1, $2)', [channel, 'second from node']);
  await done;
  out.notifications = received;

  // Notices.
  const notices = [];
  c.on('notice', (n) => notices.push({ severity: n.severity, code: n.code, message: n.message }));
  await c.query("DO $$BEGIN RAISE NOTICE 'node notice %', 1; END$$");
  out.notices = notices;

  await listener.end();
  await c.end();
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
