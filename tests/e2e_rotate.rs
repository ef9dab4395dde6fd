//! Key rotation and re-encryption through the real proxy and the real CLI
//! (docs/KEYS.md "Rotation and re-encryption"): a running proxy picks up a
//! new active version within seconds, lookups match rows under every live
//! version (literals and prepared parameters, `=`, `<>`, `IN`, text and
//! bytea), `keys reencrypt` under concurrent load changes no plaintext and
//! fails no statement, survives a SIGKILL and resumes, refuses a second
//! concurrent run, retires the old version; rotation to another KMS and
//! `--rewrap-only`.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Proxy, create_in_regions, direct_client, unique_name};
use tokio_postgres::Client;

const REGION: &str = "eu";

struct Fx {
    proxy: Proxy,
    table: String,
    tenant: String,
    key_a: PathBuf,
}

fn local(p: &Path) -> String {
    format!(
        "provider = \"local\"\nallow_insecure_local = true\nkey_file = \"{}\"\ntimeout = \"2s\"",
        p.display()
    )
}

impl Fx {
    async fn new() -> Self {
        let table = unique_name("rot");
        let tenant = unique_name("rt");
        create_in_regions(
            &[REGION],
            &format!(
                "create table {table} (id serial primary key, tenant_id text, email text, ssn text, tag bytea)"
            ),
        )
        .await;
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let key_a = dir.join("a.key");
        let key_b = dir.join("b.key");
        std::fs::write(&key_a, format!("{}\n", "3c".repeat(32))).expect("key a");
        std::fs::write(&key_b, format!("{}\n", "4d".repeat(32))).expect("key b");
        // A long TTL: picking up a new version must not wait for it.
        let proxy = Proxy::builder()
            .user("rot_app", "rot_app-pw", &[&tenant])
            .kms("a", &local(&key_a))
            .kms("b", &local(&key_b))
            .tenant_on(&tenant, REGION, "a", "kek-a", "dek_cache_ttl = \"10m\"")
            .policy_table(&format!(
                "[[table]]\nname = \"{table}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nemail = \"deterministic\"\nssn = \"randomized\"\ntag = \"deterministic\"\n"
            ))
            .start();
        Self {
            proxy,
            table,
            tenant,
            key_a,
        }
    }

    async fn client(&self) -> Client {
        self.proxy.connect("rot_app", Some(&self.tenant)).await
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.cli_cmd(args).output().expect("run byokpg")
    }

    fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_byokpg"));
        c.args(args).arg("--config").arg(&self.proxy.config_path);
        c
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "byokpg {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.cli_ok(&[
            "keys",
            "status",
            "--tenant",
            &self.tenant,
            "--format",
            "json",
        ]);
        serde_json::from_str(out.trim()).expect("status json")
    }

    async fn insert(&self, c: &Client, email: &str, ssn: &str, tag: &[u8]) -> i32 {
        c.query_one(
            &format!(
                "insert into {} (email, ssn, tag) values ($1, $2, $3) returning id",
                self.table
            ),
            &[&email, &ssn, &tag],
        )
        .await
        .unwrap_or_else(|e| panic!("insert: {e:?}\n{}", self.proxy.log()))
        .get(0)
    }

    /// The DEK version in the stored header of `email` of row `id`.
    async fn stored_version(&self, id: i32) -> i64 {
        direct_client(REGION)
            .await
            .query_one(
                &format!(
                    "select (get_byte(h,2)::bigint<<24)|(get_byte(h,3)<<16)|(get_byte(h,4)<<8)|get_byte(h,5) \
                     from (select decode(substr(email, 7, 8), 'base64') h from {} where id = $1) s",
                    self.table
                ),
                &[&id],
            )
            .await
            .expect("stored version")
            .get(0)
    }

    async fn ids(
        &self,
        c: &Client,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Vec<i32> {
        let mut v: Vec<i32> = c
            .query(&sql.replace('T', &self.table), params)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}\n{}", self.proxy.log()))
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.sort_unstable();
        v
    }

    /// Every row as the application sees it.
    async fn snapshot(&self) -> BTreeMap<i32, (String, String, Vec<u8>)> {
        self.client()
            .await
            .query(
                &format!("select id, email, ssn, tag from {}", self.table),
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("snapshot: {e:?}\n{}", self.proxy.log()))
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
            .collect()
    }

    fn rotate(&self, args: &[&str]) {
        let mut all = vec!["keys", "rotate", "--tenant", &self.tenant];
        all.extend_from_slice(args);
        self.cli_ok(&all);
    }

    /// Waits until a new insert through `c` is stored under `version`.
    async fn wait_for_version(&self, c: &Client, version: i64) -> Duration {
        let start = Instant::now();
        loop {
            let id = self.insert(c, "probe@x", "p", b"p").await;
            if self.stored_version(id).await == version {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "version {version} not picked up"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn versions(st: &serde_json::Value) -> Vec<(u64, String, i64)> {
    st["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().expect("version"),
                v["status"].as_str().expect("status").to_owned(),
                v["rows"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

/// Casts to text around the value (pgbench's `:x::text`, drivers'
/// `$1::text`) are expanded with the value during a rotation, not refused.
async fn casts_expand_with_the_value(fx: &Fx, c: &Client, ids: [i32; 4]) {
    let [old_a, old_b, new_a, new_c] = ids;
    let got = fx
        .ids(
            c,
            "select id from T where email = 'a@x'::text or email = $1::varchar",
            &[&"c@x"],
        )
        .await;
    assert_eq!(got, vec![old_a, new_a, new_c], "casts to text");
    let got = fx
        .ids(
            c,
            "select id from T where email in ('b@x'::character varying, $1::pg_catalog.text)",
            &[&"a@x"],
        )
        .await;
    assert_eq!(got, vec![old_a, old_b, new_a], "casts in IN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_picked_up_and_lookups_match_every_live_version() {
    let fx = Fx::new().await;
    let c = fx.client().await;
    let old_a = fx.insert(&c, "a@x", "s1", b"ta").await;
    let old_b = fx.insert(&c, "b@x", "s2", b"tb").await;
    assert_eq!(fx.stored_version(old_a).await, 1);
    // Prepared before the rotation, used after it.
    let by_email = c
        .prepare(&format!("select id from {} where email = $1", fx.table))
        .await
        .expect("prepare");
    let st = fx.status_json();
    assert_eq!(st["active_version"], 1);

    fx.rotate(&[]);
    // The proxy that is already running writes under version 2 within the
    // re-check interval (3 s), long before the 10 min TTL.
    let took = fx.wait_for_version(&c, 2).await;
    assert!(took < Duration::from_secs(8), "picked up after {took:?}");
    let new_a = fx.insert(&c, "a@x", "s3", b"ta").await;
    let new_c = fx.insert(&c, "c@x", "s4", b"tc").await;
    assert_eq!(fx.stored_version(new_a).await, 2);

    let a = vec![old_a, new_a];
    let got = fx
        .ids(&c, "select id from T where email = 'a@x'", &[])
        .await;
    assert_eq!(got, a, "literal =");
    let got = fx
        .ids(&c, "select id from T where email = $1", &[&"a@x"])
        .await;
    assert_eq!(got, a, "param =");
    let rows: Vec<i32> = c
        .query(&by_email, &[&"a@x"])
        .await
        .expect("prepared")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows.len(), 2, "statement prepared before the rotation");
    let got = fx
        .ids(
            &c,
            "select id from T where 'b@x' = email or email in ('c@x')",
            &[],
        )
        .await;
    assert_eq!(got, vec![old_b, new_c], "literal on the left, IN");
    let got = fx
        .ids(
            &c,
            "select id from T where email in ($1, $2)",
            &[&"a@x", &"c@x"],
        )
        .await;
    assert_eq!(got, vec![old_a, new_a, new_c], "param IN");
    let got = fx
        .ids(
            &c,
            "select id from T where email <> $1 and email not in ('probe@x') and email <> 'c@x'",
            &[&"a@x"],
        )
        .await;
    assert_eq!(got, vec![old_b], "<> and NOT IN");
    let got = fx
        .ids(&c, "select id from T where tag = $1", &[&b"ta".as_slice()])
        .await;
    assert_eq!(got, a, "bytea param");
    let got = fx
        .ids(
            &c,
            "select id from T where email is not distinct from $1",
            &[&"a@x"],
        )
        .await;
    assert_eq!(got, a, "IS NOT DISTINCT FROM");
    casts_expand_with_the_value(&fx, &c, [old_a, old_b, new_a, new_c]).await;
    let none: Option<&str> = None;
    let got = fx
        .ids(&c, "select id from T where email = $1", &[&none])
        .await;
    assert!(got.is_empty(), "= NULL matches nothing");
    // Every row stays readable.
    let snap = fx.snapshot().await;
    assert_eq!(snap[&old_b].1, "s2");
    assert_eq!(snap[&new_c].2, b"tc".to_vec());

    let st = fx.status_json();
    assert_eq!(st["active_version"], 2);
    let v = versions(&st);
    assert_eq!(v[0].0, 1);
    assert_eq!(v[0].1, "previous");
    // Rows under version 1: the two first ones and the probes written
    // before the pick-up, exactly as stored.
    let under_v1: i64 = direct_client(REGION)
        .await
        .query_one(
            &format!(
                "select count(*) from {} where get_byte(decode(substr(email,7,8),'base64'),5) = 1",
                fx.table
            ),
            &[],
        )
        .await
        .expect("count v1")
        .get(0);
    assert!(under_v1 >= 2);
    assert_eq!(v[0].2, under_v1, "{st}");
    assert_eq!(v[1].1, "active");
}

/// Application load during re-encryption: inserts, updates and lookups of
/// known values; every statement must succeed.
fn spawn_load(
    fx: &Fx,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<BTreeMap<i32, String>> {
    let dsn = fx.proxy.dsn("rot_app", "rot_app-pw", Some(&fx.tenant));
    let table = fx.table.clone();
    tokio::spawn(async move {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        let mut changed = BTreeMap::new();
        let mut i = 0u32;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let email = format!("load{i}@x");
            let r = c
                .execute(
                    &format!("update {table} set ssn = $1 where id = $2"),
                    &[&email, &(i32::try_from(i % 300).unwrap_or(1) + 1)],
                )
                .await;
            match r {
                Ok(n) if n > 0 => {
                    changed.insert(i32::try_from(i % 300).unwrap_or(1) + 1, email.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("load update failed: {e:?}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            let r = c
                .query(
                    &format!("select id from {table} where email = $1"),
                    &[&"user7@x"],
                )
                .await;
            match r {
                Ok(rows) if rows.len() == 1 => {}
                other => {
                    eprintln!("load lookup: {other:?}");
                    failures.fetch_add(1, Ordering::SeqCst);
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        changed
    })
}

/// Starts a slow run, checks that a second run refuses while it runs,
/// SIGKILLs it mid-way and checks the job shows as stopped.
async fn kill_mid_way(fx: &Fx) {
    // A slow run, killed mid-way.
    let mut slow = fx
        .cli_cmd(&[
            "keys",
            "reencrypt",
            "--tenant",
            &fx.tenant,
            "--rate",
            "40",
            "--batch",
            "10",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn reencrypt");
    let start = Instant::now();
    loop {
        let st = fx.status_json();
        if st["job"]["done"].as_i64().unwrap_or(0) >= 40 {
            // While it runs, a second run refuses clearly.
            let second = fx.cli(&["keys", "reencrypt", "--tenant", &fx.tenant]);
            assert_eq!(second.status.code(), Some(1));
            let err = String::from_utf8_lossy(&second.stderr);
            assert!(err.contains("already running"), "{err}");
            assert_eq!(st["job"]["state"], "running", "{st}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "job made no progress: {st}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    slow.kill().expect("SIGKILL");
    let _ = slow.wait();
    let st = fx.status_json();
    assert_eq!(st["job"]["state"], "stopped", "{st}");
    let done_at_kill = st["job"]["done"].as_i64().expect("done");
    assert!(done_at_kill > 0 && done_at_kill < 300, "{st}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_under_load_survives_a_kill_resumes_and_retires() {
    let fx = Fx::new().await;
    let c = fx.client().await;
    for i in 1..=300 {
        fx.insert(
            &c,
            &format!("user{i}@x"),
            &format!("ssn{i}"),
            format!("t{i}").as_bytes(),
        )
        .await;
    }
    fx.rotate(&[]);
    fx.wait_for_version(&c, 2).await;
    let before = fx.snapshot().await;

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let load = spawn_load(&fx, Arc::clone(&stop), Arc::clone(&failures));

    kill_mid_way(&fx).await;

    // Resume: completes from the checkpoint.
    let out = fx.cli_ok(&[
        "keys",
        "reencrypt",
        "--tenant",
        &fx.tenant,
        "--rate",
        "0",
        "--batch",
        "50",
    ]);
    assert!(out.contains("retired versions: [1]"), "{out}");
    stop.store(true, Ordering::SeqCst);
    let changed = load.await.expect("load task");
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "failed statements under load\n{}",
        fx.proxy.log()
    );

    // Plaintexts unchanged (except the ssn the load itself wrote).
    let after = fx.snapshot().await;
    for (id, (email, ssn, tag)) in &before {
        let now = &after[id];
        assert_eq!(&now.0, email);
        assert_eq!(&now.2, tag);
        assert_eq!(&now.1, changed.get(id).unwrap_or(ssn), "row {id}");
    }
    let d = direct_client(REGION).await;
    let left: i64 = d
        .query_one(
            &format!(
                "select count(*) from {} where get_byte(decode(substr(email,7,8),'base64'),5) <> 2 \
                 or get_byte(decode(substr(ssn,7,8),'base64'),5) <> 2 or get_byte(tag,5) <> 2",
                fx.table
            ),
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(left, 0, "values still under version 1");
    let st = fx.status_json();
    assert_eq!(st["job"]["state"], "done", "{st}");
    let v = versions(&st);
    assert_eq!((v[0].0, v[0].1.as_str(), v[0].2), (1, "retired", 0), "{st}");
    // Lookups still work with one live version.
    let got = fx
        .ids(&c, "select id from T where email = $1", &[&"user9@x"])
        .await;
    assert_eq!(got.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_to_another_kms_and_rewrap_only() {
    let fx = Fx::new().await;
    let c = fx.client().await;
    let v1 = fx.insert(&c, "x@x", "under-a", b"x").await;
    fx.rotate(&["--kms", "b", "--kek", "kek-b"]);
    fx.wait_for_version(&c, 2).await;
    let v2 = fx.insert(&c, "y@x", "under-b", b"y").await;
    let st = fx.status_json();
    assert_eq!(st["active_version"], 2);
    let d = direct_client(REGION).await;
    let kms: Vec<(i32, String)> = d
        .query(
            "select version, kms from byokpg.tenant_keys where tenant = $1 order by version",
            &[&fx.tenant],
        )
        .await
        .expect("keys")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(kms, vec![(1, "a".to_owned()), (2, "b".to_owned())]);

    // Move every DEK under b, then take a's key away: all data stays readable.
    let out = fx.cli_ok(&[
        "keys",
        "rotate",
        "--tenant",
        &fx.tenant,
        "--kms",
        "b",
        "--kek",
        "kek-b",
        "--rewrap-only",
    ]);
    assert!(out.contains("[1]"), "{out}");
    std::fs::remove_file(&fx.key_a).expect("remove a");
    let (code, body) = fx.proxy.admin_post(
        &format!("/admin/tenants/{}/evict", fx.tenant),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(code, 200, "{body}");
    let snap = fx.snapshot().await;
    assert_eq!(snap[&v1].1, "under-a");
    assert_eq!(snap[&v2].1, "under-b");
    let log = fx.cli_ok(&["kms-log", "--tenant", &fx.tenant, "--format", "json"]);
    assert!(log.contains("\"operation\":\"generate\""), "{log}");
    assert!(log.contains("\"operation\":\"wrap\""), "{log}");
}

/// Regression: the batch query selected `id::text` (an output column named
/// `id`), so `ORDER BY id` sorted by text while the keyset compared numbers:
/// each pass skipped rows ("10" < "9"), and under load the 4-pass limit left
/// rows behind. On a quiet table the first pass must now do everything: the
/// verification pass finds nothing, so no third pass is ever started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_walk_visits_rows_in_key_order() {
    let fx = Fx::new().await;
    let c = fx.client().await;
    let values: Vec<String> = (1..=150)
        .map(|i| format!("('e{i}@x', 's{i}', 't{i}'::bytea)"))
        .collect();
    c.simple_query(&format!(
        "insert into {} (email, ssn, tag) values {}",
        fx.table,
        values.join(", ")
    ))
    .await
    .unwrap_or_else(|e| panic!("insert: {e:?}\n{}", fx.proxy.log()));
    fx.rotate(&[]);
    let out = fx.cli(&[
        "keys",
        "reencrypt",
        "--tenant",
        &fx.tenant,
        "--rate",
        "0",
        "--batch",
        "7",
    ]);
    // Progress lines (and the pass announcements) go to stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("pass 2"), "no verification pass: {text}");
    assert!(!text.contains("pass 3"), "the walk skipped rows:\n{text}");
    assert!(text.contains("150 rows examined"), "{text}");
    let v = versions(&fx.status_json());
    assert_eq!(v[0].1, "retired", "{v:?}");
    assert_eq!(v[1].2, 150, "{v:?}");
}
