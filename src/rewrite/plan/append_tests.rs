//! The planner's append-only rules (SPEC §6): what is refused with `42501`,
//! what is allowed, and the hash-chain column rules.

use super::*;

/// audit_log: append-only, hash-chained, tenant column, encrypted payload,
/// column order known. events (schema ops): append-only, no chain, column
/// order unknown. customers: an ordinary protected table.
fn policy(chain_ready: bool) -> PolicyView {
    let all = |c: &[&str]| Some(c.iter().map(|s| (*s).to_owned()).collect());
    PolicyView::new(vec![
        PolicyTable {
            schema: "public".into(),
            table: "audit_log".into(),
            tenant_column: Some("tenant_id".into()),
            columns: vec![("payload".into(), ColumnMode::Randomized)],
            append_only: true,
            all_columns: all(&[
                "id",
                "tenant_id",
                "at",
                "payload",
                "chain_seq",
                "prev_hash",
                "row_hash",
            ]),
        },
        PolicyTable {
            schema: "ops".into(),
            table: "events".into(),
            tenant_column: None,
            columns: Vec::new(),
            append_only: true,
            all_columns: None,
        },
        PolicyTable {
            schema: "public".into(),
            table: "customers".into(),
            tenant_column: None,
            columns: vec![("email".into(), ColumnMode::Deterministic)],
            append_only: false,
            all_columns: None,
        },
    ])
    .with_audit([(
        0,
        AuditRules {
            chain: Some(["chain_seq".into(), "prev_hash".into(), "row_hash".into()]),
            chain_ready,
            view: false,
        },
    )])
}

fn refused(sql: &str) -> Refusal {
    match plan(sql, &policy(true)) {
        Ok(p) => panic!("{sql}\n  was not refused: {p:?}"),
        Err(r) => r,
    }
}

fn allowed(sql: &str) {
    if let Err(r) = plan(sql, &policy(true)) {
        panic!("{sql}\n  refused: {}", r.message());
    }
}

#[test]
fn changes_are_refused_in_every_form() {
    for (sql, table) in [
        ("UPDATE audit_log SET at = now()", "public.audit_log"),
        (
            "update AUDIT_LOG set at = now() where id = 1",
            "public.audit_log",
        ),
        ("UPDATE \"audit_log\" SET at = now()", "public.audit_log"),
        (
            "UPDATE public.audit_log a SET at = now()",
            "public.audit_log",
        ),
        ("UPDATE ONLY audit_log SET at = now()", "public.audit_log"),
        ("DELETE FROM audit_log", "public.audit_log"),
        (
            "delete from Public.Audit_Log where id = 1 returning *",
            "public.audit_log",
        ),
        ("DELETE FROM ops.events", "ops.events"),
        // search_path may point at ops: an unqualified name counts.
        ("DELETE FROM events", "ops.events"),
        (
            "DELETE FROM \"events\" e USING customers c WHERE c.id = e.id",
            "ops.events",
        ),
        ("TRUNCATE audit_log", "public.audit_log"),
        ("TRUNCATE TABLE customers, ops.events CASCADE", "ops.events"),
        ("TRUNCATE ONLY events", "ops.events"),
        ("DROP TABLE audit_log", "public.audit_log"),
        ("DROP TABLE IF EXISTS customers, events", "ops.events"),
        ("ALTER TABLE audit_log ADD COLUMN x int", "public.audit_log"),
        (
            "ALTER TABLE audit_log DISABLE TRIGGER ALL",
            "public.audit_log",
        ),
        (
            "ALTER TABLE IF EXISTS ops.events RENAME TO e2",
            "ops.events",
        ),
        (
            "CREATE TRIGGER t BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION f()",
            "public.audit_log",
        ),
        (
            "DROP TRIGGER zz_byokpg_chain ON audit_log",
            "public.audit_log",
        ),
        (
            "WITH d AS (DELETE FROM audit_log RETURNING *) SELECT * FROM d",
            "public.audit_log",
        ),
        (
            "WITH u AS (UPDATE ops.events SET x = 1 RETURNING 1) SELECT 1",
            "ops.events",
        ),
        (
            "SELECT * FROM (WITH d AS (DELETE FROM audit_log RETURNING id) SELECT id FROM d) s",
            "public.audit_log",
        ),
        (
            "INSERT INTO customers (id) SELECT id FROM (WITH d AS (DELETE FROM events RETURNING id) SELECT id FROM d) x",
            "ops.events",
        ),
        (
            "MERGE INTO audit_log a USING customers c ON a.id = c.id WHEN MATCHED THEN DELETE",
            "public.audit_log",
        ),
        (
            "INSERT INTO audit_log (tenant_id, payload) VALUES ('acme', 'x') ON CONFLICT (id) DO UPDATE SET at = now()",
            "public.audit_log",
        ),
        ("EXPLAIN ANALYZE DELETE FROM audit_log", "public.audit_log"),
        ("PREPARE p AS DELETE FROM audit_log", "public.audit_log"),
        (
            "CREATE RULE r AS ON INSERT TO audit_log DO INSTEAD NOTHING",
            "public.audit_log",
        ),
        (
            "CREATE FUNCTION f() RETURNS void LANGUAGE sql AS 'DELETE FROM audit_log'",
            "public.audit_log",
        ),
        (
            "DO $$ BEGIN DELETE FROM audit_log; END $$",
            "public.audit_log",
        ),
        (
            "SELECT 1; DELETE FROM audit_log; SELECT 2",
            "public.audit_log",
        ),
    ] {
        let r = refused(sql);
        assert_eq!(r.sqlstate(), "42501", "{sql}: {}", r.message());
        assert!(r.message().starts_with("byokpg: "), "{sql}");
        assert!(r.message().contains(table), "{sql}: {}", r.message());
    }
}

