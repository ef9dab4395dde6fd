#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::config::Config;
use crate::crypto::Dek;
use crate::kms::fake::FakeKms;
use crate::kms::{Kms, KmsBackend, KmsError, RetryPolicy};

const PG_HINT: &str = "PostgreSQL is needed at 127.0.0.1:5432 (trust auth, superuser postgres); \
     start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`";
const UNIT_DB: &str = "byokpg_unit_keys";
const BARE_DB: &str = "byokpg_unit_keys_bare";

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos:x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn dek(byte: u8) -> Dek {
    Dek::from_bytes([byte; 32])
}

fn fake(kms: &Kms) -> &FakeKms {
    match kms.backend() {
        KmsBackend::Fake(f) => f,
        _ => unreachable!("built as a fake"),
    }
}

fn fake_kms() -> Arc<Kms> {
    let policy = RetryPolicy {
        timeout: Duration::from_secs(30),
        max_retries: 0,
        ..RetryPolicy::default()
    };
    Arc::new(Kms::new(
        "dev",
        policy,
        KmsBackend::Fake(FakeKms::default()),
    ))
}

/// Waits (without a time limit of its own: the test runner's applies) until
/// `n` callers are parked on the load of (tenant, version).
async fn until_waiting(cache: &DekCache, tenant: &str, version: u32, n: usize) {
    while cache.waiting(tenant, version) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------- cache

#[test]
fn entries_expire_at_their_ttl() {
    let cache = DekCache::new(16);
    let t0 = Instant::now();
    cache.insert_expiring("acme", 1, dek(1), t0 + Duration::from_secs(10));
    assert!(cache.get_at("acme", 1, t0).is_some());
    assert!(
        cache
            .get_at("acme", 1, t0 + Duration::from_secs(9))
            .is_some()
    );
    assert!(cache.get_at("acme", 2, t0).is_none());
    assert!(cache.get_at("globex", 1, t0).is_none());
    // Past the TTL: a miss, and the entry is gone, not merely hidden.
    assert!(
        cache
            .get_at("acme", 1, t0 + Duration::from_secs(10))
            .is_none()
    );
    assert_eq!(cache.len(), 0);
}

#[test]
fn sweep_drops_unread_expired_entries() {
    let cache = DekCache::new(16);
    let t0 = Instant::now();
    cache.insert_expiring("a", 1, dek(1), t0 + Duration::from_secs(1));
    cache.insert_expiring("b", 1, dek(2), t0 + Duration::from_secs(5));
    cache.insert_expiring("c", 1, dek(3), t0 + Duration::from_mins(1));
    assert_eq!(cache.sweep_at(t0), 0);
    assert_eq!(cache.sweep_at(t0 + Duration::from_secs(5)), 2);
    assert_eq!(cache.len(), 1);
    assert!(cache.get_at("c", 1, t0).is_some());
}

#[test]
fn evict_tenant_drops_only_that_tenant_and_releases_the_key() {
    let cache = DekCache::new(16);
    let later = Instant::now() + Duration::from_mins(1);
    cache.insert_expiring("acme", 1, dek(1), later);
    cache.insert_expiring("acme", 2, dek(2), later);
    cache.insert_expiring("globex", 1, dek(3), later);
    let held = cache.get("acme", 2).unwrap();
    assert_eq!(Arc::strong_count(&held), 2);
    assert_eq!(cache.evict_tenant("acme"), 2);
    // Only our handle is left: the cache's copy is gone, and when we drop
    // ours the bytes are wiped by `Dek`'s zeroizing drop.
    assert_eq!(Arc::strong_count(&held), 1);
    assert!(cache.get("acme", 1).is_none());
    assert!(cache.get("globex", 1).is_some());
    assert_eq!(cache.evict_tenant("acme"), 0);
    assert_eq!(cache.clear(), 1);
    assert!(cache.is_empty());
}

#[test]
fn the_cache_is_bounded_and_counts_capacity_evictions() {
    let cache = DekCache::new(8);
    let before = sample(
        &crate::metrics::render(),
        "byokpg_dek_cache_evictions_total",
    );
    let later = Instant::now() + Duration::from_mins(1);
    for v in 0..100 {
        cache.insert_expiring("acme", v, dek(1), later);
    }
    assert!(cache.len() <= 16, "{} entries", cache.len());
    let after = sample(
        &crate::metrics::render(),
        "byokpg_dek_cache_evictions_total",
    );
    assert!(after >= before + 80.0, "{before} -> {after}");
}

#[tokio::test]
async fn loads_are_cached_for_the_ttl_and_not_at_all_for_zero() {
    let cache = DekCache::new(16);
    let loads = AtomicUsize::new(0);
    let load = || async {
        loads.fetch_add(1, Ordering::SeqCst);
        Ok(dek(7))
    };
    let before = crate::metrics::render();
    let a = cache
        .get_or_load("acme", 1, Duration::from_mins(1), load)
        .await
        .unwrap();
    let b = cache
        .get_or_load("acme", 1, Duration::from_mins(1), load)
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(cache.contains("acme", 1));

    for _ in 0..3 {
        cache
            .get_or_load("nocache", 1, Duration::ZERO, load)
            .await
            .unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 4);
    assert!(!cache.contains("nocache", 1));
    let after = crate::metrics::render();
    for name in [
        "byokpg_dek_cache_hits_total",
        "byokpg_dek_cache_misses_total",
    ] {
        assert!(sample(&after, name) > sample(&before, name), "{name}");
    }
}

fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn fifty_concurrent_misses_make_one_unwrap() {
    let cache = Arc::new(DekCache::new(16));
    let kms = fake_kms();
    let wrapped = kms.wrap("acme", &dek(9)).await.unwrap();
    fake(&kms).close_gate();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, kms, wrapped) = (cache.clone(), kms.clone(), wrapped.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("acme", 1, Duration::from_mins(1), || async {
                    kms.unwrap("acme", &wrapped)
                        .await
                        .map_err(|e| KeyError::kms("acme", e))
                })
                .await
        }));
    }
    until_waiting(&cache, "acme", 1, 50).await;
    fake(&kms).open_gate();
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert_eq!(got.expose_secret(), &[9; 32]);
    }
    assert_eq!(fake(&kms).unwraps.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn concurrent_misses_share_one_failure() {
    let cache = Arc::new(DekCache::new(16));
    let kms = fake_kms();
    fake(&kms).fail_with(Some(KmsError::AccessDenied("grant revoked".to_owned())));
    fake(&kms).close_gate();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (cache, kms) = (cache.clone(), kms.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load("acme", 1, Duration::from_mins(1), || async {
                    kms.unwrap("acme", b"x")
                        .await
                        .map_err(|e| KeyError::kms("acme", e))
                })
                .await
        }));
    }
    until_waiting(&cache, "acme", 1, 50).await;
    fake(&kms).open_gate();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.sqlstate(), "58000");
    }
    assert_eq!(fake(&kms).calls.load(Ordering::SeqCst), 1);
    // The failure is not cached: the next miss asks the KMS again.
    fake(&kms).fail_with(None);
    let e = cache
        .get_or_load("acme", 1, Duration::from_mins(1), || async {
            kms.unwrap("acme", b"x")
                .await
                .map_err(|e| KeyError::kms("acme", e))
        })
        .await
        .unwrap_err();
    assert!(matches!(e.kms_error(), Some(KmsError::AccessDenied(m)) if m == "fake: wrong label"));
    assert_eq!(fake(&kms).calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unwrap_in_flight_during_evict_is_not_cached() {
    let cache = Arc::new(DekCache::new(16));
    let kms = fake_kms();
    let wrapped = kms.wrap("acme", &dek(4)).await.unwrap();
    fake(&kms).close_gate();
    let task = {
        let (cache, kms) = (cache.clone(), kms.clone());
        tokio::spawn(async move {
            cache
                .get_or_load("acme", 1, Duration::from_mins(1), || async {
                    kms.unwrap("acme", &wrapped)
                        .await
                        .map_err(|e| KeyError::kms("acme", e))
                })
                .await
        })
    };
    until_waiting(&cache, "acme", 1, 1).await;
    assert_eq!(cache.evict_tenant("acme"), 0);
    fake(&kms).open_gate();
    // The statement that was waiting gets its key; nobody after the evict does.
    assert_eq!(task.await.unwrap().unwrap().expose_secret(), &[4; 32]);
    assert!(!cache.contains("acme", 1));
    assert!(cache.is_empty());
}

#[test]
fn key_errors_have_sqlstates_and_safe_messages() {
    let e = KeyError::kms(
        "acme",
        KmsError::AccessDenied("local KEK cannot unwrap this DEK".to_owned()),
    );
    assert_eq!(
        e.to_string(),
        "byokpg: the key of tenant acme is unavailable: access denied by the KMS (local KEK cannot unwrap this DEK)"
    );
    assert_eq!(e.sqlstate(), "58000");
    assert_eq!(e.tenant(), "acme");
    let e = KeyError::kms(
        "acme",
        KmsError::Unavailable("no answer within 5s".to_owned()),
    );
    assert_eq!(e.sqlstate(), "58030");
    let e = StoreError::Unreachable {
        region: "eu".to_owned(),
        message: "connection refused".to_owned(),
    }
    .for_tenant("acme");
    assert_eq!(e.sqlstate(), "08006");
    assert!(
        e.to_string().starts_with(
            "byokpg: the key of tenant acme is unavailable: the database of region eu"
        )
    );
    let e = KeyError::UnknownVersion {
        tenant: "acme".to_owned(),
        version: 7,
    };
    assert_eq!(e.sqlstate(), "XX001");
    for e in [
        e,
        KeyError::UnknownTenant {
            tenant: "x".to_owned(),
        },
    ] {
        assert!(e.to_string().starts_with("byokpg: "));
        assert!(!e.hint().is_empty());
    }
}

// ------------------------------------------------- manager, real database

async fn admin() -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        "host=127.0.0.1 port=5432 user=postgres dbname=postgres",
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
    tokio::spawn(conn);
    client
}

