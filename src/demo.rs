//! `byokpg demo`: a first run on one machine. Creates three region databases
//! on a local PostgreSQL, writes a demo config (local KMS, example policy),
//! seeds example tables, prints how to connect, and runs the proxy.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use tokio_postgres::NoTls;

use crate::protocol::scram::fill_random;

/// Where the demo puts its files (relative to the working directory).
pub const DEMO_CONFIG: &str = "config/demo.toml";
const DEMO_KEY: &str = "config/dev-kek.key";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("byokpg: cannot reach PostgreSQL at {dsn}: {reason}; start it or pass --pg DSN")]
    Connect { dsn: String, reason: String },
    #[error("byokpg: demo setup failed: {0}")]
    Setup(String),
    #[error("byokpg: cannot write {path}: {reason}")]
    Write { path: String, reason: String },
}

/// Regions of the demo: (region, database, tenant).
const REGIONS: [(&str, &str, &str); 3] = [
    ("us", "byokpg_demo_us", "acme"),
    ("eu", "byokpg_demo_eu", "globex"),
    ("apac", "byokpg_demo_apac", "initech"),
];

/// Options of `byokpg demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Admin DSN of the local PostgreSQL.
    pub pg: String,
    /// Client port of the proxy.
    pub port: u16,
}

/// Prepare databases and config; returns the config path.
pub async fn prepare(opts: &DemoOptions) -> Result<PathBuf, DemoError> {
    let (admin, conn) = tokio_postgres::connect(&opts.pg, NoTls)
        .await
        .map_err(|e| DemoError::Connect {
            dsn: redact(&opts.pg),
            reason: e.to_string(),
        })?;
    tokio::spawn(conn);
    for (_, db, tenant) in REGIONS {
        create_database(&admin, db).await?;
        seed(&opts.pg, db, tenant).await?;
    }
    write_key(Path::new(DEMO_KEY))?;
    let config = demo_config(opts);
    write_file(Path::new(DEMO_CONFIG), &config)?;
    Ok(PathBuf::from(DEMO_CONFIG))
}

async fn create_database(admin: &tokio_postgres::Client, db: &str) -> Result<(), DemoError> {
    let exists = admin
        .query_opt("select 1 from pg_database where datname = $1", &[&db])
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    if exists.is_none() {
        // Identifiers cannot be bound as parameters; `db` is one of our constants.
        admin
            .batch_execute(&format!("create database {db}"))
            .await
            .map_err(|e| DemoError::Setup(e.to_string()))?;
    }
    Ok(())
}

async fn seed(admin_dsn: &str, db: &str, tenant: &str) -> Result<(), DemoError> {
    let dsn = with_database(admin_dsn, db);
    let (client, conn) =
        tokio_postgres::connect(&dsn, NoTls)
            .await
            .map_err(|e| DemoError::Connect {
                dsn: redact(&dsn),
                reason: e.to_string(),
            })?;
    tokio::spawn(conn);
    let sql = format!(
        "create table if not exists customers (id serial primary key, tenant_id text not null, email text, ssn text, notes text);
         create table if not exists audit_log (id bigserial primary key, tenant_id text not null, at timestamptz not null default now(),
             payload text, chain_seq bigint, prev_hash text, row_hash text);
         create table if not exists orders (id serial primary key, tenant_id text not null, item text not null, amount numeric(10,2) not null);
         insert into orders (tenant_id, item, amount)
             select '{tenant}', item, amount from (values ('widget', 9.99), ('gadget', 24.50), ('gizmo', 3.75)) v(item, amount)
             where not exists (select 1 from orders);"
    );
    client
        .batch_execute(&sql)
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))
}

