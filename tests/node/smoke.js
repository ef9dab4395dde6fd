// node-postgres smoke test of a PostgreSQL endpoint (byokpg or PostgreSQL itself).
//
// Usage: node smoke.js DSN TABLE_PREFIX
//
// Run by tests/e2e_clients.rs. Exits non-zero with a message on the first
// mismatch; prints "node smoke: ok" at the end.
'use strict';

const assert = require('node:assert/strict');
const { Client } = require('pg');

async function connect(dsn) {
  const client = new Client({ connectionString: dsn });
  await client.connect();
  return client;
}

async function simpleAndParameterized(client, table) {
  await client.query(
    `create table ${table} (id int primary key, name text, amount numeric(10,2), data bytea)`,
  );
  // A multi-statement simple query: node pg returns one result per statement.
  const multi = await client.query(
    `insert into ${table} (id, name) values (1, 'one'); select count(*)::int as n from ${table}`,
  );
  assert.equal(multi.length, 2, 'multi-statement results');
  assert.equal(multi[1].rows[0].n, 1, 'count after multi-statement insert');

  await client.query(`insert into ${table} (id, name, amount, data) values ($1, $2, $3, $4)`, [
    2, 'two', '2.50', Buffer.from([0, 1, 255]),
  ]);
  const r = await client.query(`select id, name, amount, data from ${table} where id = $1`, [2]);
  assert.equal(r.rowCount, 1, 'parameterized select row count');
  assert.deepEqual(r.rows[0], { id: 2, name: 'two', amount: '2.50', data: Buffer.from([0, 1, 255]) });
}

async function namedPrepared(client, table) {
  const insert = { name: `${table}_ins`, text: `insert into ${table} (id, name) values ($1, $2)` };
  for (let i = 10; i < 30; i += 1) {
    await client.query({ ...insert, values: [i, `name-${i}`] });
  }
  const select = { name: `${table}_sel`, text: `select name from ${table} where id = $1` };
  for (const id of [10, 17, 29]) {
    const r = await client.query({ ...select, values: [id] });
    assert.deepEqual(r.rows, [{ name: `name-${id}` }], `named statement row ${id}`);
  }
  // rowMode array and a second use of the same named statement with new values.
  const r = await client.query({ ...select, values: [11], rowMode: 'array' });
  assert.deepEqual(r.rows, [['name-11']], 'rowMode array');
}

async function transactions(client, table) {
  await client.query('begin');
  await client.query(`insert into ${table} (id, name) values (100, 'committed')`);
  await client.query('commit');
  await client.query('begin');
  await client.query(`insert into ${table} (id, name) values (101, 'rolled back')`);
  await client.query('rollback');
  const r = await client.query(`select id from ${table} where id >= 100 order by id`);
  assert.deepEqual(r.rows.map((x) => x.id), [100], 'commit kept, rollback dropped');

  // Error inside a transaction: 25P02 until rollback, then usable again.
  await client.query('begin');
  await assert.rejects(client.query('select 1/0'), (e) => e.code === '22012');
  await assert.rejects(client.query('select 1'), (e) => e.code === '25P02');
  await client.query('rollback');
}

async function errorRecovery(client, table) {
  await assert.rejects(
    client.query(`insert into ${table} (id, name) values (1, 'dup')`),
    (e) => e.code === '23505',
  );
  await assert.rejects(client.query('select * from no_such_table_here'), (e) => e.code === '42P01');
  await assert.rejects(client.query('select $1::int', ['not a number']), (e) => e.code === '22P02');
  const r = await client.query('select $1::text as v', ['still alive']);
  assert.equal(r.rows[0].v, 'still alive', 'query after errors');
}

async function listenNotify(dsn, table) {
  const listener = await connect(dsn);
  const sender = await connect(dsn);
  try {
    const channel = `${table}_ch`;
    const got = new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('no notification within 20 s')), 20000);
      listener.on('notification', (msg) => {
        clearTimeout(timer);
        resolve(msg);
      });
    });
    await listener.query(`listen ${channel}`);
    await sender.query('select pg_notify($1, $2)', [channel, 'hello from node']);
    const msg = await got;
    assert.equal(msg.channel, channel, 'notification channel');
    assert.equal(msg.payload, 'hello from node', 'notification payload');
  } finally {
    await listener.end();
    await sender.end();
  }
}

async function main() {
  const [dsn, table] = process.argv.slice(2);
  if (!dsn || !table) {
    console.error('usage: node smoke.js DSN TABLE_PREFIX');
    process.exit(2);
  }
  const client = await connect(dsn);
  try {
    await simpleAndParameterized(client, table);
    await namedPrepared(client, table);
    await transactions(client, table);
    await errorRecovery(client, table);
    await listenNotify(dsn, table);
    await client.query(`drop table ${table}`);
  } finally {
    await client.end();
  }
  console.log('node smoke: ok');
}

main().catch((e) => {
  console.error(`node smoke: MISMATCH: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