async fn connect_db(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
    tokio::spawn(conn);
    client
}

/// Creates `db` unless it exists (tolerating a concurrent creator).
async fn ensure_db(db: &str, set_up: bool) {
    let admin = admin().await;
    if let Err(e) = admin.batch_execute(&format!("CREATE DATABASE {db}")).await {
        let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
        assert!(code == "42P04" || code == "23505", "create {db}: {e}");
    }
    if set_up {
        crate::setup::setup_region(&connect_db(db).await)
            .await
            .unwrap();
    }
}

fn config(dsn: &str, tenants: &[(&str, &str)]) -> Config {
    let mut text = format!(
        "[server]\nauth = \"trust\"\n[regions.eu]\ndsn = \"{dsn}\"\n\
         [kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = \"unused\"\n"
    );
    for (t, ttl) in tenants {
        writeln!(
            text,
            "[tenants.{t}]\nregion = \"eu\"\nkms = \"dev\"\nkey = \"{t}-label\"\ndek_cache_ttl = \"{ttl}\""
        )
        .unwrap();
    }
    crate::config::parse_str(&text, Path::new("unit.toml")).unwrap_or_else(|e| panic!("{e:?}"))
}

async fn manager(tenants: &[(&str, &str)]) -> (KeyManager, Arc<Kms>) {
    ensure_db(UNIT_DB, true).await;
    let dsn = format!("postgres://postgres@127.0.0.1:5432/{UNIT_DB}?sslmode=disable");
    let kms = fake_kms();
    let map = BTreeMap::from([("dev".to_owned(), Ok(kms.clone()))]);
    (KeyManager::from_parts(&config(&dsn, tenants), map, 64), kms)
}

