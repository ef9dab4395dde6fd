//! The `gcp-kms` provider end to end: the real `byokpg serve` talks to a
//! local Cloud KMS fake (tests/common/gcp_fake.rs, the REST v1 wire API with
//! OAuth JWT-bearer auth, AES-GCM keys and IAM roles) and to the real
//! PostgreSQL. Revocation is done in the fake's state (version disabled, role
//! removed, service account disabled, server stopped), so every error the
//! client sees comes from a real HTTP reply or a real closed port.
//!
//! Tenant names are unique per run: their wrapped DEKs live in the shared
//! region databases.
#![allow(clippy::too_many_lines)]

mod common;
#[path = "common/gcp_fake.rs"]
mod gcp_fake;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Proxy, create_in_regions, db_message, direct_client, sqlstate, unique_name};
use gcp_fake::{GcpFake, Role};
use rustls_pki_types::pem::PemObject as _;
use tokio_postgres::Client;

const SA_EMAIL: &str = "byokpg@byokpg-test.iam.gserviceaccount.com";
const SA_KEY: &str = include_str!("fixtures/gcp-test-sa-key.pem");
const RING: &str = "projects/byokpg-test/locations/europe-west1/keyRings/byokpg";
const TTL: Duration = Duration::from_secs(2);
const PASSWORD: &str = "app-pw";

/// The RSAPublicKey DER of the test service account (what Google keeps).
fn sa_public() -> Vec<u8> {
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(SA_KEY.as_bytes())
        .expect("fixture key is PEM PKCS#8");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .expect("fixture key is RSA");
    pair.public().as_ref().to_vec()
}

/// Writes the service-account JSON key file the customer would download.
fn write_sa_file(dir: &Path, token_uri: &str) -> String {
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "byokpg-test",
        "private_key_id": "0123456789abcdef",
        "private_key": SA_KEY,
        "client_email": SA_EMAIL,
        "client_id": "1234567890",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, json.to_string()).expect("write sa.json");
    path.to_string_lossy().into_owned()
}

fn kms_section(fake: &GcpFake, sa_file: &str) -> String {
    format!(
        "provider = \"gcp-kms\"\ncredentials_file = \"{sa_file}\"\nendpoint = \"{}\"\n\
         timeout = \"2s\"\nmax_retries = 1",
        fake.url()
    )
}

fn key(name: &str) -> String {
    format!("{RING}/cryptoKeys/{name}")
}

fn policy(t: &str) -> String {
    format!(
        "[[table]]\nname = \"{t}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nsecret = \"randomized\"\n"
    )
}

async fn insert(c: &Client, t: &str, v: &str) -> Result<u64, tokio_postgres::Error> {
    c.execute(&format!("insert into {t} (secret) values ($1)"), &[&v])
        .await
}

