//! `byokpg guards install|status` against the real PostgreSQL: each test
//! gets its own scratch database, writes straight to it (as a client that
//! bypasses the proxy would) and checks what the guards let through.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use byokpg::config::Config;
use byokpg::crypto::{ColumnId, Dek, FieldCipher, Mode};
use byokpg::guards;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

const PG_DOWN: &str = "PostgreSQL is needed at 127.0.0.1:5432 (trust auth, superuser postgres): \
     start it with `bash scripts/test.sh` or `pg_ctlcluster 15 main start`";

async fn connect(db: &str) -> Client {
    let dsn = format!("host=127.0.0.1 port=5432 user=postgres dbname={db}");
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("{PG_DOWN}: {e}"));
    tokio::spawn(conn);
    client
}

/// A fresh database named after the test (and this process, so parallel
/// runs do not collide), holding the tables `ddl` creates.
struct Scratch {
    db: String,
    client: Client,
}

impl Scratch {
    async fn new(test: &str, ddl: &str) -> Self {
        let db = format!("byokpg_guards_{test}_{}", std::process::id());
        let pg = connect("postgres").await;
        pg.batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
            .unwrap();
        pg.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        let client = connect(&db).await;
        client.batch_execute(ddl).await.unwrap();
        Self { db, client }
    }

    /// A config whose region `us` is this database, with `tables` appended.
    fn config(&self, tables: &str) -> Config {
        let text = format!(
            "[regions.us]\ndsn = \"postgres://postgres@127.0.0.1:5432/{}?sslmode=disable\"\n{tables}",
            self.db
        );
        byokpg::config::parse_str(&text, Path::new("guards.toml"))
            .unwrap_or_else(|e| panic!("{e:#?}"))
    }

    async fn drop(self) {
        drop(self.client);
        let pg = connect("postgres").await;
        pg.batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", self.db))
            .await
            .unwrap();
    }

    /// Runs `sql` and expects it to fail with `code`; returns the message.
    async fn refused(&self, sql: &str, code: &SqlState) -> String {
        let e = self
            .client
            .batch_execute(sql)
            .await
            .err()
            .unwrap_or_else(|| panic!("{sql} was accepted"));
        let db = e.as_db_error().unwrap_or_else(|| panic!("{sql}: {e}"));
        assert_eq!(db.code(), code, "{sql}: {}", db.message());
        db.message().to_owned()
    }

    async fn count(&self, sql: &str) -> i64 {
        self.client.query_one(sql, &[]).await.unwrap().get(0)
    }
}

fn cipher(table: &str, column: &str, mode: Mode) -> FieldCipher {
    let dek = Dek::from_bytes([7; 32]);
    let col = ColumnId {
        tenant: "acme",
        schema: "public",
        table,
        column,
    };
    FieldCipher::new(&dek, 1, &col, mode)
}

