#!/bin/bash
# Runs once, when a regional PostgreSQL container initialises its data
# directory: the demo's tables (the same as `byokpg demo` creates), with a few
# plain rows in `orders` for the region's tenant. byokpg's own schema
# (`byokpg.*`) is created by byokpg itself when it starts (`serve` runs setup).
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v tenant="${DEMO_TENANT:?set DEMO_TENANT}" <<'SQL'
create table if not exists customers (
    id serial primary key, tenant_id text not null, email text, ssn text, notes text);
create table if not exists audit_log (
    id bigserial primary key, tenant_id text not null, at timestamptz not null default now(),
    payload text, chain_seq bigint, prev_hash text, row_hash text);
create table if not exists orders (
    id serial primary key, tenant_id text not null, item text not null, amount numeric(10,2) not null);
insert into orders (tenant_id, item, amount)
    select :'tenant', item, amount
    from (values ('widget', 9.99), ('gadget', 24.50), ('gizmo', 3.75)) v(item, amount)
    where not exists (select 1 from orders);
SQL
