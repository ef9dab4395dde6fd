//! Append-only audit tables through the real proxy and PostgreSQL (SPEC §6):
//! every refused form is refused with 42501 and changes nothing; rows get a
//! hash chain that `byokpg audit verify` checks; tampering is located; the
//! chain stays contiguous under concurrent inserts from two proxies;
//! attestations are signed and checked; the guards' triggers back it all.

mod common;

use std::process::{Command, Output};

use common::{Proxy, create_in_regions, direct_client, expect_sqlstate, unique_name};
use tokio_postgres::Client;

/// A user of its own: the shared region databases hold other tests' keys
/// for the default tenants, made with other KMSs.
const USER: &str = "audit_app";

fn ddl(t: &str) -> String {
    format!(
        "CREATE TABLE {t} (id serial PRIMARY KEY, tenant_id text NOT NULL, \
         at timestamptz NOT NULL DEFAULT now(), kind text, amount numeric, ok bool, \
         payload text, chain_seq bigint, prev_hash text, row_hash text)"
    )
}

fn policy(t: &str) -> String {
    format!(
        "[[table]]\nname = \"{t}\"\nappend_only = true\nhash_chain = true\n\
         tenant_column = \"tenant_id\"\n[table.columns]\npayload = \"randomized\"\n"
    )
}

/// The tenant of a test: new each run, so its DEK is made by this test's
/// local KMS (the table name is unique too).
fn tenant_of(t: &str) -> String {
    format!("tn_{t}")
}

/// A fresh audit table in region eu and a proxy (the tenant has a signing
/// key on the local KMS).
async fn start(t: &str) -> Proxy {
    create_in_regions(&["eu"], &ddl(t)).await;
    proxy(t)
}

fn proxy(t: &str) -> Proxy {
    let tenant = tenant_of(t);
    let p = Proxy::builder()
        .user(USER, "audit_app-pw", &[&tenant])
        .tenant_on(
            &tenant,
            "eu",
            "dev",
            "audit-kek",
            "signing_key = \"audit-sign\"",
        )
        .policy_table(&policy(t))
        .start();
    p.require_proxy();
    p
}

/// Runs `byokpg <args> --config <proxy config>`.
fn cli(p: &Proxy, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_byokpg"))
        .args(args)
        .arg("--config")
        .arg(&p.config_path)
        .output()
        .expect("run the byokpg binary")
}

/// `audit verify`: (exit code, last stdout line, stderr).
fn verify(p: &Proxy, t: &str, extra: &[&str]) -> (i32, String, String) {
    let tenant = tenant_of(t);
    let mut args = vec!["audit", "verify", "--tenant", &tenant, "--table", t];
    args.extend_from_slice(extra);
    let out = cli(p, &args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), last, stderr)
}

#[track_caller]
fn assert_verified(p: &Proxy, t: &str, rows: u64, attestations: u64) {
    let (code, last, err) = verify(p, t, &[]);
    assert_eq!(
        (code, last.as_str()),
        (
            0,
            format!("ok: {rows} rows, {attestations} attestations").as_str()
        ),
        "stderr: {err}"
    );
}

#[track_caller]
fn assert_broken(p: &Proxy, t: &str, seq: i64, reason: &str) {
    let (code, last, err) = verify(p, t, &[]);
    assert_eq!(code, 1, "{last} / {err}");
    let want = format!("broken at chain_seq {seq}: {reason}");
    assert!(
        last.starts_with(&want),
        "wanted {want:?}, got {last:?} / {err}"
    );
}

async fn count(direct: &Client, t: &str) -> i64 {
    direct
        .query_one(&format!("SELECT count(*) FROM {t}"), &[])
        .await
        .expect("count rows")
        .get(0)
}

/// Inserts through the proxy in the forms the chain must cover.
async fn insert_rows(c: &Client, t: &str) {
    c.batch_execute(&format!(
        "INSERT INTO {t} (kind, amount, ok, payload) VALUES ('login', 1.50, true, 'alice')"
    ))
    .await
    .expect("literal insert");
    c.execute(
        &format!("INSERT INTO {t} (tenant_id, kind, payload) VALUES ($1, $2, $3)"),
        &[&tenant_of(t), &"param", &"bob"],
    )
    .await
    .expect("parameter insert");
    let rows = c
        .query(
            &format!(
                "INSERT INTO {t} (kind, payload, ok) VALUES ('multi', 'c', false), ('multi', NULL, NULL), \
                 ('multi', '', true) RETURNING chain_seq, prev_hash, row_hash"
            ),
            &[],
        )
        .await
        .expect("multi-row insert with RETURNING");
    let seqs: Vec<i64> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(seqs, vec![3, 4, 5], "RETURNING shows the chain columns");
    let (prev, hash): (String, String) = (rows[1].get(1), rows[0].get(2));
    assert_eq!(prev, hash, "each row links to the previous one");
}

