// node-postgres through byokpg on a protected table: round trips and stored ciphertext.
//
// Usage: node encryption.js PROXY_DSN DIRECT_DSN TABLE MARKER
//
// Run by tests/e2e_encryption.rs. TABLE already exists in the tenant's region
// database and is in the proxy's policy (email and tag deterministic; ssn,
// notes and doc randomized; doc and tag are bytea; tenant column tenant_id).
// Every plaintext written here contains MARKER, so the Rust test can look for
// it in a pg_dump afterwards. DIRECT_DSN reaches the same database without the
// proxy: the script checks there that every protected value is ciphertext.
// Exits non-zero on the first mismatch; prints "node encryption: ok" at the end.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

const COLS = 'id, email, ssn, notes, doc, tag';

async function connect(dsn) {
  const client = new Client({ connectionString: dsn });
  await client.connect();
  return client;
}

function row(marker, i) {
  return {
    email: `${marker}-user${i}@example.com`,
    ssn: `${marker}-ssn-${i}`,
    notes: i % 4 === 0 ? null : `${marker} note ${i} ünïcødé 😀 漢字`,
    doc: Buffer.concat([Buffer.from([0, 255]), Buffer.from(marker), Buffer.from([i % 256, 0])]),
    tag: Buffer.from([i % 5, 0, 1]),
  };
}

function values(r) {
  return [r.email, r.ssn, r.notes, r.doc, r.tag];
}

function plain(dbRow) {
  const { id, ...rest } = dbRow;
  assert.equal(typeof id, 'number');
  return rest;
}

async function parameterized(client, table, marker) {
  const ins = `insert into ${table} (email, ssn, notes, doc, tag) values ($1, $2, $3, $4, $5) returning ${COLS}`;
  const r0 = row(marker, 0);
  const got = await client.query(ins, values(r0));
  assert.deepEqual(plain(got.rows[0]), r0, 'insert ... returning');
  const empty = { email: `${marker}-empty@x`, ssn: '', notes: '', doc: Buffer.alloc(0), tag: Buffer.alloc(0) };
  assert.deepEqual(plain((await client.query(ins, values(empty))).rows[0]), empty, 'empty values');
  const nulls = { email: `${marker}-nulls@x`, ssn: null, notes: null, doc: null, tag: null };
  assert.deepEqual(plain((await client.query(ins, values(nulls))).rows[0]), nulls, 'NULL values');

  const sel = await client.query(`select ${COLS} from ${table} where email = $1`, [r0.email]);
  assert.deepEqual(sel.rows.map(plain), [r0], 'lookup with =');
  const inl = await client.query(
    `select ${COLS} from ${table} where email in ($1, $2) order by id`,
    [r0.email, empty.email],
  );
  assert.deepEqual(inl.rows.map(plain), [r0, empty], 'IN lookup');
  const upd = await client.query(
    `update ${table} set ssn = $1, doc = $2 where email = $3 returning ${COLS}`,
    [`${marker}-ssn-updated`, Buffer.from(`${marker}-doc-updated`), r0.email],
  );
  assert.deepEqual(
    plain(upd.rows[0]),
    { ...r0, ssn: `${marker}-ssn-updated`, doc: Buffer.from(`${marker}-doc-updated`) },
    'update ... returning',
  );
  const tagged = await client.query(`select id from ${table} where tag = $1`, [r0.tag]);
  assert.equal(tagged.rowCount, 1, 'bytea lookup');
}

async function namedPrepared(client, table, marker) {
  const ins = {
    name: `${table}_ins`,
    text: `insert into ${table} (email, ssn, notes, doc, tag) values ($1, $2, $3, $4, $5) returning id`,
  };
  for (let i = 1; i <= 40; i += 1) {
    await client.query({ ...ins, values: values(row(marker, i)) });
  }
  const sel = { name: `${table}_sel`, text: `select ${COLS} from ${table} where email = $1` };
  for (let i = 1; i <= 40; i += 3) {
    const r = await client.query({ ...sel, values: [row(marker, i).email] });
    assert.deepEqual(r.rows.map(plain), [row(marker, i)], `named statement lookup ${i}`);
  }
  const arr = await client.query({ ...sel, values: [row(marker, 2).email], rowMode: 'array' });
  assert.equal(arr.rows[0][1], row(marker, 2).email, 'rowMode array');
}

async function transactions(client, table, marker) {
  await client.query('BEGIN');
  await client.query(`insert into ${table} (email, ssn) values ($1, $2)`, [`${marker}-rb@x`, `${marker}-rb`]);
  await client.query('ROLLBACK');
  const gone = await client.query(`select count(*)::int as n from ${table} where email = $1`, [`${marker}-rb@x`]);
  assert.equal(gone.rows[0].n, 0, 'rolled-back insert');

  await client.query('BEGIN');
  await client.query(`insert into ${table} (email, ssn) values ($1, $2)`, [`${marker}-tx@x`, `${marker}-tx`]);
  const inside = await client.query(`select ssn from ${table} where email = $1`, [`${marker}-tx@x`]);
  assert.deepEqual(inside.rows, [{ ssn: `${marker}-tx` }], 'read inside the transaction');
  await client.query('COMMIT');

  // A refused statement, then the connection keeps working.
  await assert.rejects(
    client.query(`select id from ${table} where email like $1`, [`${marker}%`]),
    (e) => e.code === '0A000' && e.message.startsWith('byokpg:'),
    'LIKE on an encrypted column is refused with 0A000',
  );
  const after = await client.query(`select ssn from ${table} where email = $1`, [`${marker}-tx@x`]);
  assert.deepEqual(after.rows, [{ ssn: `${marker}-tx` }], 'after a refusal');
}

async function directCheck(direct, table, marker) {
  const d = await connect(direct);
  try {
    const r = await d.query(`select email, ssn, notes, doc, tag, tenant_id from ${table}`);
    assert.ok(r.rowCount >= 40, `only ${r.rowCount} rows stored`);
    for (const x of r.rows) {
      assert.equal(x.tenant_id, 'acme', 'tenant column');
      for (const name of ['email', 'ssn', 'notes']) {
        if (x[name] !== null) {
          assert.ok(x[name].startsWith('byok1:AQ'), `${name} stored as ${x[name].slice(0, 60)}`);
          assert.ok(!x[name].includes(marker), `${name} holds plaintext`);
        }
      }
      for (const name of ['doc', 'tag']) {
        const b = x[name];
        if (b !== null) {
          assert.ok(b.length >= 22 && b[0] === 1 && (b[1] === 1 || b[1] === 2), `${name} is not an envelope`);
          assert.ok(!b.includes(Buffer.from(marker)), `${name} holds plaintext`);
        }
      }
    }
  } finally {
    await d.end();
  }
}

async function main() {
  const [dsn, direct, table, marker] = process.argv.slice(2);
  const client = await connect(dsn);
  try {
    await parameterized(client, table, marker);
    await namedPrepared(client, table, marker);
    await transactions(client, table, marker);
  } finally {
    await client.end();
  }
  await directCheck(direct, table, marker);
  console.log('node encryption: ok');
}

main().catch((e) => {
  console.error('node encryption: FAILED:', e);
  process.exit(1);
});