async fn rows(tenant: &str) -> i64 {
    connect_db(UNIT_DB)
        .await
        .query_one(
            "SELECT count(*) FROM byokpg.tenant_keys WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn first_dek_is_created_once_and_then_served_from_cache() {
    let t = unique("first");
    let (mgr, kms) = manager(&[(&t, "5m")]).await;
    let mgr = Arc::new(mgr);
    fake(&kms).close_gate();
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (mgr, t) = (mgr.clone(), t.clone());
        tasks.push(tokio::spawn(async move { mgr.active_dek(&t).await }));
    }
    // Let them pile up on the one generate call, then release it.
    while fake(&kms).calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    fake(&kms).open_gate();
    let mut keys = Vec::new();
    for task in tasks {
        let (v, d) = task.await.unwrap().unwrap();
        assert_eq!(v, 1);
        keys.push(*d.expose_secret());
    }
    assert!(keys.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(fake(&kms).generates.load(Ordering::SeqCst), 1);
    assert_eq!(fake(&kms).unwraps.load(Ordering::SeqCst), 0);
    assert_eq!(rows(&t).await, 1);

    let d = mgr.dek(&t, 1).await.unwrap();
    assert_eq!(d.expose_secret(), &keys[0]);
    assert_eq!(fake(&kms).unwraps.load(Ordering::SeqCst), 0);
    // After an evict the stored, wrapped key is unwrapped: same bytes.
    assert_eq!(mgr.evict_tenant(&t), 1);
    let (v, d) = mgr.active_dek(&t).await.unwrap();
    assert_eq!((v, d.expose_secret()), (1, &keys[0]));
    assert_eq!(fake(&kms).unwraps.load(Ordering::SeqCst), 1);
    let stored = mgr.store(&t).unwrap().keys(&t).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].status, KeyStatus::Active);
    assert_eq!(
        (stored[0].kms.as_str(), stored[0].key_ref.as_str()),
        ("dev", format!("{t}-label").as_str())
    );
}