#[test]
fn reads_and_inserts_are_allowed() {
    for sql in [
        "SELECT * FROM audit_log WHERE tenant_id = 'acme' ORDER BY chain_seq",
        "SELECT count(*) FROM ops.events",
        "SELECT * FROM audit_log FOR UPDATE",
        "INSERT INTO audit_log (tenant_id, at, payload) VALUES ('acme', now(), 'x')",
        "INSERT INTO audit_log (at, payload) VALUES (now(), 'a'), (now(), 'b') RETURNING chain_seq, row_hash",
        "INSERT INTO audit_log (tenant_id, payload) VALUES ($1, $2)",
        "INSERT INTO audit_log (tenant_id, payload) VALUES ('acme', 'x') ON CONFLICT DO NOTHING",
        "INSERT INTO ops.events SELECT * FROM customers_archive",
        "INSERT INTO events VALUES (1, 'x')",
        "COPY audit_log (tenant_id, at, payload) FROM STDIN",
        "COPY ops.events FROM STDIN",
        "COPY audit_log TO STDOUT",
        "EXPLAIN SELECT * FROM audit_log",
        "DELETE FROM customers WHERE email = 'a'",
        "DELETE FROM audit_log_archive",
        "DELETE FROM other.audit_log",
        "TRUNCATE customers",
        "CREATE INDEX ON audit_log (at)",
        "COMMENT ON TABLE audit_log IS 'x'",
        "GRANT SELECT, INSERT ON audit_log TO app",
    ] {
        allowed(sql);
    }
}

#[test]
fn chain_columns_are_not_client_supplied() {
    for sql in [
        "INSERT INTO audit_log (tenant_id, payload, chain_seq) VALUES ('acme', 'x', 1)",
        "INSERT INTO audit_log (tenant_id, \"row_hash\") VALUES ('acme', $1)",
        "INSERT INTO audit_log (tenant_id, PREV_HASH) SELECT 'acme', 'x'",
        // Without a column list the seventh value lands in a chain column.
        "INSERT INTO audit_log VALUES (1, 'acme', now(), 'x', 1, '0', '0')",
        "INSERT INTO audit_log SELECT * FROM audit_log_archive",
        "COPY audit_log FROM STDIN",
        "COPY audit_log (tenant_id, payload, chain_seq) FROM STDIN (FORMAT csv)",
    ] {
        let r = refused(sql);
        assert_eq!(r.sqlstate(), "42501", "{sql}: {}", r.message());
        assert!(r.message().contains("public.audit_log"), "{sql}");
    }
    // Rows that stop before the chain columns are fine.
    allowed("INSERT INTO audit_log VALUES (1, 'acme', now(), 'x')");
    let r = refused("INSERT INTO audit_log (tenant_id, chain_seq) VALUES ('acme', 1)");
    assert!(r.message().contains("chain_seq"), "{}", r.message());
}

#[test]
fn chained_table_without_trigger_fails_closed() {
    for sql in [
        "INSERT INTO audit_log (tenant_id, payload) VALUES ('acme', 'x')",
        "COPY audit_log (tenant_id, payload) FROM STDIN",
    ] {
        let r = plan(sql, &policy(false)).expect_err("refused without the trigger");
        assert_eq!(r.sqlstate(), "55000", "{sql}");
        assert!(r.message().contains("byokpg setup"), "{}", r.message());
    }
    plan("SELECT * FROM audit_log", &policy(false)).expect("reads need no trigger");
}

#[test]
fn unparseable_statements_on_append_only_tables_are_forbidden() {
    for sql in [
        "TABLE audit_log",
        "SELECT * FROM U&\"audit_log\"",
        "VACUUM ANALYZE audit_log",
    ] {
        let r = refused(sql);
        assert_eq!(r.sqlstate(), "42501", "{sql}: {}", r.message());
    }
    // The same on an ordinary protected table stays 0A000.
    let r = plan("TABLE customers", &policy(true)).expect_err("unparseable");
    assert_eq!(r.sqlstate(), "0A000");
}

#[test]
fn views_over_append_only_tables_refuse_writes() {
    let mut tables = policy(true).tables().to_vec();
    tables.push(PolicyTable {
        schema: "public".into(),
        table: "recent_audit".into(),
        tenant_column: None,
        columns: Vec::new(),
        append_only: true,
        all_columns: Some(vec!["id".into(), "payload".into()]),
    });
    let view = tables.len() - 1;
    let p = PolicyView::new(tables).with_audit([(
        view,
        AuditRules {
            view: true,
            ..AuditRules::default()
        },
    )]);
    for sql in [
        "UPDATE recent_audit SET payload = NULL",
        "DELETE FROM recent_audit",
        "INSERT INTO recent_audit (id) VALUES (1)",
    ] {
        let r = plan(sql, &p).expect_err("write through view");
        assert_eq!(r.sqlstate(), "42501", "{sql}");
        assert!(r.message().contains("recent_audit"), "{sql}");
    }
    plan("SELECT * FROM recent_audit", &p).expect("reads through the view");
}
