-- bench/plain.sql: one transaction of bench/encrypted-compare on the
-- unprotected twin of enc_customers (not in byokpg's policy): the same
-- statements as encrypted.sql, so the two differ only by encryption.
-- Variables: -D rows=N (preloaded rows: email = 'N', ssn = 'N + 100000000')
-- -D check=0|1.
\set eid random(1, :rows)
\set newemail random(1000000000000, 999999999999999999)
\set newssn random(100000000, 999999999)
-- Lookup by email (unprotected here); \gset fails unless exactly one row.
select id as got_id, email as got_email, ssn as got_ssn from plain_customers where email = :eid::text \gset
\if :check
-- The client must see the plaintext of both columns (a ciphertext here makes
-- pgbench fail with "malformed variable").
\if :got_email != :eid or :got_ssn != :eid + 100000000
do 'begin raise exception ''encrypted-compare: the lookup returned a wrong row''; end';
\endif
\endif
insert into plain_customers (tenant_id, email, ssn) values ('bench', :newemail::text, :newssn::text);
