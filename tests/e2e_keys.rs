//! Tenant keys against the real PostgreSQL: `byokpg setup` under
//! concurrency, first-DEK creation raced by two key managers (as two proxies
//! would), the one-active-DEK index, and the cache TTL with the local KMS.
//!
//! Each test works in its own scratch database, dropped at the end.
#![allow(clippy::unwrap_used)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use byokpg::config::Config;
use byokpg::keys::{KeyError, KeyManager};
use byokpg::setup;
use tokio_postgres::{Client, NoTls};

const PG_DOWN: &str = "PostgreSQL is not running on 127.0.0.1:5432 (trust auth, superuser postgres): \
     run `bash scripts/test.sh` or `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`";
const KEK: &str = "8f3c2a1b0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a";
const OTHER_KEK: &str = "0000000000000000000000000000000000000000000000000000000000000001";

async fn connect(db: &str) -> Client {
    let params = format!("host=127.0.0.1 port=5432 user=postgres dbname={db} sslmode=disable");
    let (client, conn) = tokio_postgres::connect(&params, NoTls)
        .await
        .unwrap_or_else(|e| panic!("{PG_DOWN} (connect to {db}: {e})"));
    tokio::spawn(conn);
    client
}

/// A fresh database; call [`Scratch::drop_db`] at the end of the test.
struct Scratch {
    name: String,
    dir: tempfile::TempDir,
}

impl Scratch {
    async fn new(prefix: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "byokpg_e2e_{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_key(&dir.path().join("kek.hex"), KEK);
        Self { name, dir }
    }

    fn dsn(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:5432/{}?sslmode=disable",
            self.name
        )
    }

    fn key_file(&self) -> PathBuf {
        self.dir.path().join("kek.hex")
    }

    /// A config with region `eu` in this database and a local KMS.
    fn config(&self, tenants: &[(&str, &str)]) -> Config {
        let mut text = format!(
            "[server]\nauth = \"trust\"\n[regions.eu]\ndsn = \"{}\"\n\
             [kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = \"{}\"\n",
            self.dsn(),
            self.key_file().display()
        );
        for (t, ttl) in tenants {
            writeln!(
                text,
                "[tenants.{t}]\nregion = \"eu\"\nkms = \"dev\"\nkey = \"{t}-label\"\ndek_cache_ttl = \"{ttl}\""
            )
            .unwrap();
        }
        byokpg::config::parse_str(&text, Path::new("e2e_keys.toml"))
            .unwrap_or_else(|e| panic!("{e:?}"))
    }

    async fn client(&self) -> Client {
        connect(&self.name).await
    }

    async fn drop_db(self) {
        connect("postgres")
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await
            .unwrap();
    }
}

