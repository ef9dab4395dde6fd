//! KMS behaviour through the real proxy with the `local` provider (the
//! cloud providers have their own files): the customer-visible KMS log,
//! single flight under concurrency, per-tenant revocation (its own key
//! file replaced), admin evict, and the `keys verify`, `keys status` and
//! `kms-log` commands.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Proxy, create_in_regions, direct_client, unique_name};
use tokio_postgres::Client;

const REGION: &str = "eu";

/// A proxy with two tenants on two local KMS sections with their own key
/// files, so one can be revoked without touching the other.
struct Fx {
    proxy: Proxy,
    table: String,
    /// The tenant whose key file the tests replace.
    victim: String,
    /// A tenant of the same region on another key file.
    other: String,
    victim_key: PathBuf,
}

const KEY_A: &str = "1a";
const KEY_B: &str = "2b";

fn write_key(path: &Path, byte: &str) {
    std::fs::write(path, format!("{}\n", byte.repeat(32))).unwrap();
}

impl Fx {
    async fn new(ttl: &str) -> Self {
        let table = unique_name("kmslog");
        let victim = unique_name("kv");
        let other = unique_name("ko");
        create_in_regions(
            &[REGION],
            &format!("create table {table} (id serial primary key, tenant_id text, secret text)"),
        )
        .await;
        let dir = tempfile::tempdir().unwrap().keep();
        let victim_key = dir.join("victim.key");
        let other_key = dir.join("other.key");
        write_key(&victim_key, KEY_A);
        write_key(&other_key, KEY_B);
        let local = |p: &Path| {
            format!(
                "provider = \"local\"\nallow_insecure_local = true\nkey_file = \"{}\"\ntimeout = \"2s\"",
                p.display()
            )
        };
        let extra = format!("dek_cache_ttl = \"{ttl}\"");
        let proxy = Proxy::builder()
            .user("kms_app", "kms_app-pw", &[&victim, &other])
            .kms("victim", &local(&victim_key))
            .kms("other", &local(&other_key))
            .tenant_on(&victim, REGION, "victim", &format!("{victim}-kek"), &extra)
            .tenant_on(&other, REGION, "other", &format!("{other}-kek"), &extra)
            .policy_table(&format!(
                "[[table]]\nname = \"{table}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nsecret = \"randomized\"\n"
            ))
            .start();
        Self {
            proxy,
            table,
            victim,
            other,
            victim_key,
        }
    }

    async fn client(&self, tenant: &str) -> Client {
        self.proxy.connect("kms_app", Some(tenant)).await
    }

    async fn insert(&self, tenant: &str, secret: &str) {
        self.client(tenant)
            .await
            .execute(
                &format!("insert into {} (secret) values ($1)", self.table),
                &[&secret],
            )
            .await
            .unwrap_or_else(|e| panic!("insert as {tenant}: {e:?}\n{}", self.proxy.log()));
    }

    /// Reads the tenant's secrets, or the error's (SQLSTATE, message).
    async fn read(&self, tenant: &str) -> Result<Vec<String>, (String, String)> {
        let c = self.client(tenant).await;
        // Only the tenant's own rows: another tenant's ciphertext is XX001.
        let sql = format!(
            "select secret from {} where tenant_id = $1 order by id",
            self.table
        );
        c.query(&sql, &[&tenant])
            .await
            .map(|rows| rows.iter().map(|r| r.get(0)).collect())
            .map_err(|e| {
                let db = e.as_db_error().expect("a server error");
                (db.code().code().to_owned(), db.message().to_owned())
            })
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_byokpg"))
            .args(args)
            .arg("--config")
            .arg(&self.proxy.config_path)
            .output()
            .unwrap()
    }

    fn evict(&self, tenant: &str) {
        let (status, body) = self
            .proxy
            .admin_post(&format!("/admin/tenants/{tenant}/evict"), Some(ADMIN_TOKEN));
        assert_eq!(status, 200, "{body}");
    }
}

