-- bench/audit-plain.sql: the same INSERT as audit.sql into bench_unchained,
-- an identical table that is in no policy (no chain, no trigger).
\set n random(1, 1000000000)
insert into bench_unchained (actor, payload) values ('user-' || :n, 'event ' || :n);