fn write_key(path: &Path, hex: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{hex}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn setup_is_idempotent_and_safe_when_run_by_many_at_once() {
    let db = Scratch::new("setup").await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let name = db.name.clone();
        tasks.push(tokio::spawn(async move {
            let client = connect(&name).await;
            setup::migrate(&client, "eu").await
        }));
    }
    let mut fresh = 0;
    for t in tasks {
        let applied = t.await.unwrap().unwrap();
        assert_eq!(applied.to, setup::latest_version());
        if applied.from == 0 {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one of the eight runs created the schema");
    let client = db.client().await;
    let n: i64 = client
        .query_one("SELECT count(*) FROM byokpg.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, i64::try_from(setup::MIGRATIONS.len()).unwrap());

    // Again through the config, as `byokpg setup` does: nothing to do.
    let report = setup::setup(&db.config(&[])).await.unwrap();
    assert_eq!(
        report,
        vec![format!(
            "region eu: schema byokpg is up to date (version {})",
            setup::latest_version()
        )]
    );
    setup::setup_region(&client).await.unwrap();
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn setup_needs_create_only_the_first_time() {
    let db = Scratch::new("grants").await;
    let role = format!("{}_app", db.name);
    let admin = connect("postgres").await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let as_app = |name: String, role: String| async move {
        let params = format!("host=127.0.0.1 port=5432 user={role} dbname={name} sslmode=disable");
        let (client, conn) = tokio_postgres::connect(&params, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    };
    let app = as_app(db.name.clone(), role.clone()).await;
    let e = setup::setup_region(&app).await.unwrap_err().to_string();
    assert!(e.contains("needs CREATE on the database"), "{e}");
    // Set up once by the owner, with the grants docs/KEYS.md lists...
    let owner = db.client().await;
    setup::setup_region(&owner).await.unwrap();
    owner
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA byokpg TO {role};
             GRANT SELECT ON byokpg.schema_migrations TO {role};
             GRANT SELECT, INSERT ON byokpg.tenant_keys TO {role};"
        ))
        .await
        .unwrap();
    // ...the application role's `serve` start-up passes.
    let app = as_app(db.name.clone(), role.clone()).await;
    setup::setup_region(&app).await.unwrap();
    drop((app, owner));
    db.drop_db().await;
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn setup_names_an_unreachable_region_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        "[server]\nauth = \"trust\"\nconnect_timeout = \"2s\"\n[regions.apac]\n\
         dsn = \"postgres://byokpg:Hunter2Pw@127.0.0.1:{port}/app?sslmode=disable\"\n"
    );
    let cfg = byokpg::config::parse_str(&text, Path::new("t.toml")).unwrap();
    let e = setup::setup(&cfg).await.unwrap_err().to_string();
    assert!(
        e.starts_with("byokpg: setup of region apac: cannot connect"),
        "{e}"
    );
    assert!(!e.contains("Hunter2Pw"), "{e}");
}

#[tokio::test]
async fn one_active_dek_per_tenant_is_enforced_by_the_database() {
    let db = Scratch::new("index").await;
    let client = db.client().await;
    setup::setup_region(&client).await.unwrap();
    let insert = "INSERT INTO byokpg.tenant_keys (tenant, version, kms, key_ref, wrapped, status) \
                  VALUES ('acme', $1, 'dev', 'acme-label', '\\x00', $2)";
    client.execute(insert, &[&1i32, &"active"]).await.unwrap();
    client.execute(insert, &[&2i32, &"retired"]).await.unwrap();
    let e = client
        .execute(insert, &[&3i32, &"active"])
        .await
        .unwrap_err();
    assert_eq!(
        e.code().map(tokio_postgres::error::SqlState::code),
        Some("23505"),
        "{e}"
    );
    let e = client
        .execute(insert, &[&4i32, &"revoked"])
        .await
        .unwrap_err();
    assert_eq!(
        e.code().map(tokio_postgres::error::SqlState::code),
        Some("23514"),
        "{e}"
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn two_proxies_creating_the_first_dek_at_once_end_with_one() {
    let db = Scratch::new("race").await;
    setup::setup_region(&db.client().await).await.unwrap();
    let tenants: Vec<String> = (0..6).map(|i| format!("tenant{i}")).collect();
    let specs: Vec<(&str, &str)> = tenants.iter().map(|t| (t.as_str(), "5m")).collect();
    let cfg = db.config(&specs);
    let a = Arc::new(KeyManager::new(&cfg).await);
    let b = Arc::new(KeyManager::new(&cfg).await);
    for t in &tenants {
        // Several connections in each "proxy", all at the same moment.
        let mut tasks = Vec::new();
        for m in [&a, &b, &a, &b, &a, &b] {
            let (m, t) = (Arc::clone(m), t.clone());
            tasks.push(tokio::spawn(async move { m.active_dek(&t).await }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            let (version, dek) = task.await.unwrap().unwrap();
            assert_eq!(version, 1);
            seen.push(*dek.expose_secret());
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "tenant {t}: DEKs differ"
        );
        let n: i64 = db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM byokpg.tenant_keys WHERE tenant = $1",
                &[t],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1, "tenant {t}");
    }
    // A third instance started later reads the same key.
    let c = KeyManager::new(&cfg).await;
    let (_, late) = c.active_dek(&tenants[0]).await.unwrap();
    let (_, early) = a.active_dek(&tenants[0]).await.unwrap();
    assert_eq!(late.expose_secret(), early.expose_secret());
    drop((a, b, c));
    db.drop_db().await;
}

#[tokio::test]
async fn a_cached_dek_lives_until_its_ttl_and_not_after() {
    let db = Scratch::new("ttl").await;
    setup::setup_region(&db.client().await).await.unwrap();
    let ttl = Duration::from_secs(2);
    let cfg = db.config(&[("acme", "2s"), ("globex", "5m")]);
    let mgr = KeyManager::new(&cfg).await;
    let (_, created) = mgr.active_dek("acme").await.unwrap();
    let (_, globex) = mgr.active_dek("globex").await.unwrap();
    mgr.evict_tenant("acme");
    let loaded_at = Instant::now();
    let (_, first) = mgr.active_dek("acme").await.unwrap();
    assert_eq!(first.expose_secret(), created.expose_secret());

    // The customer revokes: the key file is gone. The cached key still
    // serves until its TTL...
    std::fs::remove_file(db.key_file()).unwrap();
    let cached = mgr.dek("acme", 1).await.unwrap();
    assert!(
        loaded_at.elapsed() < ttl,
        "this machine stalled for longer than the 2s TTL; rerun the test"
    );
    assert!(Arc::ptr_eq(&cached, &first));
    // ...and not after it.
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let e = mgr.dek("acme", 1).await.unwrap_err();
    assert_eq!(e.sqlstate(), "58000");
    assert!(
        e.to_string()
            .starts_with("byokpg: the key of tenant acme is unavailable: the key is pending deletion or destroyed (local key file"),
        "{e}"
    );
    assert!(matches!(
        mgr.active_dek("acme").await,
        Err(KeyError::Kms { .. })
    ));
    mgr.sweep();
    assert!(!mgr.cache().contains("acme", 1));
    // Another tenant's cached key is untouched (same KMS, longer TTL)...
    let (_, still) = mgr.active_dek("globex").await.unwrap();
    assert!(Arc::ptr_eq(&still, &globex));
    // ...until an admin evict drops it at once.
    assert_eq!(mgr.evict_tenant("globex"), 1);
    assert_eq!(mgr.dek("globex", 1).await.unwrap_err().sqlstate(), "58000");

    // Another KEK in the file: denied, with the local provider's reason.
    write_key(&db.key_file(), OTHER_KEK);
    let e = mgr.dek("acme", 1).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "byokpg: the key of tenant acme is unavailable: access denied by the KMS (local KEK cannot unwrap this DEK)"
    );
    // The grant comes back: so does the key, by itself.
    write_key(&db.key_file(), KEK);
    let back = mgr.dek("acme", 1).await.unwrap();
    assert_eq!(back.expose_secret(), created.expose_secret());
    drop(mgr);
    db.drop_db().await;
}