#[tokio::test]
async fn every_change_to_an_append_only_table_is_refused() {
    let t = unique_name("audit_refuse");
    // An auto-updatable view would write straight through to the table.
    let view = format!("{}; CREATE VIEW {t}_v AS SELECT * FROM {t}", ddl(&t));
    create_in_regions(&["eu"], &view).await;
    let p = proxy(&t);
    let c = p.connect(USER, None).await;
    let direct = direct_client("eu").await;
    insert_rows(&c, &t).await;
    let before = count(&direct, &t).await;
    let upper = t.to_uppercase();
    let refused = [
        format!("UPDATE {t} SET kind = 'x'"),
        format!("DELETE FROM {t}"),
        format!("delete from public.\"{t}\" where id = 1"),
        format!("DELETE FROM {upper} WHERE id = 1"),
        format!("TRUNCATE {t}"),
        format!("DROP TABLE {t}"),
        format!("ALTER TABLE {t} ADD COLUMN x int"),
        format!("ALTER TABLE {t} DISABLE TRIGGER ALL"),
        format!("DROP TRIGGER zz_byokpg_chain ON {t}"),
        format!(
            "MERGE INTO {t} a USING (SELECT 1 AS id) s ON a.id = s.id WHEN MATCHED THEN DELETE"
        ),
        format!("WITH d AS (DELETE FROM {t} RETURNING *) SELECT count(*) FROM d"),
        format!("INSERT INTO {t} (kind) VALUES ('ok'); DELETE FROM {t}"),
        format!("SET search_path = public; UPDATE {t} SET ok = NULL"),
        format!("INSERT INTO {t} (kind, chain_seq) VALUES ('forged', 1)"),
        format!("INSERT INTO {t} (kind, row_hash) VALUES ('forged', 'x')"),
        format!(
            "INSERT INTO {t} (id, kind) VALUES (1, 'x') ON CONFLICT (id) DO UPDATE SET kind = 'y'"
        ),
        format!("DO $$ BEGIN DELETE FROM {t}; END $$"),
        format!("UPDATE {t}_v SET kind = 'x'"),
        format!("DELETE FROM {t}_v"),
        format!(
            "INSERT INTO {t}_v (tenant_id, kind) VALUES ('{}', 'x')",
            tenant_of(&t)
        ),
    ];
    for sql in &refused {
        let e = expect_sqlstate(c.batch_execute(sql).await, "42501");
        let msg = common::db_message(&e);
        assert!(
            msg.starts_with("byokpg:") && msg.contains(&t),
            "{sql}: {msg}"
        );
    }
    c.query(&format!("SELECT kind, payload FROM {t}_v"), &[])
        .await
        .expect("reads through the view still work");
    // Prepared (extended protocol): refused at Parse.
    expect_sqlstate(
        c.prepare(&format!("DELETE FROM {t} WHERE id = $1")).await,
        "42501",
    );
    expect_sqlstate(
        c.execute(&format!("UPDATE {t} SET kind = $1"), &[&"x"])
            .await,
        "42501",
    );
    // Pipelined: the refused one fails, nothing is changed.
    let (read, delete) = (
        format!("SELECT count(*) FROM {t}"),
        format!("DELETE FROM {t} WHERE id = $1"),
    );
    let (counted, deleted) = tokio::join!(c.query(&read, &[]), c.execute(&delete, &[&1_i32]));
    counted.expect("read in the pipeline");
    expect_sqlstate(deleted, "42501");
    assert_eq!(
        count(&direct, &t).await,
        before,
        "no refused statement changed a row"
    );
    assert_verified(&p, &t, 5, 0);
}

