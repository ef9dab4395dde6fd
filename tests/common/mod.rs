//! Harness shared by every end-to-end test.
//!
//! It prepares three region databases on the local `PostgreSQL`
//! (`byokpg_t_us`, `byokpg_t_eu`, `byokpg_t_apac`), writes a config into a
//! temporary directory, starts the real `byokpg serve` binary on free ports and
//! kills it when the [`Proxy`] is dropped. The proxy's log is printed when a
//! test panics, so a failure shows what the proxy saw.
//!
//! `BYOKPG_E2E_DIRECT=1` makes [`Proxy::dsn`] point at `PostgreSQL` itself
//! (no proxy is started). It exists to tell a client-script bug from a proxy
//! bug: client tests must pass in both modes. Tests of proxy-only behaviour
//! call [`Proxy::require_proxy`] and fail in that mode.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_postgres::{Client, NoTls};

/// Where the tests expect `PostgreSQL` (trust auth, superuser `postgres`).
pub const PG_HOST: &str = "127.0.0.1";
pub const PG_PORT: u16 = 5432;
pub const REGIONS: [&str; 3] = ["us", "eu", "apac"];
/// Default tenants and their regions.
pub const TENANTS: [(&str, &str); 3] = [("acme", "eu"), ("globex", "us"), ("initech", "apac")];
/// A policy table present in every region database; statements on it are
/// refused by this build of the proxy (fail closed until encryption lands).
pub const POLICY_TABLE: &str = "e2e_policy_customers";
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// The database name clients ask for; the region DSN decides the real one.
pub const CLIENT_DB: &str = "app";

const PG_DOWN: &str = "PostgreSQL is not running on 127.0.0.1:5432: run `bash scripts/test.sh` \
     (or `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`)";
const SETUP_LOCK_KEY: i64 = 0x6279_6f6b_7067; // "byokpg"
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Name of a region's test database.
pub fn region_db(region: &str) -> String {
    format!("byokpg_t_{region}")
}

/// `postgres://` DSN of a database on the local `PostgreSQL`.
pub fn local_dsn(db: &str) -> String {
    format!("postgres://postgres@{PG_HOST}:{PG_PORT}/{db}?sslmode=disable")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `BYOKPG_E2E_DIRECT` asks the client tests to bypass the proxy.
pub fn direct_mode() -> bool {
    std::env::var("BYOKPG_E2E_DIRECT").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// A name unique across the parallel test processes sharing the databases.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}_{}_{n}_{nanos:x}",
        prefix.to_lowercase(),
        std::process::id()
    )
}

/// A port that was free a moment ago (bind to port 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((PG_HOST, 0)).unwrap();
    listener.local_addr().unwrap().port()
}

/// Panics with the "how to start it" message when `PostgreSQL` is not there.
pub fn require_postgres() {
    let addr = format!("{PG_HOST}:{PG_PORT}").parse().unwrap();
    if let Err(e) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
        panic!("{PG_DOWN} ({e})");
    }
}

/// Runs a future on a private runtime in its own thread, so the sync parts of
/// the harness can be called from `#[tokio::test]`s too.
pub fn run_async<F, T>(fut: F) -> T
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(fut)
    });
    handle
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Creates the region databases (and `extra` ones) and the policy table in
/// each region, once per process. Safe under parallel processes: everything
/// happens under one advisory lock taken in the `postgres` database.
pub fn ensure_databases(extra: &[&str]) {
    require_postgres();
    let mut dbs: Vec<String> = REGIONS.iter().map(|r| region_db(r)).collect();
    dbs.extend(extra.iter().map(|s| (*s).to_string()));
    run_async(async move { setup_databases(dbs).await });
}

