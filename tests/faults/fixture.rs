//! The proxy under test with its three tenants, their tables and services.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use super::bao::Bao;
use super::cluster::Cluster;
use super::relay::Relay;
use super::workload::{Tables, Target, Workload, Written};
use crate::common::{POLICY_TABLE, Proxy, create_in_regions, direct_client_db, unique_name};

pub const USER: &str = "faults_app";
pub const PASSWORD: &str = "faults_app-pw";
/// `dek_cache_ttl` of every tenant: revocation must show within it.
pub const TTL: Duration = Duration::from_secs(2);
const KEY_GOOD: &str = "5c";
const TRANSIT_KEY: &str = "faults-kek";

pub struct Fx {
    pub proxy: Proxy,
    pub cluster: Cluster,
    pub relay: Relay,
    _bao: Bao,
    /// Tenant on the local KMS whose key file is replaced mid-run (us).
    pub rev: String,
    /// Tenant on Vault Transit behind the relay (eu).
    pub kms: String,
    /// Tenant on the private cluster (apac).
    pub reg: String,
    pub rev_key: PathBuf,
    pub tables: Tables,
    pub marker: String,
    pub cap: usize,
    _keydir: tempfile::TempDir,
}

pub fn write_key(path: &std::path::Path, byte: &str) {
    std::fs::write(path, format!("{}\n", byte.repeat(32))).expect("write a local KEK file");
}

fn ddl(t: &Tables) -> String {
    format!(
        "create table {enc} (id serial primary key, tenant_id text, secret text, email text);\n\
         create table {plain} (id serial primary key, tenant_id text, note text);\n\
         create table {audit} (id serial primary key, tenant_id text not null, \
         at timestamptz not null default now(), kind text, payload text, \
         chain_seq bigint, prev_hash text, row_hash text);\n\
         create table if not exists {POLICY_TABLE} (id serial primary key, tenant_id text, email text);",
        enc = t.enc,
        plain = t.plain,
        audit = t.audit
    )
}

fn policy(t: &Tables) -> String {
    format!(
        "[[table]]\nname = \"{}\"\ntenant_column = \"tenant_id\"\n[table.columns]\n\
         secret = \"randomized\"\nemail = \"deterministic\"\n\n\
         [[table]]\nname = \"{}\"\nappend_only = true\nhash_chain = true\n\
         tenant_column = \"tenant_id\"\n[table.columns]\npayload = \"randomized\"\n",
        t.enc, t.audit
    )
}

/// The revocable tenant's KMS: its own key file.
fn local_kms(key_file: &std::path::Path) -> String {
    format!(
        "provider = \"local\"\nallow_insecure_local = true\nkey_file = \"{}\"\ntimeout = \"2s\"",
        key_file.display()
    )
}

/// Vault Transit through the relay; a 2 s timeout and one retry keep the
/// outage answers (58030) quick, yet leave room for a loaded CI machine
/// (a spurious timeout would show as an error of an unaffected tenant).
fn vault_kms(relay_port: u16) -> String {
    format!(
        "provider = \"vault-transit\"\naddress = \"http://127.0.0.1:{relay_port}\"\n\
         token = \"root\"\ntimeout = \"2s\"\nmax_retries = 1"
    )
}

impl Fx {
    pub async fn start(workers: usize) -> Self {
        let id = unique_name("flt");
        let tables = Tables {
            enc: format!("{id}_enc"),
            plain: format!("{id}_plain"),
            audit: format!("{id}_audit"),
        };
        let cluster = tokio::task::block_in_place(|| Cluster::start("app"));
        create_in_regions(&["us", "eu"], &ddl(&tables)).await;
        connect_dsn(&cluster.dsn("app"))
            .await
            .batch_execute(&ddl(&tables))
            .await
            .expect("tables in the private cluster");
        let bao = Bao::start(TRANSIT_KEY).await;
        let relay = Relay::start(format!("127.0.0.1:{}", bao.port)).await;
        let keydir = tempfile::tempdir().expect("key dir");
        let rev_key = keydir.path().join("rev.key");
        write_key(&rev_key, KEY_GOOD);
        let (rev, kms, reg) = (format!("{id}_r"), format!("{id}_k"), format!("{id}_g"));
        // Workers + 15 fillers fill the cap exactly during the abuse fault.
        let cap = workers + 15;
        let ttl = format!("dek_cache_ttl = \"{}s\"", TTL.as_secs());
        let proxy = Proxy::builder()
            .user(USER, PASSWORD, &[&rev, &kms, &reg])
            .region_dsn("apac", &cluster.dsn("app"))
            .server_option(&format!("max_client_connections = {cap}"))
            .server_option("drain_timeout = \"20s\"")
            .kms("revk", &local_kms(&rev_key))
            .kms("vault", &vault_kms(relay.port))
            .tenant_on(&rev, "us", "revk", "rev-kek", &ttl)
            .tenant_on(&kms, "eu", "vault", TRANSIT_KEY, &ttl)
            .tenant_on(&reg, "apac", "dev", "reg-kek", &ttl)
            .policy_table(&policy(&tables));
        let proxy = tokio::task::block_in_place(|| proxy.start());
        proxy.require_proxy();
        Self {
            proxy,
            cluster,
            relay,
            _bao: bao,
            rev,
            kms,
            reg,
            rev_key,
            tables,
            marker: unique_name("pt"),
            cap,
            _keydir: keydir,
        }
    }

