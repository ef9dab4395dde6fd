//! The SQL of the hash chain: the trigger function (migration 3), the
//! attestations table, and the statements `byokpg setup` uses to attach the
//! trigger. docs/FORMAT.md "Hash chain" describes the encoding.

/// The chain trigger function. `byokpg setup` creates or replaces it at
/// every run (under its advisory lock), so it always matches the binary
/// that verifies. Per row it: reads the other columns' text forms (their
/// output functions, under the function-level settings, so the client's
/// session settings play no part), takes the chain's advisory lock, reads
/// the head, hashes, and fills the three chain columns. `TG_ARGV`:
/// chain_seq column, prev_hash column, row_hash column, tenant column (''
/// for one chain per table). Generated columns are skipped: they are
/// computed after BEFORE triggers, from columns that are hashed.
pub const CHAIN_FUNCTION: &str = concat!(
    "
    CREATE OR REPLACE FUNCTION byokpg.chain_append() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    SET TimeZone = 'UTC'
    SET DateStyle = 'ISO, YMD'
    SET IntervalStyle = 'postgres'
    SET extra_float_digits = 3
    SET bytea_output = 'hex'
    AS $byokpg$",
    r#"
DECLARE
    seq_col   text := TG_ARGV[0];
    prev_col  text := TG_ARGV[1];
    hash_col  text := TG_ARGV[2];
    ten_col   text := TG_ARGV[3];
    rel       text := format('%I.%I', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    names     text[];
    exprs     text;
    vals      text[] := '{}';
    tenant    text;
    head_seq  bigint;
    head_hash text;
    prev      text;
    enc       bytea := '';
    b         bytea;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY a.attnum),
           string_agg(format('CASE WHEN num_nulls(($1).%1$I) = 1 THEN NULL ELSE format(''%%s'', ($1).%1$I) END',
                             a.attname), ', ' ORDER BY a.attnum)
      INTO names, exprs
      FROM pg_attribute a
     WHERE a.attrelid = TG_RELID AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = '' AND a.attname NOT IN (seq_col, prev_col, hash_col);
    IF exprs IS NOT NULL THEN
        EXECUTE 'SELECT ARRAY[' || exprs || ']::text[]' INTO vals USING NEW;
    END IF;
    IF ten_col <> '' THEN
        tenant := vals[array_position(names, ten_col)];
    END IF;
    PERFORM pg_advisory_xact_lock(TG_RELID::int, hashtext(coalesce(tenant, '')));
    IF ten_col = '' THEN
        EXECUTE format('SELECT %1$I, %2$I FROM %3$s WHERE %1$I IS NOT NULL ORDER BY %1$I DESC LIMIT 1',
                       seq_col, hash_col, rel)
           INTO head_seq, head_hash;
    ELSIF tenant IS NULL THEN
        EXECUTE format('SELECT %1$I, %2$I FROM %3$s WHERE %4$I IS NULL AND %1$I IS NOT NULL ORDER BY %1$I DESC LIMIT 1',
                       seq_col, hash_col, rel, ten_col)
           INTO head_seq, head_hash;
    ELSE
        EXECUTE format('SELECT %1$I, %2$I FROM %3$s WHERE %4$I = ($1).%4$I AND %1$I IS NOT NULL ORDER BY %1$I DESC LIMIT 1',
                       seq_col, hash_col, rel, ten_col)
           INTO head_seq, head_hash USING NEW;
    END IF;
    prev := coalesce(head_hash, repeat('0', 64));
    FOR i IN 1 .. coalesce(array_length(names, 1), 0) LOOP
        CONTINUE WHEN vals[i] IS NULL;
        b := convert_to(names[i], 'UTF8');
        enc := enc || int4send(length(b)) || b;
        b := convert_to(vals[i], 'UTF8');
        enc := enc || int4send(length(b)) || b;
    END LOOP;
    NEW := jsonb_populate_record(NEW, jsonb_build_object(
        seq_col, coalesce(head_seq, 0) + 1,
        prev_col, prev,
        hash_col, encode(sha256(convert_to(prev, 'UTF8') || enc), 'hex')));
    RETURN NEW;
END
"#,
    "$byokpg$;
    COMMENT ON FUNCTION byokpg.chain_append() IS
        'byokpg: fills chain_seq, prev_hash and row_hash of hash-chained audit tables (see docs/FORMAT.md)';
    "
);

/// Migration 3: the attestations table.
pub const MIGRATION_3: &str = "
    CREATE TABLE IF NOT EXISTS byokpg.audit_attestations (
        id          bigserial   PRIMARY KEY,
        table_name  text        NOT NULL,
        tenant      text        NOT NULL,
        chain_seq   bigint      NOT NULL,
        row_hash    text        NOT NULL,
        attested_at timestamptz NOT NULL,
        algorithm   text        NOT NULL,
        signature   bytea       NOT NULL,
        key_ref     text        NOT NULL,
        kms         text        NOT NULL
    );
    CREATE INDEX IF NOT EXISTS audit_attestations_chain
        ON byokpg.audit_attestations (table_name, tenant, chain_seq);
    COMMENT ON TABLE byokpg.audit_attestations IS
        'byokpg: KMS-signed chain heads of audit tables (byokpg audit attest; see docs/AUDIT.md)';
    ";

/// The settings every text form in the chain is produced under (the
/// trigger function's `SET` clauses; `audit verify` sets the same).
pub const CANONICAL_SETTINGS: &str = "SET LOCAL TimeZone = 'UTC';
     SET LOCAL DateStyle = 'ISO, YMD';
     SET LOCAL IntervalStyle = 'postgres';
     SET LOCAL extra_float_digits = 3;
     SET LOCAL bytea_output = 'hex';
     SET LOCAL standard_conforming_strings = on;";

/// The columns hashed, in order: every live, non-generated column except
/// the three chain columns. `$1` relation name (quoted), `$2` the chain
/// column names.
pub const HASHED_COLUMNS_SQL: &str = "\
select a.attname::text from pg_attribute a
 where a.attrelid = to_regclass($1) and a.attnum > 0 and not a.attisdropped
   and a.attgenerated = '' and a.attname::text <> all($2::text[])
 order by a.attnum";

/// Time of an attestation, as signed: UTC, microseconds.
pub const TIME_FORMAT: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'"#;

/// Always quotes, so keywords and mixed case are safe.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// A string literal (with `standard_conforming_strings` on, which the
/// statements that use it set).
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A PostgreSQL error as one line (message and SQLSTATE), never a DSN.
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