async fn setup_databases(dbs: Vec<String>) {
    let admin = connect_local("postgres").await;
    admin
        .execute("select pg_advisory_lock($1)", &[&SETUP_LOCK_KEY])
        .await
        .unwrap();
    for db in &dbs {
        let exists = admin
            .query_opt("select 1 from pg_database where datname = $1", &[db])
            .await
            .unwrap()
            .is_some();
        if !exists {
            admin
                .batch_execute(&format!("create database \"{db}\""))
                .await
                .unwrap_or_else(|e| panic!("create database {db}: {e}"));
        }
    }
    for region in REGIONS {
        let client = connect_local(&region_db(region)).await;
        let sql = format!(
            "create table if not exists {POLICY_TABLE} \
             (id serial primary key, tenant_id text, email text)"
        );
        client.batch_execute(&sql).await.unwrap();
        // The default tenants always use the harness's `dev` KMS (one fixed
        // key file): a DEK row left by a test that once put a default tenant
        // on another KMS would make every later test of that tenant fail
        // with "kms ... is not configured". Tests on other KMSes use fresh
        // tenant names.
        let defaults: Vec<String> = TENANTS.iter().map(|(t, _)| (*t).to_string()).collect();
        let _ = client
            .execute(
                "delete from byokpg.tenant_keys where tenant = any($1) and kms <> 'dev'",
                &[&defaults],
            )
            .await;
    }
    admin
        .execute("select pg_advisory_unlock($1)", &[&SETUP_LOCK_KEY])
        .await
        .unwrap();
}