    pub fn tenants(&self) -> Vec<String> {
        vec![self.rev.clone(), self.kms.clone(), self.reg.clone()]
    }

    pub fn target(&self) -> Target {
        let dsns = self
            .tenants()
            .into_iter()
            .map(|t| {
                let dsn = self.proxy.dsn(USER, PASSWORD, Some(&t));
                (t, dsn)
            })
            .collect();
        Target {
            dsns: Arc::new(dsns),
            tables: self.tables.clone(),
            marker: self.marker.clone(),
        }
    }

    pub fn start_workload(&self, per_tenant: usize) -> Workload {
        Workload::start(&self.target(), &self.tenants(), per_tenant)
    }

    /// A direct client (bypassing byokpg) to the database of a tenant.
    pub async fn direct(&self, tenant: &str) -> Client {
        if tenant == self.reg {
            connect_dsn(&self.cluster.dsn("app")).await
        } else {
            let region = self.proxy.region_of(tenant);
            direct_client_db(&self.proxy.region_database(&region)).await
        }
    }

    /// A client through byokpg as `tenant`, retried while the tenant
    /// recovers (up to 60 s).
    pub async fn through(&self, tenant: &str) -> Client {
        let deadline = Instant::now() + Duration::from_mins(1);
        loop {
            match self.proxy.try_connect(USER, Some(tenant)).await {
                Ok(c) => return c,
                Err(e) => assert!(Instant::now() < deadline, "connect as {tenant}: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Runs `byokpg <args> --config <the proxy's config>`.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_byokpg"))
            .args(args)
            .arg("--config")
            .arg(&self.proxy.config_path)
            .output()
            .expect("run the byokpg binary")
    }

    /// The data checks after a fault; returns a summary for the table.
    /// `through_proxy` is false once byokpg has exited (read-back needs it).
    pub async fn check_data(&self, work: &Workload, through_proxy: bool) -> String {
        let mut rows = 0;
        for t in self.tenants() {
            self.assert_no_plaintext(&t).await;
            self.assert_chain(&t);
            if through_proxy {
                rows += self.assert_read_back(&t, &work.written(&t)).await;
            }
        }
        if through_proxy {
            format!("ok: {rows} rows read back, 3 chains, no plaintext")
        } else {
            "ok: 3 chains, no plaintext".to_owned()
        }
    }

    async fn assert_no_plaintext(&self, tenant: &str) {
        let d = self.direct(tenant).await;
        let Tables { enc, audit, .. } = &self.tables;
        let like = format!("%{}%", self.marker);
        let sql = format!(
            "select (select count(*) from {enc} where secret like $1 or email like $1) \
             + (select count(*) from {audit} where payload like $1), \
             (select count(*) from {enc}) + (select count(*) from {audit})"
        );
        let row = d.query_one(&sql, &[&like]).await.expect("plaintext scan");
        let (plain, total): (i64, i64) = (row.get(0), row.get(1));
        assert_eq!(
            plain, 0,
            "plaintext of a protected column in {tenant}'s region"
        );
        assert!(total > 0, "{tenant}'s region holds no workload rows at all");
    }

    fn assert_chain(&self, tenant: &str) {
        let out = tokio::task::block_in_place(|| {
            self.cli(&[
                "audit",
                "verify",
                "--tenant",
                tenant,
                "--table",
                &self.tables.audit,
            ])
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.lines().last().is_some_and(|l| l.starts_with("ok: ")),
            "audit verify {tenant}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    async fn assert_read_back(&self, tenant: &str, written: &[Written]) -> usize {
        assert!(!written.is_empty(), "{tenant} committed no rows");
        let c = self.through(tenant).await;
        let sql = format!(
            "select id, secret, email from {} where tenant_id = $1",
            self.tables.enc
        );
        let rows = c.query(&sql, &[&tenant]).await.expect("read back");
        let got: std::collections::HashMap<i32, (String, String)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        for (id, secret, email) in written {
            assert_eq!(
                got.get(id),
                Some(&(secret.clone(), email.clone())),
                "{tenant}'s committed row {id} does not read back identically"
            );
        }
        written.len()
    }
}

pub async fn connect_dsn(dsn: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect {dsn}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}