fn count_lines(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

async fn install_ok(cfg: &Config) -> Vec<String> {
    guards::install(cfg)
        .await
        .unwrap_or_else(|e| panic!("install failed:\n{e}"))
}

const CUSTOMERS: &str = "[[table]]\nname = \"customers\"\n[table.columns]\n\
     email = \"deterministic\"\ndoc = \"randomized\"\nnote = \"randomized\"\nnick = \"randomized\"\n";

#[tokio::test]
async fn check_constraints_admit_only_ciphertext_and_null() {
    let s = Scratch::new(
        "ct",
        // `nick` has a case-insensitive collation, on which PostgreSQL
        // refuses regular expressions unless the check says COLLATE "C".
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE TABLE customers (id serial PRIMARY KEY, email text, doc bytea, note varchar,
                                 nick text COLLATE ci, plain text)",
    )
    .await;
    let cfg = s.config(CUSTOMERS);
    let before = guards::status(&cfg).await.unwrap();
    assert!(!before.ok(), "{before}");
    assert!(
        before
            .to_string()
            .contains("CHECK byokpg_ct_email on column email: missing"),
        "{before}"
    );

    let first = install_ok(&cfg).await;
    assert_eq!(count_lines(&first, "added and validated"), 4, "{first:#?}");
    assert!(
        first
            .iter()
            .all(|l| l.starts_with("region us: public.customers: ")),
        "{first:#?}"
    );
    let second = install_ok(&cfg).await;
    assert_eq!(
        count_lines(&second, ": in place"),
        4,
        "idempotent: {second:#?}"
    );
    assert_eq!(count_lines(&second, "added"), 0, "{second:#?}");
    let after = guards::status(&cfg).await.unwrap();
    assert!(after.ok(), "{after}");

    direct_writes_to_customers(&s).await;

    customers_guards_are_repaired(&s, &cfg).await;
    s.drop().await;
}

/// Writes that bypass the proxy: plaintext fails, ciphertext and NULL pass.
async fn direct_writes_to_customers(s: &Scratch) {
    for sql in [
        "INSERT INTO customers (email) VALUES ('alice@example.com')",
        "INSERT INTO customers (email) VALUES ('byok1:AQ==')",
        "INSERT INTO customers (note) VALUES ('plain note')",
        "INSERT INTO customers (nick) VALUES ('BYOK1:AQEAAAABXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX')",
        "INSERT INTO customers (doc) VALUES ('\\x68656c6c6f'::bytea)",
        "INSERT INTO customers (doc) VALUES (decode('0101', 'hex'))",
    ] {
        s.refused(sql, &SqlState::CHECK_VIOLATION).await;
    }

    let email =
        cipher("customers", "email", Mode::Deterministic).encrypt_text(b"alice@example.com");
    let note = cipher("customers", "note", Mode::Randomized).encrypt_text(b"");
    let doc = cipher("customers", "doc", Mode::Randomized).encrypt(b"\x00binary");
    let nick = cipher("customers", "nick", Mode::Randomized).encrypt_text(b"Al");
    s.client
        .execute(
            "INSERT INTO customers (email, note, doc, nick, plain) VALUES ($1, $2, $3, $4, 'x')",
            &[&email, &note, &doc, &nick],
        )
        .await
        .unwrap();
    s.client
        .batch_execute(
            "INSERT INTO customers (email, note, doc, nick) VALUES (NULL, NULL, NULL, NULL)",
        )
        .await
        .unwrap();
    s.refused(
        "UPDATE customers SET email = 'bob@example.com'",
        &SqlState::CHECK_VIOLATION,
    )
    .await;
    assert_eq!(s.count("SELECT count(*) FROM customers").await, 2);
}

/// A dropped or edited constraint shows in status; install repairs it.
async fn customers_guards_are_repaired(s: &Scratch, cfg: &Config) {
    // A dropped guard shows in status, and install puts it back.
    s.client
        .batch_execute("ALTER TABLE customers DROP CONSTRAINT byokpg_ct_email")
        .await
        .unwrap();
    let dropped = guards::status(cfg).await.unwrap();
    assert!(!dropped.ok(), "{dropped}");
    assert!(dropped.to_string().contains("3 of 4 in place"), "{dropped}");
    let again = install_ok(cfg).await;
    assert_eq!(
        count_lines(
            &again,
            "byokpg_ct_email on column email: added and validated"
        ),
        1,
        "{again:#?}"
    );

    // A constraint under byokpg's name that is not ours is replaced.
    s.client
        .batch_execute(
            "ALTER TABLE customers DROP CONSTRAINT byokpg_ct_note, ADD CONSTRAINT byokpg_ct_note CHECK (true)",
        )
        .await
        .unwrap();
    let edited = guards::status(cfg).await.unwrap();
    assert!(
        !edited.ok() && edited.to_string().contains("differs"),
        "{edited}"
    );
    let fixed = install_ok(cfg).await;
    assert_eq!(
        count_lines(&fixed, "replaced and validated"),
        1,
        "{fixed:#?}"
    );
    assert!(guards::status(cfg).await.unwrap().ok());
    s.refused(
        "INSERT INTO customers (note) VALUES ('plain')",
        &SqlState::CHECK_VIOLATION,
    )
    .await;
}

const AUDIT: &str = "[[table]]\nname = \"audit_log\"\nappend_only = true\n[table.columns]\npayload = \"randomized\"\n\
     [[table]]\nname = \"events\"\nappend_only = true\n";

#[tokio::test]
async fn append_only_tables_reject_update_delete_truncate() {
    let s = Scratch::new(
        "ao",
        "CREATE TABLE audit_log (id bigserial PRIMARY KEY, payload text);
         CREATE TABLE events (id int, at int) PARTITION BY RANGE (at);
         CREATE TABLE events_1 PARTITION OF events FOR VALUES FROM (0) TO (100);
         CREATE TABLE events_2 PARTITION OF events FOR VALUES FROM (100) TO (200);",
    )
    .await;
    let cfg = s.config(AUDIT);
    let lines = install_ok(&cfg).await;
    assert_eq!(
        count_lines(&lines, "function byokpg.reject_change() installed"),
        1,
        "{lines:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("trigger byokpg_no_truncate on partition public.events_2: added")),
        "{lines:#?}"
    );

    // One line per guard, each table's constraint before its triggers.
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(
        at("byokpg_ct_payload") < at("audit_log: trigger byokpg_append_only"),
        "{lines:#?}"
    );
    assert!(
        at("audit_log: trigger") < at("public.events: trigger"),
        "{lines:#?}"
    );
    direct_changes_to_append_only_tables(&s).await;

    let report = guards::status(&cfg).await.unwrap();
    assert!(report.ok(), "{report}");
    let again = install_ok(&cfg).await;
    assert!(
        again.iter().all(|l| l.ends_with(": in place")),
        "{again:#?}"
    );

    append_only_guards_are_repaired(&s, &cfg).await;
    s.drop().await;
}

/// INSERT passes; UPDATE, DELETE, TRUNCATE in any form fail with 42501.
async fn direct_changes_to_append_only_tables(s: &Scratch) {
    let payload = cipher("audit_log", "payload", Mode::Randomized).encrypt_text(b"login");
    s.client
        .execute(
            "INSERT INTO audit_log (payload) VALUES ($1), (NULL)",
            &[&payload],
        )
        .await
        .unwrap();
    s.client
        .batch_execute("INSERT INTO events VALUES (1, 5), (2, 150)")
        .await
        .unwrap();

    let msg = s
        .refused(
            "UPDATE audit_log SET payload = NULL",
            &SqlState::INSUFFICIENT_PRIVILEGE,
        )
        .await;
    assert!(
        msg.starts_with("byokpg: table public.audit_log is append-only"),
        "{msg}"
    );
    for sql in [
        "DELETE FROM audit_log WHERE id = 1",
        "TRUNCATE audit_log",
        "WITH d AS (DELETE FROM audit_log RETURNING 1) SELECT count(*) FROM d",
        "INSERT INTO audit_log (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET payload = NULL",
        "UPDATE events SET id = 3",
        "DELETE FROM events_1",
        "TRUNCATE events",
        "TRUNCATE events_2",
    ] {
        s.refused(sql, &SqlState::INSUFFICIENT_PRIVILEGE).await;
    }
    assert_eq!(s.count("SELECT count(*) FROM audit_log").await, 2);
    assert_eq!(s.count("SELECT count(*) FROM events").await, 2);
}

/// Drop, disable and edit: status sees each, install repairs each.
async fn append_only_guards_are_repaired(s: &Scratch, cfg: &Config) {
    s.client
        .batch_execute(
            "DROP TRIGGER byokpg_no_truncate ON events_2;
             ALTER TABLE audit_log DISABLE TRIGGER byokpg_append_only;
             CREATE OR REPLACE FUNCTION byokpg.reject_change() RETURNS trigger
                 LANGUAGE plpgsql AS $$BEGIN RETURN NULL; END$$;",
        )
        .await
        .unwrap();
    let broken = guards::status(cfg).await.unwrap().to_string();
    for needle in [
        "function byokpg.reject_change(): differs",
        "trigger byokpg_no_truncate on partition public.events_2: missing",
        "trigger byokpg_append_only: disabled",
    ] {
        assert!(broken.contains(needle), "{needle} not in\n{broken}");
    }
    let repaired = install_ok(cfg).await;
    assert_eq!(
        count_lines(&repaired, "trigger byokpg_append_only: enabled"),
        1,
        "{repaired:#?}"
    );
    assert!(guards::status(cfg).await.unwrap().ok());
    s.refused("TRUNCATE events_2", &SqlState::INSUFFICIENT_PRIVILEGE)
        .await;
    s.refused("DELETE FROM audit_log", &SqlState::INSUFFICIENT_PRIVILEGE)
        .await;
}

#[tokio::test]
async fn legacy_plaintext_leaves_the_constraint_not_valid() {
    let s = Scratch::new(
        "legacy",
        "CREATE TABLE legacy (id int, ssn text);
         INSERT INTO legacy VALUES (1, 'secret-ssn-1'), (2, 'secret-ssn-2'), (3, 'secret-ssn-3'), (4, NULL);",
    )
    .await;
    let ct = cipher("legacy", "ssn", Mode::Randomized).encrypt_text(b"123-45-6789");
    s.client
        .execute("INSERT INTO legacy VALUES (5, $1)", &[&ct])
        .await
        .unwrap();
    let cfg = s.config("[[table]]\nname = \"legacy\"\n[table.columns]\nssn = \"randomized\"\n");
    let lines = install_ok(&cfg).await;
    assert_eq!(
        count_lines(
            &lines,
            "added but left NOT VALID: 3 existing row(s) hold values that are not byokpg ciphertext"
        ),
        1,
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("secret-ssn")),
        "values never shown: {lines:#?}"
    );
    let report = guards::status(&cfg).await.unwrap();
    assert!(report.ok(), "NOT VALID counts as present: {report}");
    assert!(report.to_string().contains("NOT VALID"), "{report}");
    s.refused(
        "INSERT INTO legacy VALUES (6, 'new plaintext')",
        &SqlState::CHECK_VIOLATION,
    )
    .await;

    let still = install_ok(&cfg).await;
    assert_eq!(
        count_lines(&still, "still NOT VALID: 3 existing row(s)"),
        1,
        "{still:#?}"
    );
    s.client
        .batch_execute("UPDATE legacy SET ssn = NULL WHERE ssn LIKE 'secret%'")
        .await
        .unwrap();
    let validated = install_ok(&cfg).await;
    assert_eq!(
        count_lines(&validated, "byokpg_ct_ssn on column ssn: validated"),
        1,
        "{validated:#?}"
    );
    let report = guards::status(&cfg).await.unwrap();
    assert!(
        report.ok() && !report.to_string().contains("NOT VALID"),
        "{report}"
    );
    s.drop().await;
}