fn demo_config(opts: &DemoOptions) -> String {
    let mut c = format!(
        "# Written by `byokpg demo`: a local, development-only setup.\n\
         [server]\nauth = \"scram-sha-256\"\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\n\
         admin_token = \"demo-admin-token\"\n\n\
         [[users]]\nname = \"demo\"\npassword = \"demo\"\ntenants = [\"acme\", \"globex\", \"initech\"]\n\n\
         [kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = \"{DEMO_KEY}\"\n",
        opts.port,
        opts.port.wrapping_add(3498)
    );
    for (region, db, tenant) in REGIONS {
        let _ = write!(
            c,
            "\n[regions.{region}]\ndsn = \"{}\"\n\n[tenants.{tenant}]\nregion = \"{region}\"\nkms = \"dev\"\nkey = \"{tenant}-kek\"\n",
            with_database(&opts.pg, db)
        );
    }
    c.push_str(
        "\n[[table]]\nname = \"customers\"\ntenant_column = \"tenant_id\"\n[table.columns]\nemail = \"deterministic\"\nssn = \"randomized\"\nnotes = \"randomized\"\n\
         \n[[table]]\nname = \"audit_log\"\nappend_only = true\nhash_chain = true\ntenant_column = \"tenant_id\"\n[table.columns]\npayload = \"randomized\"\n",
    );
    c
}

/// Replace the database of a URL- or keyword-form DSN.
fn with_database(dsn: &str, db: &str) -> String {
    if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        let (base, query) = dsn
            .split_once('?')
            .map_or((dsn, None), |(b, q)| (b, Some(q)));
        let scheme_end = base.find("://").map_or(0, |i| i + 3);
        let host_part = match base[scheme_end..].find('/') {
            Some(i) => &base[..scheme_end + i],
            None => base,
        };
        match query {
            Some(q) => format!("{host_part}/{db}?{q}"),
            None => format!("{host_part}/{db}"),
        }
    } else {
        let kept: Vec<&str> = dsn
            .split_whitespace()
            .filter(|kv| !kv.starts_with("dbname="))
            .collect();
        format!("{} dbname={db}", kept.join(" "))
    }
}

fn redact(dsn: &str) -> String {
    crate::config::Dsn::parse(dsn).map_or_else(|_| "(the --pg DSN)".to_owned(), |d| d.redacted())
}

fn write_key(path: &Path) -> Result<(), DemoError> {
    if path.exists() {
        return Ok(());
    }
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    fill_random(&mut *key);
    let hex = zeroize::Zeroizing::new(hex::encode(*key));
    write_file(path, &format!("{}\n", hex.as_str()))?;
    restrict(path);
    Ok(())
}

#[cfg(unix)]
fn restrict(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

fn write_file(path: &Path, text: &str) -> Result<(), DemoError> {
    let err = |e: std::io::Error| DemoError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::write(path, text).map_err(err)
}

/// What the demo prints once the proxy is about to start.
pub fn banner(port: u16) -> String {
    let url = |t: &str| {
        format!("postgres://demo:demo@127.0.0.1:{port}/app?options=-c%20byokpg.tenant%3D{t}")
    };
    format!(
        "\nbyokpg demo is starting (config: {DEMO_CONFIG}; Ctrl-C stops it).\n\n\
         Connect as tenant acme (region us), globex (eu) or initech (apac):\n\
         \x20 psql \"{}\"\n\x20 psql \"{}\"\n\x20 psql \"{}\"\n\n\
         Try:  select * from orders;   -- relayed to the tenant's region database\n\
         \x20     insert into customers (email, ssn) values ('ann@example.com', '078-05-1120');\n\
         \x20     select * from customers where email = 'ann@example.com';  -- decrypted; the database holds only byok1:...\n\
         Metrics: curl http://127.0.0.1:{}/metrics\n",
        url("acme"),
        url("globex"),
        url("initech"),
        port.wrapping_add(3498)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_replaced_in_both_dsn_forms() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/postgres", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://h:5432", "x"),
            "postgres://h:5432/x"
        );
        assert_eq!(
            with_database("host=h dbname=postgres user=u", "x"),
            "host=h user=u dbname=x"
        );
    }

    #[test]
    fn demo_config_is_valid() {
        let opts = DemoOptions {
            pg: "postgres://postgres@127.0.0.1:5432/postgres".to_owned(),
            port: 6432,
        };
        let text = demo_config(&opts);
        let cfg = crate::config::parse_str(&text, Path::new("demo.toml"));
        assert!(cfg.is_ok(), "{:?}", cfg.err());
    }
}
