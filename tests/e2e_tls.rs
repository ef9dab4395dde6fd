//! TLS on both legs: clients → byokpg (rustls, certificate made here with
//! rcgen) and byokpg → `PostgreSQL` (per the region DSN's `sslmode`).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{Proxy, ProxyBuilder, TlsFiles, assert_success, db_message, local_dsn, region_db};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls_pki_types::CertificateDer;
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A CA and a server certificate for `localhost` / `127.0.0.1` signed by it.
struct TestPki {
    files: TlsFiles,
    ca_pem: PathBuf,
    ca_der: CertificateDer<'static>,
}

fn make_pki(dir: &Path) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "byokpg e2e test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();

    let files = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    // The chain: leaf first, then the CA.
    fs::write(&files.cert, format!("{}{}", cert.pem(), ca_cert.pem())).unwrap();
    fs::write(&files.key, key.serialize_pem()).unwrap();
    let ca_pem = dir.join("ca.crt");
    fs::write(&ca_pem, ca_cert.pem()).unwrap();
    TestPki {
        files,
        ca_pem,
        ca_der: ca_cert.der().clone(),
    }
}

/// rustls client (ring provider) trusting only the test CA.
fn tls_connector(ca: &CertificateDer<'static>) -> MakeRustlsConnect {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    MakeRustlsConnect::new(config)
}

async fn connect_tls(
    dsn: &str,
    ca: &CertificateDer<'static>,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tls_connector(ca)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// A proxy with TLS; the PKI lives in a directory that outlives the proxy.
fn tls_proxy(builder: ProxyBuilder) -> (Proxy, TestPki, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let proxy = builder.tls(pki.files.clone()).start();
    proxy.require_proxy();
    (proxy, pki, dir)
}

#[tokio::test]
async fn tokio_postgres_over_tls_with_scram() {
    let (proxy, pki, _dir) = tls_proxy(Proxy::builder().scram().tls_mode("prefer"));
    let dsn = proxy.dsn_with(
        "acme_app",
        &proxy.password("acme_app"),
        None,
        &[("sslmode", "require")],
    );
    let client = match connect_tls(&dsn, &pki.ca_der).await {
        Ok(c) => c,
        Err(e) => panic!("TLS connect failed: {e:?}"),
    };
    let row = client
        .query_one("select $1::text || ' over tls'", &[&"hello"])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "hello over tls");
    let rows = client
        .query(
            "select g, md5(g::text) from generate_series(1, 5000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 5000);
    // The plaintext port still serves clients that do not ask for TLS (prefer).
    let plain = proxy.connect("acme_app", None).await;
    plain.simple_query("select 1").await.unwrap();
}

#[test]
fn psql_sslmode_require_and_verify_full() {
    let (proxy, pki, _dir) = tls_proxy(Proxy::builder().scram());
    let require = proxy.dsn_with(
        "acme_app",
        &proxy.password("acme_app"),
        None,
        &[("sslmode", "require")],
    );
    let out = proxy.psql(&require, &["-c", "select 'tls ok'", "-c", "\\conninfo"]);
    let stdout = assert_success("psql sslmode=require", &out);
    assert!(stdout.contains("tls ok"), "{stdout}");
    assert!(
        stdout.contains("SSL connection"),
        "psql reports no SSL: {stdout}"
    );

    let ca = pki.ca_pem.to_string_lossy().into_owned();
    let verify = proxy.dsn_with(
        "acme_app",
        &proxy.password("acme_app"),
        None,
        &[("sslmode", "verify-full"), ("sslrootcert", &ca)],
    );
    let out = proxy.psql(&verify, &["-c", "select 'verified'"]);
    assert_eq!(
        assert_success("psql sslmode=verify-full", &out).trim(),
        "verified"
    );
}

#[tokio::test]
async fn tls_mode_require_refuses_plaintext() {
    let (proxy, pki, _dir) = tls_proxy(Proxy::builder().tls_mode("require"));
    match proxy.try_connect("globex_app", None).await {
        Ok(_) => panic!("a plaintext client was accepted with tls_mode = require"),
        Err(e) => {
            if e.as_db_error().is_some() {
                assert!(db_message(&e).starts_with("byokpg:"), "{e:?}");
            }
        }
    }
    let out = proxy.psql(
        &proxy.dsn("globex_app", "trust-auth-ignores-this", None),
        &["-c", "select 1"],
    );
    assert!(!out.status.success(), "psql without TLS was accepted");
    // TLS clients are still served.
    let dsn = proxy.dsn_with(
        "globex_app",
        "trust-auth-ignores-this",
        None,
        &[("sslmode", "require")],
    );
    let client = connect_tls(&dsn, &pki.ca_der).await.unwrap();
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn backend_leg_follows_dsn_sslmode() {
    let tls_dsn = local_dsn(&region_db("eu")).replace("sslmode=disable", "sslmode=require");
    let proxy = Proxy::builder().region_dsn("eu", &tls_dsn).start();
    proxy.require_proxy();
    let query = "select ssl from pg_stat_ssl where pid = pg_backend_pid()";
    let eu = proxy.connect("acme_app", None).await; // acme → eu, sslmode=require
    assert!(
        eu.query_one(query, &[]).await.unwrap().get::<_, bool>(0),
        "eu leg is not TLS"
    );
    let us = proxy.connect("globex_app", None).await; // globex → us, sslmode=disable
    assert!(
        !us.query_one(query, &[]).await.unwrap().get::<_, bool>(0),
        "us leg is TLS"
    );
}