#[tokio::test]
async fn problems_are_reported_and_other_tables_still_guarded() {
    let long = format!("c{}", "x".repeat(59));
    let s = Scratch::new(
        "problems",
        &format!(
            "CREATE TABLE \"Odd Table\" (\"E-mail\" text, \"user\" bytea, n int, v varchar(10), {long} text);
             CREATE VIEW v AS SELECT 'x'::text AS a;"
        ),
    )
    .await;
    let mut cfg = s.config(&format!(
        "[[table]]\nname = '\"Odd Table\"'\n[table.columns]\n'\"E-mail\"' = \"deterministic\"\n\
         user = \"randomized\"\nn = \"randomized\"\nv = \"deterministic\"\n{long} = \"randomized\"\n\
         gone = \"randomized\"\n\
         [[table]]\nname = \"nope\"\nappend_only = true\n\
         [[table]]\nname = \"v\"\n[table.columns]\na = \"randomized\"\n"
    ));
    let down = byokpg::config::parse_str(
        "[regions.down]\ndsn = \"postgres://postgres:Hunter2Secret@127.0.0.1:1/x?sslmode=disable\"\n",
        Path::new("down.toml"),
    )
    .unwrap();
    cfg.regions.extend(down.regions);

    let err = guards::install(&cfg).await.unwrap_err();
    let guards::GuardsError::Incomplete { lines, problems } = &err;
    let shown = err.to_string();
    for needle in [
        "region down: cannot connect",
        "CHECK byokpg_ct_n on column n: cannot be installed: the column has type integer",
        "column v: cannot be installed: the column has type character varying(10)",
        "column gone: cannot be installed: the column does not exist",
        "region us: public.nope: table does not exist",
        "region us: public.v: is a view",
        "left 6 problem(s)",
    ] {
        assert!(shown.contains(needle), "{needle} not in\n{shown}");
    }
    assert_eq!(*problems, 6, "{lines:#?}");
    assert!(!shown.contains("Hunter2Secret"), "{shown}");
    assert_eq!(count_lines(lines, "added and validated"), 3, "{lines:#?}");

    // The guards that could be installed are there, with names ≤ 63 bytes.
    let names: Vec<String> = s
        .client
        .query(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = '\"Odd Table\"'::regclass AND convalidated ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"byokpg_ct_E-mail".to_owned()), "{names:?}");
    assert!(names.contains(&"byokpg_ct_user".to_owned()), "{names:?}");
    assert!(names.contains(&guards::constraint_name(&long)), "{names:?}");
    assert!(names.iter().all(|n| n.len() <= 63), "{names:?}");
    s.refused(
        "INSERT INTO \"Odd Table\" (\"E-mail\") VALUES ('x@y')",
        &SqlState::CHECK_VIOLATION,
    )
    .await;
    s.refused(
        &format!("INSERT INTO \"Odd Table\" ({long}) VALUES ('x')"),
        &SqlState::CHECK_VIOLATION,
    )
    .await;
    let report = guards::status(&cfg).await.unwrap();
    assert!(!report.ok(), "{report}");
    s.drop().await;
}

#[tokio::test]
async fn concurrent_installs_both_succeed() {
    let s = Scratch::new(
        "race",
        "CREATE TABLE t1 (a text, b bytea); CREATE TABLE t2 (x text);",
    )
    .await;
    let cfg = s.config(
        "[[table]]\nname = \"t1\"\n[table.columns]\na = \"deterministic\"\nb = \"randomized\"\n\
         [[table]]\nname = \"t2\"\nappend_only = true\n[table.columns]\nx = \"randomized\"\n",
    );
    // A fresh database: both also race to create the byokpg schema.
    let (one, two) = tokio::join!(guards::install(&cfg), guards::install(&cfg));
    let (one, two) = (one.unwrap(), two.unwrap());
    assert_eq!(
        count_lines(&one, "added") + count_lines(&two, "added"),
        5,
        "{one:#?}\n{two:#?}"
    );
    assert!(guards::status(&cfg).await.unwrap().ok());
    let constraints = s
        .count("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'byokpg\\_ct\\_%'")
        .await;
    assert_eq!(constraints, 3);
    let triggers = s
        .count("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'byokpg\\_%'")
        .await;
    assert_eq!(triggers, 2);
    s.drop().await;
}
