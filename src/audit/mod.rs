//! Append-only audit tables: the hash chain computed in the database, and
//! `byokpg audit verify` / `audit attest` (SPEC §6, docs/AUDIT.md,
//! docs/FORMAT.md "Hash chain").

/// Name of the BEFORE INSERT trigger that chains rows. Triggers of one
/// event fire in name order; `zz_` makes it fire after the usual user
/// triggers, so it hashes the row as stored.
pub const CHAIN_TRIGGER: &str = "zz_byokpg_chain";

mod attach;
pub mod chain;
pub mod sql;

pub use attach::attach_chains;
mod attest;
mod schedule;
mod verify;

pub use attest::attest;
pub use schedule::spawn_scheduled_attest;
pub use verify::{Verdict, VerifyOptions, verify};

use tokio_postgres::Client;

use crate::config::{Config, TableConfig, TenantConfig};

/// Why an audit command could not run (a broken chain is not an error: it
/// is a [`Verdict`]). Messages never hold a DSN password or key material.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Unknown tenant or table, missing signing key, KMS not configured.
    #[error("byokpg: {0}")]
    Config(String),
    /// The region database is unreachable or a query failed.
    #[error("byokpg: region {region}: {message}")]
    Database { region: String, message: String },
    /// The KMS refused or failed a sign / verify.
    #[error("byokpg: KMS {kms}: {message}")]
    Kms { kms: String, message: String },
}

/// The chain a command works on: a tenant and a hash-chained table.
struct Target<'a> {
    tenant: &'a str,
    tenant_cfg: &'a TenantConfig,
    table: &'a TableConfig,
}

impl Target<'_> {
    fn relation(&self) -> String {
        sql::quote_qualified(&self.table.schema(), &self.table.table())
    }

    /// `[seq, prev, hash]` column names.
    fn chain(&self) -> [&str; 3] {
        self.table.chain_columns().unwrap_or(["", "", ""])
    }

    /// SQL condition selecting this tenant's chain.
    fn tenant_filter(&self) -> String {
        match &self.table.tenant_column {
            Some(tc) => format!(
                "{} = {}",
                sql::quote_ident(tc),
                sql::quote_literal(self.tenant)
            ),
            None => "true".to_owned(),
        }
    }

    fn db_error(&self, e: &tokio_postgres::Error) -> AuditError {
        AuditError::Database {
            region: self.tenant_cfg.region.clone(),
            message: sql::pg_message(e),
        }
    }
}

fn tenant<'a>(cfg: &'a Config, tenant: &str) -> Result<&'a TenantConfig, AuditError> {
    cfg.tenants
        .get(tenant)
        .ok_or_else(|| AuditError::Config(format!("unknown tenant {tenant} (not in [tenants])")))
}

/// The hash-chained policy table `name` (`table` or `schema.table`).
fn chained_table<'a>(cfg: &'a Config, name: &str) -> Result<&'a TableConfig, AuditError> {
    let found = cfg
        .tables
        .iter()
        .find(|t| t.qualified() == name || t.name == name)
        .or_else(|| cfg.tables.iter().find(|t| t.table() == name));
    match found {
        Some(t) if t.hash_chain => Ok(t),
        Some(t) => Err(AuditError::Config(format!(
            "table {} has no hash chain (set hash_chain = true in its [[table]])",
            t.qualified()
        ))),
        None => Err(AuditError::Config(format!(
            "table {name} is not in the policy ([[table]])"
        ))),
    }
}

async fn connect(cfg: &Config, t: &TenantConfig) -> Result<Client, AuditError> {
    let region = cfg
        .regions
        .get(&t.region)
        .ok_or_else(|| AuditError::Config(format!("unknown region {} of the tenant", t.region)))?;
    crate::pgmeta::connect(&region.dsn, cfg.server.connect_timeout)
        .await
        .map_err(|e| AuditError::Database {
            region: t.region.clone(),
            message: e.to_string(),
        })
}

/// The KMS `[kms.NAME]`, built for a sign or verify.
async fn kms(cfg: &Config, name: &str) -> Result<crate::kms::Kms, AuditError> {
    let section = cfg.kms.get(name).ok_or_else(|| {
        AuditError::Config(format!("KMS {name} is not in the config ([kms.{name}])"))
    })?;
    crate::kms::Kms::from_config(name, section)
        .await
        .map_err(|e| AuditError::Kms {
            kms: name.to_owned(),
            message: e.to_string(),
        })
}
