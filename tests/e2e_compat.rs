//! The client compatibility matrix (docs/COMPATIBILITY.md): each client
//! writes, reads back decrypted, updates and looks up (deterministic `=`) a
//! protected table through the proxy, and each test then reads the region
//! database directly: every protected value must be a `byok1:` envelope
//! without the plaintext, the unprotected column must be plaintext.
//!
//! Rows of the matrix already covered elsewhere on protected tables:
//! tokio-postgres (tests/e2e_encryption.rs), node `pg`
//! (`node_pg_encryption_script`), psql literals (`psql_escape_dollar_and_
//! unicode_literals_round_trip`); pgbench's TPC-B run on plain tables is in
//! tests/e2e_pgbench.rs.

mod common;
#[path = "e2e_compat/sqlx_client.rs"]
mod sqlx_client;

use std::path::PathBuf;
use std::process::Command;

use common::{Proxy, assert_success, create_in_regions, direct_client, region_db, unique_name};

const USER: &str = "acme_app";
const REGION: &str = "eu";

/// A protected table in acme's region and a SCRAM proxy with its policy.
struct Compat {
    proxy: Proxy,
    table: String,
    /// In every protected plaintext; never in the table name.
    marker: String,
}

impl Compat {
    fn new() -> Self {
        let table = unique_name("compat");
        let marker = unique_name("pt");
        common::run_async({
            let ddl = format!(
                "create table {table} (id serial primary key, tenant_id text, email text, \
                 ssn text, notes text, plain text)"
            );
            async move { create_in_regions(&[REGION], &ddl).await }
        });
        let policy = format!(
            "[[table]]\nname = \"{table}\"\ntenant_column = \"tenant_id\"\n[table.columns]\n\
             email = \"deterministic\"\nssn = \"randomized\"\nnotes = \"randomized\"\n"
        );
        let proxy = Proxy::builder().scram().policy_table(&policy).start();
        proxy.require_proxy();
        Self {
            proxy,
            table,
            marker,
        }
    }

    fn dsn(&self) -> String {
        self.proxy
            .dsn(USER, &self.proxy.password(USER), Some("acme"))
    }

    /// Asserts what the region database holds; returns the number of rows.
    async fn assert_stored(&self) -> usize {
        let d = direct_client(REGION).await;
        let sql = format!("select email, ssn, notes, plain from {} ", self.table);
        let rows = d.query(&sql, &[]).await.expect("direct read of the table");
        for r in &rows {
            for (i, col) in ["email", "ssn", "notes"].into_iter().enumerate() {
                if let Some(s) = r.get::<_, Option<String>>(i) {
                    assert!(s.starts_with("byok1:AQ"), "{col} stored as {s:.100}");
                    assert!(!s.contains(&self.marker), "{col} holds plaintext: {s:.100}");
                }
            }
            if let Some(p) = r.get::<_, Option<String>>(3) {
                assert!(p.starts_with("plain-"), "plain column stored as {p:.100}");
            }
        }
        rows.len()
    }

    /// Runs a tests/clients script with PROXY_DSN DIRECT_DSN TABLE MARKER
    /// (and `extra`), expects `ok_line`, then checks the stored rows: exactly
    /// `rows` of them (a refused statement must have stored nothing).
    fn python(&self, module: &str, script: &str, extra: &[&str], ok_line: &str, rows: usize) {
        let python = python_with(module);
        let path = common::repo_root().join("tests/clients").join(script);
        let out = common::run(
            Command::new(python)
                .arg(path)
                .arg(self.dsn())
                .arg(common::local_dsn(&region_db(REGION)))
                .arg(&self.table)
                .arg(&self.marker)
                .args(extra),
        );
        let stdout = assert_success(script, &out);
        assert!(stdout.contains(ok_line), "{script}: {stdout}");
        assert_eq!(
            block_on(self.assert_stored()),
            rows,
            "{script}: rows stored"
        );
    }
}