/// `(operation, outcome, error_code)` of the tenant's KMS log, oldest first.
async fn kms_log(tenant: &str) -> Vec<(String, String, Option<String>)> {
    direct_client(REGION)
        .await
        .query(
            "select operation, outcome, error_code from byokpg.kms_log where tenant = $1 order by id",
            &[&tenant],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// The log is written in the background: wait until `pred` holds.
async fn wait_log(
    tenant: &str,
    pred: impl Fn(&[(String, String, Option<String>)]) -> bool,
) -> Vec<(String, String, Option<String>)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = kms_log(tenant).await;
        if pred(&log) || Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn count(log: &[(String, String, Option<String>)], op: &str, outcome: &str) -> usize {
    log.iter()
        .filter(|(o, r, _)| o == op && r == outcome)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_cold_connections_cause_one_unwrap_in_the_kms_log() {
    let fx = Fx::new("5m").await;
    fx.insert(&fx.victim, "s3cret-one").await;
    let log = wait_log(&fx.victim, |l| count(l, "generate", "success") == 1).await;
    assert_eq!(count(&log, "generate", "success"), 1, "{log:?}");
    // Cold again: the DEK is dropped from the cache.
    fx.evict(&fx.victim);
    let clients: Vec<Client> =
        futures_util::future::join_all((0..20).map(|_| fx.client(&fx.victim))).await;
    let sql = format!(
        "select secret from {} where tenant_id = '{}'",
        fx.table, fx.victim
    );
    let reads = futures_util::future::join_all(clients.iter().map(|c| c.query(&sql, &[]))).await;
    for r in reads {
        let rows = r.unwrap();
        assert_eq!(rows[0].get::<_, String>(0), "s3cret-one");
    }
    let log = wait_log(&fx.victim, |l| count(l, "unwrap", "success") >= 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log2 = kms_log(&fx.victim).await;
    assert_eq!(log, log2, "the log kept growing");
    assert_eq!(count(&log, "unwrap", "success"), 1, "{log:?}");
    // The log holds no key material: only these columns exist, and no
    // value looks like a key.
    let dump = direct_client(REGION)
        .await
        .query(
            "select row_to_json(l)::text from byokpg.kms_log l where tenant = $1",
            &[&fx.victim],
        )
        .await
        .unwrap();
    for r in dump {
        let line: String = r.get(0);
        assert!(!line.contains(&KEY_A.repeat(8)), "{line}");
        assert!(line.contains(&format!("{}-kek", fx.victim)), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_fails_its_tenant_only_evict_is_immediate_and_recovery_is_automatic() {
    let fx = Fx::new("2s").await;
    fx.insert(&fx.victim, "victim-data").await;
    fx.insert(&fx.other, "other-data").await;
    // The customer revokes: the KEK is replaced by another one.
    write_key(&fx.victim_key, "77");
    // Cached DEK: still readable until the TTL passes...
    assert_eq!(fx.read(&fx.victim).await.unwrap(), ["victim-data"]);
    // ...but an admin evict ends that at once.
    fx.evict(&fx.victim);
    let (code, msg) = fx.read(&fx.victim).await.unwrap_err();
    assert_eq!(code, "58000", "{msg}");
    assert!(msg.starts_with("byokpg: "), "{msg}");
    assert!(
        msg.contains(&fx.victim) && msg.contains("access denied"),
        "{msg}"
    );
    assert!(!msg.contains("victim-data"));
    // Writes need the key too.
    let c = fx.client(&fx.victim).await;
    let e = c
        .execute(
            &format!("insert into {} (secret) values ('x')", fx.table),
            &[],
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "58000");
    // The connection and the other tenant are unaffected.
    c.simple_query("select 1").await.unwrap();
    assert_eq!(fx.read(&fx.other).await.unwrap(), ["other-data"]);
    // The denial is in the victim's KMS log.
    let log = wait_log(&fx.victim, |l| count(l, "unwrap", "denied") >= 1).await;
    assert!(
        log.iter().any(|(o, r, c)| o == "unwrap"
            && r == "denied"
            && c.as_deref() == Some("access_denied")),
        "{log:?}"
    );
    // The customer restores the key: access comes back by itself.
    write_key(&fx.victim_key, KEY_A);
    assert_eq!(fx.read(&fx.victim).await.unwrap(), ["victim-data"]);
    assert!(fx.proxy.log().matches("panicked").count() == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_takes_effect_within_the_ttl_without_evict() {
    let fx = Fx::new("1s").await;
    fx.insert(&fx.victim, "ttl-data").await;
    std::fs::remove_file(&fx.victim_key).unwrap();
    let start = Instant::now();
    loop {
        match fx.read(&fx.victim).await {
            Ok(v) => assert_eq!(v, ["ttl-data"]),
            Err((code, msg)) => {
                assert_eq!(code, "58000", "{msg}");
                assert!(msg.contains("destroyed"), "{msg}");
                break;
            }
        }
        // TTL 1 s + the 2 s KMS timeout bounds the lag.
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "still readable after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_verify_status_and_kms_log_commands() {
    let fx = Fx::new("5m").await;
    fx.insert(&fx.victim, "a").await;
    fx.insert(&fx.victim, "b").await;

    let out = fx.cli(&["keys", "verify", "--tenant", &fx.victim]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("verdict: OK"), "{text}");
    assert!(text.contains("unwrap of stored DEK version 1"), "{text}");

    let out = fx.cli(&["keys", "status", "--tenant", &fx.victim, "--format", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tenant"], fx.victim.as_str());
    assert_eq!(v["kms"], "victim");
    assert_eq!(v["active_version"], 1);
    assert_eq!(v["versions"][0]["rows"], 2, "{v}");
    assert_eq!(v["versions"][0]["status"], "active");
    assert!(v["job"].is_null());

    // Revoked: verify names the cause and exits 1.
    write_key(&fx.victim_key, "99");
    let out = fx.cli(&["keys", "verify", "--tenant", &fx.victim]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("verdict: FAILED") && text.contains("access_denied"),
        "{text}"
    );
    let out = fx.cli(&["check", "--kms"]);
    assert_eq!(out.status.code(), Some(1));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains(&format!("tenants.{}.key: live KMS check failed", fx.victim)),
        "{all}"
    );
    assert!(!all.contains(&format!("tenants.{}.key", fx.other)), "{all}");
    // Unknown tenant: a usage error.
    assert_eq!(
        fx.cli(&["keys", "verify", "--tenant", "nobody"])
            .status
            .code(),
        Some(2)
    );

    // kms-log: CSV with the SPEC's header, JSON lines with its keys.
    let out = fx.cli(&["kms-log", "--tenant", &fx.victim]);
    assert!(out.status.success());
    let csv = String::from_utf8_lossy(&out.stdout);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("time,tenant,operation,outcome,error_code,key_ref,instance")
    );
    let ops: Vec<&str> = lines.map(|l| l.split(',').nth(2).unwrap()).collect();
    for op in ["generate", "describe", "unwrap"] {
        assert!(ops.contains(&op), "{csv}");
    }
    let out = fx.cli(&["kms-log", "--tenant", &fx.victim, "--format", "json"]);
    let json = String::from_utf8_lossy(&out.stdout);
    let denied = json
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["outcome"] == "denied")
        .count();
    assert!(denied >= 1, "{json}");
    for key in [
        "time",
        "tenant",
        "operation",
        "outcome",
        "error_code",
        "key_ref",
        "instance",
    ] {
        assert!(
            json.lines().all(|l| l.contains(&format!("\"{key}\""))),
            "{key}: {json}"
        );
    }
    let out = fx.cli(&["kms-log", "--tenant", &fx.victim, "--since", "2999-01-01"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert_eq!(
        fx.cli(&["kms-log", "--tenant", &fx.victim, "--since", "soon"])
            .status
            .code(),
        Some(2)
    );
}
