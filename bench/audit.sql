-- bench/audit.sql: one INSERT into the hash-chained append-only table
-- bench_audit (byokpg fills chain_seq, prev_hash, row_hash in the database).
\set n random(1, 1000000000)
insert into bench_audit (actor, payload) values ('user-' || :n, 'event ' || :n);