async fn read(c: &Client, t: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = c
        .query(&format!("select secret from {t} order by id"), &[])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A fresh connection's read, expected to fail with `code` and a message
/// containing `needle`.
async fn expect_read_fails(proxy: &Proxy, tenant: &str, t: &str, code: &str, needle: &str) {
    let c = proxy.connect("app", Some(tenant)).await;
    let e = read(&c, t).await.expect_err("read must fail");
    assert_eq!(sqlstate(&e).as_deref(), Some(code), "{e:?}");
    let msg = db_message(&e);
    assert!(
        msg.contains(needle) && msg.contains(tenant),
        "message should name tenant {tenant} and `{needle}`: {msg}"
    );
}

async fn expect_reads(proxy: &Proxy, tenant: &str, t: &str, want: &[&str]) {
    let c = proxy.connect("app", Some(tenant)).await;
    let got = read(&c, t)
        .await
        .unwrap_or_else(|e| panic!("read as {tenant}: {e:?}\n--- log\n{}", proxy.log()));
    assert_eq!(got, want, "rows of {tenant}");
}

/// The stored row is an envelope, not the plaintext; the tenant's DEK is
/// wrapped by the fake (its ciphertext format) under the configured key.
async fn assert_stored(region: &str, t: &str, tenant: &str, plain: &str, key_ref: &str) {
    let d = direct_client(region).await;
    let stored: Vec<String> = d
        .query(
            &format!("select secret from {t} where tenant_id = $1"),
            &[&tenant],
        )
        .await
        .expect("direct read")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!stored.is_empty(), "no row of {tenant} stored");
    assert!(
        stored.iter().all(|s| !s.contains(plain)),
        "plaintext stored: {stored:?}"
    );
    let row = d
        .query_one(
            "select kms, key_ref, wrapped from byokpg.tenant_keys where tenant = $1 and status = 'active'",
            &[&tenant],
        )
        .await
        .expect("tenant key row");
    assert_eq!(row.get::<_, String>(0), "gcp");
    assert_eq!(row.get::<_, String>(1), key_ref);
    let wrapped: Vec<u8> = row.get(2);
    assert!(
        wrapped.starts_with(b"FKMS"),
        "DEK not wrapped by the fake Cloud KMS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_column_round_trip_and_revocation_through_cloud_kms() {
    let fake = GcpFake::start(SA_EMAIL, sa_public()).await;
    let (key_a, key_b) = (key("tenant-a"), key("tenant-b"));
    fake.create_symmetric_key(&key_a, &[Role::EncrypterDecrypter]);
    fake.create_symmetric_key(&key_b, &[Role::EncrypterDecrypter]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sa_file = write_sa_file(dir.path(), &fake.token_url());
    let (a, b) = (unique_name("gcpa"), unique_name("gcpb"));
    let t = unique_name("gcp_t");
    create_in_regions(
        &["eu", "us"],
        &format!("create table {t} (id serial primary key, tenant_id text, secret text)"),
    )
    .await;
    let ttl = "dek_cache_ttl = \"2s\"";
    let proxy = Proxy::builder()
        .user("app", PASSWORD, &[a.as_str(), b.as_str()])
        .kms("gcp", &kms_section(&fake, &sa_file))
        .tenant_on(&a, "eu", "gcp", &key_a, ttl)
        .tenant_on(&b, "us", "gcp", &key_b, ttl)
        .policy_table(&policy(&t))
        .start();
    proxy.require_proxy();

    // Insert and read through the proxy; ciphertext in the region database.
    for (tenant, region, k) in [(&a, "eu", &key_a), (&b, "us", &key_b)] {
        let c = proxy.connect("app", Some(tenant)).await;
        let plain = format!("{tenant}-secret-value");
        insert(&c, &t, &plain)
            .await
            .unwrap_or_else(|e| panic!("insert as {tenant}: {e:?}\n--- log\n{}", proxy.log()));
        assert_eq!(read(&c, &t).await.expect("read back"), vec![plain.clone()]);
        assert_stored(region, &t, tenant, &plain, k).await;
    }
    assert_eq!(fake.calls("encrypt"), 2, "one DEK wrapped per tenant");
    assert!(
        fake.calls("token") >= 1,
        "the proxy authenticated with the JWT grant"
    );
    let plain_a = format!("{a}-secret-value");
    let plain_b = format!("{b}-secret-value");

    // The customer disables the key version: after the TTL, 58000 naming it.
    fake.set_state(&key_a, "DISABLED");
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "disabled").await;
    expect_reads(&proxy, &b, &t, &[&plain_b]).await;
    fake.set_state(&key_a, "ENABLED");
    expect_reads(&proxy, &a, &t, &[&plain_a]).await;

    // The customer removes byokpg's role on the key: 58000 access denied.
    fake.revoke(&key_a, Role::EncrypterDecrypter);
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "access denied").await;
    expect_reads(&proxy, &b, &t, &[&plain_b]).await;
    fake.grant(&key_a, Role::EncrypterDecrypter);
    expect_reads(&proxy, &a, &t, &[&plain_a]).await;

    // The key is scheduled for destruction: 58000 naming that.
    fake.set_state(&key_a, "DESTROY_SCHEDULED");
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "pending deletion or destroyed").await;
    fake.set_state(&key_a, "ENABLED");

    // The service account itself is disabled: its token dies, no new one.
    fake.disable_service_account();
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "invalid_grant").await;
    let unwraps_before = fake.calls("decrypt");
    expect_read_fails(&proxy, &b, &t, "58000", "access denied").await;
    assert_eq!(
        fake.calls("decrypt"),
        unwraps_before,
        "no decrypt without a token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_58000_and_a_stopped_kms_is_58030() {
    let mut fake = GcpFake::start(SA_EMAIL, sa_public()).await;
    let key_a = key("tenant-a");
    fake.create_symmetric_key(&key_a, &[Role::EncrypterDecrypter]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sa_file = write_sa_file(dir.path(), &fake.token_url());
    let (a, ghost, local) = (unique_name("gcpa"), unique_name("gcpx"), unique_name("loc"));
    let t = unique_name("gcp_t");
    create_in_regions(
        &["eu", "us"],
        &format!("create table {t} (id serial primary key, tenant_id text, secret text)"),
    )
    .await;
    let ttl = "dek_cache_ttl = \"2s\"";
    let proxy = Proxy::builder()
        .user(
            "app",
            PASSWORD,
            &[a.as_str(), ghost.as_str(), local.as_str()],
        )
        .kms("gcp", &kms_section(&fake, &sa_file))
        .tenant_on(&a, "eu", "gcp", &key_a, ttl)
        .tenant_on(&ghost, "eu", "gcp", &key("no-such-key"), ttl)
        .tenant(&local, "us")
        .policy_table(&policy(&t))
        .start();
    proxy.require_proxy();

    let c = proxy.connect("app", Some(&ghost)).await;
    let e = insert(&c, &t, "never stored")
        .await
        .expect_err("unknown key");
    assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{e:?}");
    assert!(db_message(&e).contains("not found"), "{}", db_message(&e));

    for tenant in [&a, &local] {
        let c = proxy.connect("app", Some(tenant)).await;
        insert(&c, &t, &format!("{tenant}-v"))
            .await
            .expect("insert");
    }
    fake.stop().await;
    assert!(
        std::net::TcpStream::connect(fake.addr).is_err(),
        "the fake's port is closed"
    );
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    let started = Instant::now();
    expect_read_fails(&proxy, &a, &t, "58030", "unreachable").await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "58030 within the KMS timeout"
    );
    expect_reads(&proxy, &local, &t, &[&format!("{local}-v")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_verify_and_describe_against_the_fake() {
    use byokpg::kms::Kms;

    let fake = GcpFake::start(SA_EMAIL, sa_public()).await;
    let enc = key("tenant-a");
    fake.create_symmetric_key(&enc, &[Role::EncrypterDecrypter, Role::Viewer]);
    let signer = fake.create_signing_key(&key("signer"), &[Role::SignerVerifier]);
    let dir = tempfile::tempdir().expect("tempdir");
    let sa_file = write_sa_file(dir.path(), &fake.token_url());
    let text = format!(
        "[regions.eu]\ndsn = \"{}\"\n[kms.gcp]\n{}\n",
        common::local_dsn("postgres"),
        kms_section(&fake, &sa_file)
    );
    let cfg = byokpg::config::parse_str(&text, Path::new("gcp.toml")).expect("config");
    let kms = Kms::from_config("gcp", &cfg.kms["gcp"])
        .await
        .expect("provider");

    let info = kms.describe(&enc).await.expect("describe");
    assert!(info.enabled, "{info:?}");
    fake.set_state(&enc, "DISABLED");
    let info = kms.describe(&enc).await.expect("describe");
    assert!(
        !info.enabled && info.description.contains("DISABLED"),
        "{info:?}"
    );
    let e = kms.generate_data_key(&enc).await.expect_err("disabled");
    assert_eq!(e.code(), "key_disabled", "{e}");
    fake.set_state(&enc, "ENABLED");

    // Wrap/unwrap round trip; a DEK wrapped under one key does not unwrap
    // under another (Decryption failed → access denied).
    let dk = kms.generate_data_key(&enc).await.expect("generate");
    let back = kms.unwrap(&enc, &dk.wrapped).await.expect("unwrap");
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());
    let other = key("other");
    fake.create_symmetric_key(&other, &[Role::EncrypterDecrypter]);
    let e = kms
        .unwrap(&other, &dk.wrapped)
        .await
        .expect_err("foreign ciphertext");
    assert_eq!(e.code(), "access_denied", "{e}");

    let sig = kms.sign(&signer, b"kms log batch 42").await.expect("sign");
    assert_eq!(sig.algorithm, "EC_SIGN_P256_SHA256");
    assert!(
        kms.verify(&signer, b"kms log batch 42", &sig)
            .await
            .expect("verify")
    );
    assert!(
        !kms.verify(&signer, b"kms log batch 43", &sig)
            .await
            .expect("verify")
    );
    // No describe permission on the signing key (signerVerifier only).
    let e = kms.describe(&signer).await.expect_err("no viewer role");
    assert_eq!(e.code(), "access_denied", "{e}");
    // Signing with the encryption key is refused before any call.
    assert_eq!(
        kms.sign(&enc, b"x")
            .await
            .expect_err("not a version")
            .code(),
        "config"
    );
}