#[tokio::test]
async fn rows_are_chained_encrypted_and_tampering_is_located() {
    let t = unique_name("audit_chain");
    let p = start(&t).await;
    let c = p.connect(USER, None).await;
    insert_rows(&c, &t).await;
    for i in 0..3 {
        c.execute(
            &format!("INSERT INTO {t} (kind, payload) VALUES ('more', $1)"),
            &[&format!("p{i}")],
        )
        .await
        .expect("insert");
    }
    let direct = direct_client("eu").await;
    let stored: String = direct
        .query_one(&format!("SELECT payload FROM {t} WHERE chain_seq = 1"), &[])
        .await
        .expect("row 1")
        .get(0);
    assert!(
        stored.starts_with("byok1:"),
        "payload stored encrypted: {stored}"
    );
    let first: String = direct
        .query_one(
            &format!("SELECT prev_hash FROM {t} WHERE chain_seq = 1"),
            &[],
        )
        .await
        .expect("row 1")
        .get(0);
    assert_eq!(first, "0".repeat(64));
    assert_verified(&p, &t, 8, 0);
    let (code, last, _) = verify(&p, &t, &["--from", "3", "--to", "6"]);
    assert_eq!((code, last.as_str()), (0, "ok: 4 rows, 0 attestations"));
    tamper_and_restore(&p, &t, &direct).await;
    attestations(&p, &t, &direct).await;
}

/// Each tampering is detected and named; the original state verifies again.
async fn tamper_and_restore(p: &Proxy, t: &str, d: &Client) {
    // Direct edits bypass triggers the way a superuser could.
    d.batch_execute("SET session_replication_role = replica")
        .await
        .expect("replica");
    d.batch_execute(&format!("UPDATE {t} SET amount = 9.99 WHERE chain_seq = 1"))
        .await
        .expect("tamper");
    assert_broken(p, t, 1, "row changed");
    d.batch_execute(&format!("UPDATE {t} SET amount = 1.50 WHERE chain_seq = 1"))
        .await
        .expect("restore");
    assert_verified(p, t, 8, 0);

    d.batch_execute(&format!(
        "CREATE TEMP TABLE saved AS SELECT * FROM {t} WHERE chain_seq = 4; DELETE FROM {t} WHERE chain_seq = 4"
    ))
    .await
    .expect("delete a row");
    assert_broken(p, t, 4, "row missing");
    d.batch_execute(&format!(
        "INSERT INTO {t} SELECT * FROM saved; DROP TABLE saved"
    ))
    .await
    .expect("put it back");
    assert_verified(p, t, 8, 0);

    let swap = |a: i64, b: i64| {
        format!(
            "UPDATE {t} SET chain_seq = -1 WHERE chain_seq = {a}; \
             UPDATE {t} SET chain_seq = {a} WHERE chain_seq = {b}; \
             UPDATE {t} SET chain_seq = {b} WHERE chain_seq = -1"
        )
    };
    d.batch_execute(&swap(5, 6)).await.expect("swap seqs");
    assert_broken(p, t, 5, "row reordered");
    d.batch_execute(&swap(5, 6)).await.expect("swap back");
    assert_verified(p, t, 8, 0);
    d.batch_execute("SET session_replication_role = origin")
        .await
        .expect("origin");
}

async fn attestations(p: &Proxy, t: &str, d: &Client) {
    let tenant = tenant_of(t);
    let out = cli(p, &["audit", "attest", "--tenant", &tenant, "--table", t]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("attested chain_seq 8"), "{stdout}");
    assert_verified(p, t, 8, 1);
    let sig = |op: &str| {
        format!(
            "UPDATE byokpg.audit_attestations SET signature = set_byte(signature, 0, \
             get_byte(signature, 0) # 1) WHERE table_name = 'public.{t}'{op}"
        )
    };
    d.batch_execute(&sig(""))
        .await
        .expect("alter the signature");
    assert_broken(p, t, 8, "attestation");
    let (_, last, _) = verify(p, t, &[]);
    assert!(last.contains("signature does not verify"), "{last}");
    d.batch_execute(&sig(""))
        .await
        .expect("restore the signature");
    assert_verified(p, t, 8, 1);
    // Rewriting the head (even with a recomputed chain) contradicts the
    // attestation.
    d.batch_execute(&format!(
        "SET session_replication_role = replica; DELETE FROM {t} WHERE chain_seq = 8; \
         SET session_replication_role = origin"
    ))
    .await
    .expect("drop the attested head");
    assert_broken(p, t, 8, "attestation");
}