#[tokio::test]
async fn revoked_key_fails_with_58000_and_spares_other_tenants() {
    let (a, b) = (unique("revoked"), unique("bystander"));
    let (mgr, kms) = manager(&[(&a, "5m"), (&b, "5m")]).await;
    mgr.active_dek(&a).await.unwrap();
    let (_, b_key) = mgr.active_dek(&b).await.unwrap();
    // Cached: revocation takes effect at TTL or evict, not before.
    fake(&kms).fail_with(Some(KmsError::AccessDenied("grant revoked".to_owned())));
    mgr.active_dek(&a).await.unwrap();
    mgr.evict_tenant(&a);
    let e = mgr.active_dek(&a).await.unwrap_err();
    assert_eq!(e.sqlstate(), "58000");
    assert_eq!(
        e.to_string(),
        format!(
            "byokpg: the key of tenant {a} is unavailable: access denied by the KMS (grant revoked)"
        )
    );
    assert!(matches!(mgr.dek(&a, 1).await, Err(KeyError::Kms { .. })));
    let (_, again) = mgr.active_dek(&b).await.unwrap();
    assert!(Arc::ptr_eq(&b_key, &again));

    fake(&kms).fail_with(Some(KmsError::Unavailable("connection refused".to_owned())));
    assert_eq!(mgr.dek(&a, 1).await.unwrap_err().sqlstate(), "58030");
    // Access restored: it comes back by itself.
    fake(&kms).fail_with(None);
    mgr.dek(&a, 1).await.unwrap();
}

#[tokio::test]
async fn zero_ttl_unwraps_on_every_use() {
    let t = unique("nottl");
    let (mgr, kms) = manager(&[(&t, "0s")]).await;
    mgr.active_dek(&t).await.unwrap();
    for n in 1..=3 {
        mgr.active_dek(&t).await.unwrap();
        assert_eq!(fake(&kms).unwraps.load(Ordering::SeqCst), n);
    }
    assert!(mgr.cache().is_empty());
}

#[tokio::test]
async fn unknown_versions_and_tenants() {
    let t = unique("versions");
    let (mgr, _kms) = manager(&[(&t, "5m")]).await;
    mgr.active_dek(&t).await.unwrap();
    let e = mgr.dek(&t, 9).await.unwrap_err();
    assert_eq!(e.sqlstate(), "XX001");
    assert!(matches!(e, KeyError::UnknownVersion { version: 9, .. }));
    let e = mgr.active_dek("nobody").await.unwrap_err();
    assert!(matches!(e, KeyError::UnknownTenant { .. }));
}

#[tokio::test]
async fn unreachable_region_is_08006_and_missing_setup_is_58000() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dsn = format!("postgres://byokpg:S3cretPw@127.0.0.1:{port}/app?sslmode=disable");
    let kms = fake_kms();
    let map = BTreeMap::from([("dev".to_owned(), Ok(kms))]);
    let mgr = KeyManager::from_parts(&config(&dsn, &[("acme", "5m")]), map, 8);
    let e = mgr.active_dek("acme").await.unwrap_err();
    assert_eq!(e.sqlstate(), "08006", "{e}");
    assert!(!e.to_string().contains("S3cretPw"), "{e}");

    ensure_db(BARE_DB, false).await;
    let dsn = format!("postgres://postgres@127.0.0.1:5432/{BARE_DB}?sslmode=disable");
    let map = BTreeMap::from([("dev".to_owned(), Ok(fake_kms()))]);
    let mgr = KeyManager::from_parts(&config(&dsn, &[("acme", "5m")]), map, 8);
    let e = mgr.active_dek("acme").await.unwrap_err();
    assert_eq!(e.sqlstate(), "58000", "{e}");
    assert!(
        e.to_string()
            .contains("byokpg.tenant_keys in region eu cannot be used"),
        "{e}"
    );
    assert!(e.hint().contains("byokpg setup"));
}

#[tokio::test]
async fn reload_evicts_tenants_whose_key_changed() {
    let (a, b) = (unique("reload_a"), unique("reload_b"));
    let (mgr, kms) = manager(&[(&a, "5m"), (&b, "5m")]).await;
    mgr.active_dek(&a).await.unwrap();
    mgr.active_dek(&b).await.unwrap();
    assert_eq!(mgr.cache().len(), 2);
    let dsn = format!("postgres://postgres@127.0.0.1:5432/{UNIT_DB}?sslmode=disable");
    let mut cfg = config(&dsn, &[(&a, "5m"), (&b, "5m")]);
    cfg.tenants.get_mut(&b).unwrap().key = "another-label".to_owned();
    cfg.tenants.remove(&a);
    // reload() builds KMS from the config; the local one there is unused.
    mgr.reload(&cfg).await;
    assert!(mgr.cache().is_empty());
    assert!(matches!(
        mgr.active_dek(&a).await,
        Err(KeyError::UnknownTenant { .. })
    ));
    let (kms_now, key_ref) = mgr.tenant_kms(&b).unwrap();
    assert_eq!(
        (kms_now.provider(), key_ref.as_str()),
        ("local", "another-label")
    );
    drop(kms);
}
