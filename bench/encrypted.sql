-- bench/encrypted.sql: one transaction of bench/encrypted-compare on the
-- table byokpg protects (email deterministic, ssn randomized). plain.sql is the
-- same script on an unprotected twin table. Variables: -D rows=N (preloaded
-- rows: email = 'N', ssn = 'N + 100000000') -D check=0|1.
--
-- pgbench variables are numbers, so emails are decimal text and `:x::text`
-- makes both the literal (-M simple) and the parameter (-M extended/prepared)
-- a text value that byokpg encrypts for the comparison / the insert.
\set eid random(1, :rows)
\set newemail random(1000000000000, 999999999999999999)
\set newssn random(100000000, 999999999)
-- Deterministic lookup on the encrypted column; \gset fails unless exactly one row.
select id as got_id, email as got_email, ssn as got_ssn from enc_customers where email = :eid::text \gset
\if :check
-- The client must see the plaintext of both columns (a ciphertext here makes
-- pgbench fail with "malformed variable").
\if :got_email != :eid or :got_ssn != :eid + 100000000
do 'begin raise exception ''encrypted-compare: the lookup returned a wrong row''; end';
\endif
\endif
insert into enc_customers (tenant_id, email, ssn) values ('bench', :newemail::text, :newssn::text);