/// Runs a future on a fresh runtime, on this (non-async) test thread; unlike
/// `common::run_async` it may borrow.
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// The venv's python with `module` importable (scripts/test.sh installs it).
fn python_with(module: &str) -> PathBuf {
    let py = common::venv_python();
    let out = common::run(Command::new(&py).args(["-c", &format!("import {module}")]));
    assert!(
        out.status.success(),
        "{} cannot import {module}: run `bash scripts/test.sh` (its venv step installs it)\n{}",
        py.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    py
}

#[test]
fn psycopg_with_server_side_prepare() {
    Compat::new().python(
        "psycopg",
        "compat_psycopg.py",
        &["prepared"],
        "psycopg prepared: ok",
        8,
    );
}

#[test]
fn psycopg_without_server_side_prepare() {
    Compat::new().python(
        "psycopg",
        "compat_psycopg.py",
        &["unprepared"],
        "psycopg unprepared: ok",
        8,
    );
}

#[test]
fn asyncpg() {
    Compat::new().python("asyncpg", "compat_asyncpg.py", &[], "asyncpg: ok", 10);
}

#[test]
fn sqlalchemy_orm() {
    Compat::new().python(
        "sqlalchemy",
        "compat_sqlalchemy.py",
        &[],
        "sqlalchemy: ok",
        6,
    );
}

#[test]
fn psql_protected_table() {
    let c = Compat::new();
    let (t, m) = (&c.table, &c.marker);
    let script = format!(
        "insert into {t} (email, ssn, notes, plain) values \
           ('{m}-p1@example.com', '{m}-ssn-1', '{m} note 1', 'plain-1'), \
           ('{m}-p2@example.com', '{m}-ssn-2', null, 'plain-2');\n\
         select email, ssn, notes, plain from {t} order by id;\n\
         select ssn from {t} where email = '{m}-p2@example.com';\n\
         update {t} set ssn = '{m}-ssn-2b', notes = '{m} note 2' where email = '{m}-p2@example.com';\n\
         select ssn, notes from {t} where email = '{m}-p2@example.com';\n\
         select count(*) from {t} where email in ('{m}-p1@example.com', '{m}-nobody');\n"
    );
    std::fs::write(c.proxy.dir().join("compat.sql"), script).expect("write compat.sql");
    let out = c.proxy.psql(&c.dsn(), &["-f", "compat.sql"]);
    let stdout = assert_success("psql compat.sql", &out);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            format!("{m}-p1@example.com|{m}-ssn-1|{m} note 1|plain-1"),
            format!("{m}-p2@example.com|{m}-ssn-2||plain-2"),
            format!("{m}-ssn-2"),
            format!("{m}-ssn-2b|{m} note 2"),
            "1".to_owned(),
        ]
    );
    assert_eq!(block_on(c.assert_stored()), 2);
}

/// pgbench with a custom script on the protected table, in each query mode:
/// insert, deterministic lookup, update. pgbench does not look at results,
/// so they are read back through the proxy afterwards.
#[test]
fn pgbench_protected_table_all_query_modes() {
    let c = Compat::new();
    let (t, m) = (&c.table, &c.marker);
    let script = format!(
        "insert into {t} (email, ssn, notes, plain) values (:email, :ssn, :notes, 'plain-pgbench');\n\
         select ssn, notes from {t} where email = :email;\n\
         update {t} set notes = :notes2 where email = :email;\n"
    );
    std::fs::write(c.proxy.dir().join("compat.pgbench"), script).expect("write script");
    let modes = ["simple", "extended", "prepared"];
    for mode in modes {
        // Simple mode pastes the variable into the SQL text: it must be a
        // quoted literal there. The other modes send it as a parameter.
        let q = |v: String| {
            if mode == "simple" {
                format!("'{v}'")
            } else {
                v
            }
        };
        let vars = [
            format!("email={}", q(format!("{m}-{mode}@example.com"))),
            format!("ssn={}", q(format!("{m}-ssn-{mode}"))),
            format!("notes={}", q(format!("{m} first {mode}"))),
            format!("notes2={}", q(format!("{m} second {mode}"))),
        ];
        let mut cmd = Command::new("pgbench");
        cmd.args([
            "-n",
            "-t",
            "10",
            "-c",
            "2",
            "-M",
            mode,
            "-f",
            "compat.pgbench",
        ])
        .current_dir(c.proxy.dir());
        for v in &vars {
            cmd.arg("-D").arg(v);
        }
        let out = common::run(cmd.arg(c.dsn()));
        let stdout = assert_success(&format!("pgbench -M {mode}"), &out);
        assert!(
            stdout.contains("number of transactions actually processed: 20/20"),
            "pgbench -M {mode}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    block_on(async {
        let client = c.proxy.connect(USER, Some("acme")).await;
        let sql = format!("select ssn, notes from {t} where email = $1");
        for mode in modes {
            let rows = client
                .query(&sql, &[&format!("{m}-{mode}@example.com")])
                .await
                .expect("lookup through the proxy");
            assert_eq!(rows.len(), 20, "-M {mode}: rows found by email");
            for r in rows {
                assert_eq!(r.get::<_, String>(0), format!("{m}-ssn-{mode}"));
                assert_eq!(r.get::<_, String>(1), format!("{m} second {mode}"));
            }
        }
        assert_eq!(c.assert_stored().await, 60);
    });
}

#[test]
fn sqlx_postgres() {
    let c = Compat::new();
    block_on(sqlx_client::round_trips(&c.dsn(), &c.table, &c.marker));
    assert_eq!(block_on(c.assert_stored()), sqlx_client::ROWS);
}