#[tokio::test]
async fn two_proxies_and_many_connections_keep_one_contiguous_chain() {
    let t = unique_name("audit_conc");
    create_in_regions(&["eu"], &ddl(&t)).await;
    let proxies = [proxy(&t), proxy(&t)];
    let mut tasks = Vec::new();
    for (pi, p) in proxies.iter().enumerate() {
        for ci in 0..4 {
            let c = p.connect(USER, None).await;
            let sql = format!("INSERT INTO {t} (kind, payload) VALUES ($1, $2)");
            tasks.push(tokio::spawn(async move {
                for i in 0..25 {
                    c.execute(&sql, &[&format!("p{pi}c{ci}"), &format!("row {i}")])
                        .await
                        .expect("concurrent insert");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("insert task");
    }
    let direct = direct_client("eu").await;
    let row = direct
        .query_one(
            &format!("SELECT count(*), min(chain_seq), max(chain_seq), count(DISTINCT chain_seq) FROM {t}"),
            &[],
        )
        .await
        .expect("summary");
    let got: (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(got, (200, 1, 200, 200), "contiguous chain_seq 1..200");
    assert_verified(&proxies[0], &t, 200, 0);
}

#[tokio::test]
async fn guards_triggers_reject_direct_changes() {
    let t = unique_name("audit_guard");
    let db = unique_name("byokpg_audit_guards");
    common::direct_client_db("postgres")
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("scratch database");
    let d = common::direct_client_db(&db).await;
    d.batch_execute(&ddl(&t)).await.expect("table");
    // Only this scratch database: guards install must not touch the shared ones.
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("byokpg.toml");
    std::fs::write(
        &cfg,
        format!(
            "[regions.eu]\ndsn = \"{}\"\n[[table]]\nname = \"{t}\"\nappend_only = true\nhash_chain = true\n",
            common::local_dsn(&db)
        ),
    )
    .expect("config");
    for args in [["setup"].as_slice(), ["guards", "install"].as_slice()] {
        let out = Command::new(env!("CARGO_BIN_EXE_byokpg"))
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .output()
            .expect("run byokpg");
        common::assert_success(&args.join(" "), &out);
    }
    d.batch_execute(&format!(
        "INSERT INTO {t} (tenant_id, kind) VALUES ('x', 'direct')"
    ))
    .await
    .expect("direct inserts are chained too");
    let seq: i64 = d
        .query_one(&format!("SELECT chain_seq FROM {t}"), &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(seq, 1);
    for sql in [
        format!("UPDATE {t} SET kind = 'x'"),
        format!("DELETE FROM {t}"),
        format!("TRUNCATE {t}"),
    ] {
        expect_sqlstate(d.batch_execute(&sql).await, "42501");
    }
    drop(d);
    common::direct_client_db("postgres")
        .await
        .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
        .await
        .expect("drop scratch database");
}

#[tokio::test]
async fn a_running_proxy_attests_on_schedule() {
    let t = unique_name("audit_sched");
    create_in_regions(&["eu"], &ddl(&t)).await;
    let tenant = tenant_of(&t);
    let p = Proxy::builder()
        .user(USER, "audit_app-pw", &[&tenant])
        .tenant_on(
            &tenant,
            "eu",
            "dev",
            "audit-kek",
            "signing_key = \"audit-sign\"",
        )
        .policy_table(&policy(&t))
        .policy_table("[audit]\nattest_every = \"1s\"\n")
        .start();
    p.require_proxy();
    let c = p.connect(USER, None).await;
    c.batch_execute(&format!("INSERT INTO {t} (kind) VALUES ('scheduled')"))
        .await
        .expect("insert");
    let direct = direct_client("eu").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let attested = loop {
        let n: i64 = direct
            .query_one(
                "SELECT count(*) FROM byokpg.audit_attestations WHERE table_name = $1 AND tenant = $2",
                &[&format!("public.{t}"), &tenant],
            )
            .await
            .expect("count attestations")
            .get(0);
        if n > 0 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert!(
        attested > 0,
        "no scheduled attestation within 15 s; log:\n{}",
        p.log()
    );
    let (code, last, err) = verify(&p, &t, &[]);
    assert_eq!(code, 0, "{last} {err}");
    assert!(last.starts_with("ok: 1 rows, "), "{last}");
}