async fn connect_local(db: &str) -> Client {
    let params = format!("host={PG_HOST} port={PG_PORT} user=postgres dbname={db} sslmode=disable");
    let (client, conn) = tokio_postgres::connect(&params, NoTls)
        .await
        .unwrap_or_else(|e| panic!("{PG_DOWN} (connect to {db}: {e})"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A tokio-postgres client straight to a region database (bypassing byokpg),
/// to check where rows really landed. Must run inside a tokio runtime.
pub async fn direct_client(region: &str) -> Client {
    connect_local(&region_db(region)).await
}

/// A tokio-postgres client straight to any local database.
pub async fn direct_client_db(db: &str) -> Client {
    connect_local(db).await
}

/// SQLSTATE of a tokio-postgres error, if the server sent one.
pub fn sqlstate(e: &tokio_postgres::Error) -> Option<String> {
    e.as_db_error().map(|d| d.code().code().to_string())
}

/// Server message of a tokio-postgres error (empty when there is none).
pub fn db_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

/// Asserts that `result` failed with `code`; returns the error.
#[track_caller]
pub fn expect_sqlstate<T>(
    result: Result<T, tokio_postgres::Error>,
    code: &str,
) -> tokio_postgres::Error {
    match result {
        Ok(_) => panic!("expected SQLSTATE {code}, but the call succeeded"),
        Err(e) => {
            assert_eq!(
                sqlstate(&e).as_deref(),
                Some(code),
                "expected SQLSTATE {code}, got error: {e:?}"
            );
            e
        }
    }
}

/// The project's virtualenv Python (made by scripts/test.sh).
pub fn venv_python() -> PathBuf {
    let py = repo_root().join(".venv/bin/python");
    let ok = py.exists()
        && Command::new(&py)
            .args(["-c", "import psycopg"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{} with psycopg is missing: run `bash scripts/test.sh` first",
        py.display()
    );
    py
}

/// tests/node with its `node_modules` (made by scripts/test.sh).
pub fn node_dir() -> PathBuf {
    let dir = repo_root().join("tests/node");
    assert!(
        dir.join("node_modules/pg").exists(),
        "tests/node/node_modules is missing: run `bash scripts/test.sh` first"
    );
    dir
}

/// Runs a command to completion with stdin closed and returns its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Panics, with both streams, unless the command succeeded.
#[track_caller]
pub fn assert_success(what: &str, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    stdout
}

/// Percent-encodes a URL component (everything but unreserved characters).
pub fn pct(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub password: String,
    pub tenants: Vec<String>,
}

/// Paths of a PEM certificate chain and key for `[server] tls_cert/tls_key`.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A tenant on a KMS other than the default local one.
#[derive(Clone, Debug)]
pub struct TenantSpec {
    pub region: String,
    pub kms: String,
    pub key: String,
    pub extra: String,
}

/// Options of a proxy under test. Defaults: trust auth, tenants
/// acme→eu, globex→us, initech→apac, users `acme_app` (acme, globex),
/// `globex_app` (globex), `initech_app` (initech), password `<user>-pw`.
#[derive(Clone, Debug)]
pub struct ProxyBuilder {
    auth: &'static str,
    users: Vec<User>,
    tenants: BTreeMap<String, String>,
    /// Tenants on another KMS: name → (region, kms, key, extra lines).
    tenant_specs: BTreeMap<String, TenantSpec>,
    /// Extra `[kms.NAME]` sections: name → body lines.
    kms_sections: BTreeMap<String, String>,
    tls: Option<TlsFiles>,
    tls_mode: Option<String>,
    tables: Vec<String>,
    region_dsn: BTreeMap<String, String>,
    server_lines: Vec<String>,
    /// Extra environment of the `byokpg serve` child (e.g. AWS credentials).
    env: Vec<(String, String)>,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> Self {
        let tenants = TENANTS
            .iter()
            .map(|(t, r)| ((*t).to_string(), (*r).to_string()))
            .collect();
        Self {
            auth: "trust",
            users: Vec::new(),
            tenants,
            tenant_specs: BTreeMap::new(),
            kms_sections: BTreeMap::new(),
            tls: None,
            tls_mode: None,
            tables: Vec::new(),
            region_dsn: BTreeMap::new(),
            server_lines: Vec::new(),
            env: Vec::new(),
        }
    }

    /// An environment variable for the `byokpg serve` process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// An extra `key = value` line in `[server]`.
    pub fn server_option(mut self, line: &str) -> Self {
        self.server_lines.push(line.to_string());
        self
    }

    pub fn trust(mut self) -> Self {
        self.auth = "trust";
        self
    }

    pub fn scram(mut self) -> Self {
        self.auth = "scram-sha-256";
        self
    }

    /// Adds a user; the first time this is called the default users go away.
    pub fn user(mut self, name: &str, password: &str, tenants: &[&str]) -> Self {
        self.users.push(User {
            name: name.to_string(),
            password: password.to_string(),
            tenants: tenants.iter().map(|t| (*t).to_string()).collect(),
        });
        self
    }

    pub fn tenant(mut self, name: &str, region: &str) -> Self {
        self.tenants.insert(name.to_string(), region.to_string());
        self
    }

    /// Adds a `[kms.NAME]` section; `body` is its lines, e.g.
    /// `"provider = \"vault-transit\"\naddress = \"http://...\""`.
    pub fn kms(mut self, name: &str, body: &str) -> Self {
        self.kms_sections.insert(name.to_string(), body.to_string());
        self
    }

    /// A tenant on KMS `kms` with KEK `key`; `extra` holds more lines of
    /// `[tenants.NAME]` (e.g. `dek_cache_ttl = "1s"`). Replaces a default
    /// tenant of the same name.
    pub fn tenant_on(
        mut self,
        name: &str,
        region: &str,
        kms: &str,
        key: &str,
        extra: &str,
    ) -> Self {
        self.tenants.remove(name);
        self.tenant_specs.insert(
            name.to_string(),
            TenantSpec {
                region: region.to_string(),
                kms: kms.to_string(),
                key: key.to_string(),
                extra: extra.to_string(),
            },
        );
        self
    }

    pub fn tls(mut self, files: TlsFiles) -> Self {
        self.tls = Some(files);
        self
    }

    pub fn tls_mode(mut self, mode: &str) -> Self {
        self.tls_mode = Some(mode.to_string());
        self
    }

    /// Adds a raw `[[table]]` block to the policy, e.g.
    /// `"[[table]]\nname = \"t\"\n[table.columns]\nx = \"randomized\"\n"`.
    pub fn policy_table(mut self, toml_block: &str) -> Self {
        self.tables.push(toml_block.to_string());
        self
    }

    /// Points a region at another DSN (another database, a dead port, TLS).
    pub fn region_dsn(mut self, region: &str, dsn: &str) -> Self {
        self.region_dsn.insert(region.to_string(), dsn.to_string());
        self
    }

    fn effective_users(&self) -> Vec<User> {
        if !self.users.is_empty() {
            return self.users.clone();
        }
        let mk = |name: &str, tenants: &[&str]| User {
            name: name.to_string(),
            password: format!("{name}-pw"),
            tenants: tenants.iter().map(|t| (*t).to_string()).collect(),
        };
        vec![
            mk("acme_app", &["acme", "globex"]),
            mk("globex_app", &["globex"]),
            mk("initech_app", &["initech"]),
        ]
    }

    fn dsn_of(&self, region: &str) -> String {
        self.region_dsn
            .get(region)
            .cloned()
            .unwrap_or_else(|| local_dsn(&region_db(region)))
    }

    fn config_toml(&self, ports: (u16, u16), key_file: &Path) -> String {
        let mut c = String::new();
        writeln!(c, "[server]\nauth = {}", toml_str(self.auth)).unwrap();
        writeln!(c, "listen = \"{PG_HOST}:{}\"", ports.0).unwrap();
        writeln!(c, "admin_listen = \"{PG_HOST}:{}\"", ports.1).unwrap();
        writeln!(c, "admin_token = {}", toml_str(ADMIN_TOKEN)).unwrap();
        if let Some(tls) = &self.tls {
            writeln!(c, "tls_cert = {}", toml_str(&tls.cert.to_string_lossy())).unwrap();
            writeln!(c, "tls_key = {}", toml_str(&tls.key.to_string_lossy())).unwrap();
        }
        if let Some(mode) = &self.tls_mode {
            writeln!(c, "tls_mode = {}", toml_str(mode)).unwrap();
        }
        for line in &self.server_lines {
            writeln!(c, "{line}").unwrap();
        }
        for u in self.effective_users() {
            let tenants: Vec<String> = u.tenants.iter().map(|t| toml_str(t)).collect();
            writeln!(
                c,
                "\n[[users]]\nname = {}\npassword = {}\ntenants = [{}]",
                toml_str(&u.name),
                toml_str(&u.password),
                tenants.join(", ")
            )
            .unwrap();
        }
        for region in REGIONS {
            writeln!(
                c,
                "\n[regions.{region}]\ndsn = {}",
                toml_str(&self.dsn_of(region))
            )
            .unwrap();
        }
        let key_file = toml_str(&key_file.to_string_lossy());
        writeln!(
            c,
            "\n[kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = {key_file}"
        )
        .unwrap();
        for (tenant, region) in &self.tenants {
            writeln!(
                c,
                "\n[tenants.{tenant}]\nregion = {}\nkms = \"dev\"\nkey = {}",
                toml_str(region),
                toml_str(&format!("{tenant}-kek"))
            )
            .unwrap();
        }
        for (name, body) in &self.kms_sections {
            writeln!(c, "\n[kms.{name}]\n{body}").unwrap();
        }
        for (tenant, t) in &self.tenant_specs {
            writeln!(
                c,
                "\n[tenants.{tenant}]\nregion = {}\nkms = {}\nkey = {}\n{}",
                toml_str(&t.region),
                toml_str(&t.kms),
                toml_str(&t.key),
                t.extra
            )
            .unwrap();
        }
        writeln!(
            c,
            "\n[[table]]\nname = \"{POLICY_TABLE}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nemail = \"deterministic\""
        )
        .unwrap();
        for block in &self.tables {
            writeln!(c, "\n{block}").unwrap();
        }
        c
    }

    /// Prepares the databases, writes the config and starts `byokpg serve`
    /// (unless in direct mode). Panics with the proxy's log if it does not
    /// accept connections within 30 s.
    pub fn start(self) -> Proxy {
        let extra: Vec<String> = self
            .region_dsn
            .values()
            .filter_map(|d| local_db_of(d))
            .collect();
        let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
        ensure_databases(&extra_refs);
        let dir = tempfile::Builder::new()
            .prefix("byokpg-e2e-")
            .tempdir()
            .unwrap();
        let key_file = dir.path().join("dev-kek.key");
        fs::write(&key_file, format!("{}\n", "4b".repeat(32))).unwrap();
        let ports = (free_port(), free_port());
        let config_path = dir.path().join("byokpg.toml");
        fs::write(&config_path, self.config_toml(ports, &key_file)).unwrap();
        let log_path = dir.path().join("byokpg.log");
        let mut proxy = Proxy {
            child: None,
            port: ports.0,
            admin_port: ports.1,
            config_path,
            log_path,
            builder: self,
            dir,
        };
        if !direct_mode() {
            proxy.spawn();
        }
        proxy
    }
}

/// The database named by a DSN on the local `PostgreSQL`, if it is one.
fn local_db_of(dsn: &str) -> Option<String> {
    let url = url::Url::parse(dsn).ok()?;
    let local = url.host_str() == Some(PG_HOST) && url.port().unwrap_or(5432) == PG_PORT;
    let db = url.path().trim_start_matches('/');
    (local && !db.is_empty()).then(|| db.to_string())
}

/// A running `byokpg serve` (or, in direct mode, a stand-in for one).
pub struct Proxy {
    child: Option<Child>,
    pub port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    builder: ProxyBuilder,
    dir: tempfile::TempDir,
}

impl Proxy {
    pub fn builder() -> ProxyBuilder {
        ProxyBuilder::new()
    }

    /// A proxy with the default options.
    pub fn start() -> Proxy {
        ProxyBuilder::new().start()
    }

    fn spawn(&mut self) {
        let log = fs::File::create(&self.log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_byokpg"));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(self.builder.env.iter().map(|(k, v)| (k, v)));
        self.child = Some(cmd.spawn().unwrap());
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = format!("{PG_HOST}:{}", self.port).parse().unwrap();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "byokpg serve exited early ({status}); config:\n{}\n--- log\n{}",
                    self.config(),
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "byokpg serve did not accept connections on port {} within {START_TIMEOUT:?}\n--- log\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails the test when running in direct mode (behaviour of the proxy
    /// itself is being tested).
    #[allow(clippy::unused_self)] // a method so that it reads as a property of the proxy
    pub fn require_proxy(&self) {
        assert!(
            !direct_mode(),
            "this test checks byokpg itself: unset BYOKPG_E2E_DIRECT"
        );
    }

    /// Process id of `byokpg serve`.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy not running").id()
    }

    /// Send a signal (`HUP`, `TERM`, ...) to `byokpg serve`.
    pub fn signal(&self, sig: &str) {
        let out = run(Command::new("kill")
            .arg("-s")
            .arg(sig)
            .arg(self.pid().to_string()));
        assert!(out.status.success(), "kill -s {sig} failed");
    }

    /// Wait for `byokpg serve` to exit; `None` when it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut()?.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// POST to the admin API with an optional bearer token.
    pub fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect((PG_HOST, self.admin_port)).unwrap();
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        (code, resp)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn config(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The temporary directory holding config, key file and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn users(&self) -> Vec<User> {
        self.builder.effective_users()
    }

    /// Region of a configured tenant.
    pub fn region_of(&self, tenant: &str) -> String {
        self.builder
            .tenants
            .get(tenant)
            .cloned()
            .or_else(|| {
                self.builder
                    .tenant_specs
                    .get(tenant)
                    .map(|t| t.region.clone())
            })
            .unwrap_or_else(|| panic!("tenant {tenant} is not configured"))
    }

    /// Database that a region's DSN names (what direct mode connects to).
    pub fn region_database(&self, region: &str) -> String {
        local_db_of(&self.builder.dsn_of(region)).unwrap_or_else(|| region_db(region))
    }

    /// Host and port clients connect to (`PostgreSQL` itself in direct mode).
    pub fn addr(&self) -> (String, u16) {
        if direct_mode() {
            (PG_HOST.to_string(), PG_PORT)
        } else {
            (PG_HOST.to_string(), self.port)
        }
    }

    /// libpq URL for `user` (optionally as `tenant`), `sslmode=disable`.
    pub fn dsn(&self, user: &str, password: &str, tenant: Option<&str>) -> String {
        self.dsn_with(user, password, tenant, &[])
    }

    /// libpq URL with extra parameters (`sslmode` here replaces the default
    /// `disable`). Works for psql, pgbench, psycopg, node pg and tokio-postgres.
    pub fn dsn_with(
        &self,
        user: &str,
        password: &str,
        tenant: Option<&str>,
        params: &[(&str, &str)],
    ) -> String {
        let mut query: Vec<String> = Vec::new();
        if !params.iter().any(|(k, _)| *k == "sslmode") {
            query.push("sslmode=disable".to_string());
        }
        query.extend(params.iter().map(|(k, v)| format!("{k}={}", pct(v))));
        if direct_mode() {
            let tenant = tenant.map_or_else(|| self.first_tenant(user), str::to_string);
            let db = self.region_database(&self.region_of(&tenant));
            return format!(
                "postgresql://postgres@{PG_HOST}:{PG_PORT}/{db}?{}",
                query.join("&")
            );
        }
        if let Some(t) = tenant {
            query.push(format!("options={}", pct(&format!("-c byokpg.tenant={t}"))));
        }
        format!(
            "postgresql://{}:{}@{PG_HOST}:{}/{CLIENT_DB}?{}",
            pct(user),
            pct(password),
            self.port,
            query.join("&")
        )
    }

    fn first_tenant(&self, user: &str) -> String {
        self.users()
            .iter()
            .find(|u| u.name == user)
            .and_then(|u| u.tenants.first().cloned())
            .unwrap_or_else(|| panic!("user {user} is not configured"))
    }

    /// Password of a configured user.
    pub fn password(&self, user: &str) -> String {
        self.users()
            .into_iter()
            .find(|u| u.name == user)
            .unwrap_or_else(|| panic!("user {user} is not configured"))
            .password
    }

    /// Connects with tokio-postgres over plaintext.
    pub async fn try_connect(
        &self,
        user: &str,
        tenant: Option<&str>,
    ) -> Result<Client, tokio_postgres::Error> {
        let dsn = self.dsn(user, &self.password(user), tenant);
        let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Connects with tokio-postgres over plaintext; panics (with the log) on error.
    pub async fn connect(&self, user: &str, tenant: Option<&str>) -> Client {
        match self.try_connect(user, tenant).await {
            Ok(c) => c,
            Err(e) => panic!(
                "connect as {user} ({tenant:?}) failed: {e:?}\n--- log\n{}",
                self.log()
            ),
        }
    }

    /// Runs psql with `-X -q -At -v ON_ERROR_STOP=1` and the given extra args.
    pub fn psql(&self, dsn: &str, args: &[&str]) -> Output {
        let mut cmd = Command::new("psql");
        cmd.args(["-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-d", dsn])
            .args(args)
            .current_dir(self.dir());
        run(&mut cmd)
    }

    /// Sends a raw protocol message on a fresh socket and returns the socket.
    pub fn raw_socket(&self) -> TcpStream {
        let s = TcpStream::connect((PG_HOST, self.addr().1)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s
    }

    /// `GET` on the admin port; returns (status, body).
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        let mut s = TcpStream::connect((PG_HOST, self.admin_port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- byokpg config ({})\n{}\n--- byokpg log ({})\n{}",
                self.config_path.display(),
                self.config(),
                self.log_path.display(),
                self.log()
            );
        }
    }
}

/// `pg_dump --data-only` of a local database (as `postgres`), stdout bytes.
/// Retried a few times: parallel tests create and drop tables while it runs,
/// and pg_dump fails when a table it listed is gone before it locks it.
pub fn pg_dump_data_only(db: &str) -> Vec<u8> {
    let port = PG_PORT.to_string();
    let mut last = String::new();
    for _ in 0..5 {
        let out = run(Command::new("pg_dump").args([
            "--data-only",
            "--no-password",
            "-h",
            PG_HOST,
            "-p",
            &port,
            "-U",
            "postgres",
            "-d",
            db,
        ]));
        if out.status.success() {
            return out.stdout;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
    }
    panic!(
        "pg_dump --data-only {db} failed 5 times (is postgresql-client installed? run `bash scripts/test.sh`); last error: {last}"
    );
}

/// Runs `sql` directly (bypassing byokpg) in each region's database, after
/// making sure they exist. Tests create their policy tables this way before
/// starting the proxy, so its first catalog load already knows them.
pub async fn create_in_regions(regions: &[&str], sql: &str) {
    ensure_databases(&[]);
    for region in regions {
        direct_client(region)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("in region {region}: {sql}: {e}"));
    }
}
