//! The `azure-keyvault` provider end to end: the real `byokpg serve` talks
//! to a local Key Vault + Entra ID fake (tests/common/azure_fake.rs: the REST
//! 7.4 wire API, client-credentials tokens, A256KW and ES256 keys, RBAC role
//! assignments) and to the real PostgreSQL. Revocation is done in the
//! fake's state (key disabled, role assignment removed, tokens revoked,
//! server stopped), so every error the client sees comes from a real HTTP
//! reply or a real closed port.
//!
//! Tenant names are unique per run: their wrapped DEKs live in the shared
//! region databases.
#![allow(clippy::too_many_lines)]

#[path = "common/azure_fake.rs"]
mod azure_fake;
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use azure_fake::{AzureFake, CLIENT_ID, TENANT_ID};
use common::{Proxy, create_in_regions, db_message, direct_client, sqlstate, unique_name};
use tokio_postgres::Client;

const SECRET: &str = "fake~client.secret-0123456789";
const TTL: Duration = Duration::from_secs(2);
const PASSWORD: &str = "app-pw";

fn kms_section(fake: &AzureFake, secret: &str) -> String {
    format!(
        "provider = \"azure-keyvault\"\nvault_url = \"{url}\"\nauthority_host = \"{url}\"\n\
         azure_tenant_id = \"{TENANT_ID}\"\nclient_id = \"{CLIENT_ID}\"\nclient_secret = \"{secret}\"\n\
         timeout = \"2s\"\nmax_retries = 1",
        url = fake.url()
    )
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

/// Ciphertext in the table; the DEK wrapped with AES-KW (40 bytes) under
/// the configured key.
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
    assert_eq!(row.get::<_, String>(0), "azure");
    assert_eq!(row.get::<_, String>(1), key_ref);
    assert_eq!(
        row.get::<_, Vec<u8>>(2).len(),
        40,
        "A256KW of a 32-byte DEK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_column_round_trip_and_revocation_through_key_vault() {
    let fake = AzureFake::start(SECRET).await;
    let key_a = fake.create_wrapping_key("tenant-a");
    let key_b = format!(
        "{}/keys/{}",
        fake.url(),
        fake.create_wrapping_key("tenant-b")
    );
    let (a, b) = (unique_name("aza"), unique_name("azb"));
    let t = unique_name("az_t");
    create_in_regions(
        &["eu", "us"],
        &format!("create table {t} (id serial primary key, tenant_id text, secret text)"),
    )
    .await;
    let ttl = "dek_cache_ttl = \"2s\"";
    let proxy = Proxy::builder()
        .user("app", PASSWORD, &[a.as_str(), b.as_str()])
        .kms("azure", &kms_section(&fake, SECRET))
        .tenant_on(&a, "eu", "azure", &key_a, ttl)
        .tenant_on(&b, "us", "azure", &key_b, ttl)
        .policy_table(&policy(&t))
        .start();
    proxy.require_proxy();

    for (tenant, region, k) in [(&a, "eu", &key_a), (&b, "us", &key_b)] {
        let c = proxy.connect("app", Some(tenant)).await;
        let plain = format!("{tenant}-secret-value");
        insert(&c, &t, &plain)
            .await
            .unwrap_or_else(|e| panic!("insert as {tenant}: {e:?}\n--- log\n{}", proxy.log()));
        assert_eq!(read(&c, &t).await.expect("read back"), vec![plain.clone()]);
        assert_stored(region, &t, tenant, &plain, k).await;
    }
    assert_eq!(fake.calls("wrapkey"), 2, "one DEK wrapped per tenant");
    assert_eq!(fake.calls("token"), 1, "one token, cached");
    let plain_a = format!("{a}-secret-value");
    let plain_b = format!("{b}-secret-value");

    // The customer disables the key: after the TTL, 58000 naming it.
    fake.set_enabled("tenant-a", false);
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "disabled").await;
    expect_reads(&proxy, &b, &t, &[&plain_b]).await;
    fake.set_enabled("tenant-a", true);
    expect_reads(&proxy, &a, &t, &[&plain_a]).await;

    // The customer removes the Key Vault Crypto User assignment.
    fake.set_crypto_user("tenant-a", false);
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "ForbiddenByRbac").await;
    expect_reads(&proxy, &b, &t, &[&plain_b]).await;
    fake.set_crypto_user("tenant-a", true);
    expect_reads(&proxy, &a, &t, &[&plain_a]).await;

    // The service principal's secret is rotated away and its tokens
    // revoked: no new token, 58000 access denied for every tenant.
    fake.rotate_secret("a-new-secret-byokpg-does-not-have");
    fake.revoke_tokens();
    tokio::time::sleep(TTL + Duration::from_millis(700)).await;
    expect_read_fails(&proxy, &a, &t, "58000", "invalid_client").await;
    expect_read_fails(&proxy, &b, &t, "58000", "access denied").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_58000_and_a_stopped_vault_is_58030() {
    let mut fake = AzureFake::start(SECRET).await;
    let key_a = fake.create_wrapping_key("tenant-a");
    let (a, ghost, unpinned, local) = (
        unique_name("aza"),
        unique_name("azx"),
        unique_name("azu"),
        unique_name("loc"),
    );
    let t = unique_name("az_t");
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
            &[
                a.as_str(),
                ghost.as_str(),
                unpinned.as_str(),
                local.as_str(),
            ],
        )
        .kms("azure", &kms_section(&fake, SECRET))
        .tenant_on(&a, "eu", "azure", &key_a, ttl)
        .tenant_on(&ghost, "eu", "azure", "no-such-key/0123456789abcdef", ttl)
        .tenant_on(&unpinned, "eu", "azure", "tenant-a", ttl)
        .tenant(&local, "us")
        .policy_table(&policy(&t))
        .start();
    proxy.require_proxy();

    let c = proxy.connect("app", Some(&ghost)).await;
    let e = insert(&c, &t, "never stored")
        .await
        .expect_err("unknown key");
    assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{e:?}");
    assert!(db_message(&e).contains("KeyNotFound"), "{}", db_message(&e));
    let c = proxy.connect("app", Some(&unpinned)).await;
    let e = insert(&c, &t, "never stored")
        .await
        .expect_err("unpinned key");
    assert_eq!(sqlstate(&e).as_deref(), Some("58000"), "{e:?}");
    assert!(db_message(&e).contains("pin it"), "{}", db_message(&e));

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
async fn sign_verify_describe_and_bad_credentials_against_the_fake() {
    use byokpg::kms::Kms;

    let fake = AzureFake::start(SECRET).await;
    let wrap_key = fake.create_wrapping_key("tenant-a");
    let other = fake.create_wrapping_key("tenant-other");
    let signer = fake.create_signing_key("signer");
    let build = |secret: &str| {
        let text = format!(
            "[regions.eu]\ndsn = \"{}\"\n[kms.azure]\n{}\n",
            common::local_dsn("postgres"),
            kms_section(&fake, secret)
        );
        byokpg::config::parse_str(&text, Path::new("azure.toml")).expect("config")
    };
    let cfg = build(SECRET);
    let kms = Kms::from_config("azure", &cfg.kms["azure"])
        .await
        .expect("provider");

    let info = kms.describe(&wrap_key).await.expect("describe");
    assert!(
        info.enabled && info.description.contains("oct-HSM"),
        "{info:?}"
    );
    let dk = kms.generate_data_key(&wrap_key).await.expect("generate");
    let back = kms.unwrap(&wrap_key, &dk.wrapped).await.expect("unwrap");
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());
    // Another key's wrapping: 400 BadParameter from unwrapkey → access denied.
    let e = kms.unwrap(&other, &dk.wrapped).await.expect_err("foreign");
    assert_eq!(e.code(), "access_denied", "{e}");

    let sig = kms.sign(&signer, b"kms log batch 42").await.expect("sign");
    assert_eq!(sig.algorithm, "ES256");
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
    assert_eq!(
        kms.sign(&wrap_key, b"x").await.expect_err("oct key").code(),
        "config"
    );

    // A wrong client secret: Entra's invalid_client, as access denied.
    let bad = build("not-the-secret");
    let kms = Kms::from_config("azure", &bad.kms["azure"])
        .await
        .expect("provider");
    let e = kms.describe(&wrap_key).await.expect_err("bad secret");
    assert_eq!(e.code(), "access_denied", "{e}");
    assert!(e.to_string().contains("AADSTS7000215"), "{e}");
}
