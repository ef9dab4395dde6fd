//! `byokpg setup`: create or upgrade byokpg's own schema (`byokpg`) in every
//! region database (SPEC §2). `serve` runs it too, so it must be idempotent
//! and safe when many byokpg processes start at once against the same
//! databases.
//!
//! `CREATE ... IF NOT EXISTS` is not enough for that: two sessions can both
//! see "not exists" and one then fails on the catalog's unique index
//! (`pg_namespace_nspname_index`, `pg_type_typname_nsp_index`). So the
//! whole migration runs in one transaction that first takes a
//! transaction-scoped advisory lock; the second process waits, then finds
//! everything in place. Advisory locks are per database, which is exactly
//! the scope of the schema.
//!
//! Upgrades: [`MIGRATIONS`] is an ordered list; `byokpg.schema_migrations`
//! records which versions are applied. Add a new entry for every change —
//! never edit an applied one.
use tokio_postgres::Client;

use crate::config::Config;

/// The advisory lock key byokpg's migrations hold (ASCII "byokpgsc").
pub const SETUP_LOCK_KEY: i64 = 0x6279_6f6b_7067_7363;

/// One schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every schema change, in order.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
    description: "tenant_keys: wrapped DEKs per tenant and version",
    sql: "
        CREATE TABLE IF NOT EXISTS byokpg.tenant_keys (
            tenant      text        NOT NULL,
            version     int         NOT NULL CHECK (version > 0),
            kms         text        NOT NULL,
            key_ref     text        NOT NULL,
            wrapped     bytea       NOT NULL,
            status      text        NOT NULL CHECK (status IN ('active', 'retired')),
            created_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now(),
            retired_at  timestamptz,
            PRIMARY KEY (tenant, version)
        );
        CREATE UNIQUE INDEX IF NOT EXISTS tenant_keys_one_active
            ON byokpg.tenant_keys (tenant) WHERE status = 'active';
        COMMENT ON TABLE byokpg.tenant_keys IS
            'byokpg: per-tenant data keys, stored only wrapped by the tenant''s KMS key (see docs/KEYS.md)';
    ",
    },
    Migration {
        version: 2,
        description: "kms_log: the customer-visible log of KMS operations",
        sql: "
        CREATE TABLE IF NOT EXISTS byokpg.kms_log (
            id          bigserial   PRIMARY KEY,
            time        timestamptz NOT NULL DEFAULT now(),
            tenant      text        NOT NULL,
            operation   text        NOT NULL CHECK (operation IN
                            ('describe', 'generate', 'wrap', 'unwrap', 'rewrap', 'sign', 'verify')),
            outcome     text        NOT NULL CHECK (outcome IN ('success', 'denied', 'error')),
            error_code  text,
            key_ref     text        NOT NULL,
            kms         text        NOT NULL,
            instance    text        NOT NULL
        );
        CREATE INDEX IF NOT EXISTS kms_log_tenant_time ON byokpg.kms_log (tenant, time);
        COMMENT ON TABLE byokpg.kms_log IS
            'byokpg: every KMS operation made for a tenant (see docs/KMS.md); no key material';
    ",
    },
    Migration {
        version: 3,
        description: "audit_attestations: KMS-signed heads of hash-chained audit tables",
        sql: crate::audit::sql::MIGRATION_3,
    },
    Migration {
        version: 5,
        description: "key rotation: 'previous' DEK versions and byokpg.reencrypt_jobs",
        sql: "
        ALTER TABLE byokpg.tenant_keys DROP CONSTRAINT IF EXISTS tenant_keys_status_check;
        ALTER TABLE byokpg.tenant_keys ADD CONSTRAINT tenant_keys_status_check
            CHECK (status IN ('active', 'previous', 'retired'));
        CREATE TABLE IF NOT EXISTS byokpg.reencrypt_jobs (
            tenant      text        PRIMARY KEY,
            state       text        NOT NULL CHECK (state IN ('running', 'stopped', 'done', 'failed')),
            target      int         NOT NULL,
            checkpoint  jsonb       NOT NULL DEFAULT '{}',
            done        bigint      NOT NULL DEFAULT 0,
            total       bigint      NOT NULL DEFAULT 0,
            instance    text        NOT NULL,
            message     text,
            started_at  timestamptz NOT NULL DEFAULT now(),
            updated_at  timestamptz NOT NULL DEFAULT now()
        );
        COMMENT ON TABLE byokpg.reencrypt_jobs IS
            'byokpg: progress and checkpoint of `byokpg keys reencrypt`, one row per tenant (see docs/KEYS.md)';
    ",
    },
];

/// The newest schema version this build knows.
pub fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Why setup failed. Messages name the region and never contain a password.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("byokpg: setup of region {region}: cannot connect: {message}")]
    Connect { region: String, message: String },
    #[error("byokpg: setup of region {region}: {message}")]
    Migrate { region: String, message: String },
}

impl SetupError {
    fn migrate(region: &str, e: &tokio_postgres::Error) -> Self {
        SetupError::Migrate {
            region: region.to_owned(),
            message: describe_pg_error(e),
        }
    }
}

/// What one region's migration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Schema version found (0 = none).
    pub from: i32,
    /// Schema version now.
    pub to: i32,
}

impl Applied {
    fn report(self, region: &str) -> String {
        let latest = latest_version();
        if self.from > latest {
            format!(
                "region {region}: schema byokpg is at version {}, newer than this byokpg knows ({latest}); left as is",
                self.from
            )
        } else if self.from == self.to {
            format!(
                "region {region}: schema byokpg is up to date (version {})",
                self.to
            )
        } else {
            format!(
                "region {region}: schema byokpg upgraded from version {} to {}",
                self.from, self.to
            )
        }
    }
}

/// Runs the migrations in every region database; one report line per region.
/// Stops at the first region that fails (the error names it).
pub async fn setup(cfg: &Config) -> Result<Vec<String>, SetupError> {
    let mut report = Vec::with_capacity(cfg.regions.len());
    for (region, r) in &cfg.regions {
        let client = crate::pgmeta::connect(&r.dsn, cfg.server.connect_timeout)
            .await
            .map_err(|e| SetupError::Connect {
                region: region.clone(),
                message: e.to_string(),
            })?;
        let applied = migrate(&client, region).await?;
        report.push(applied.report(region));
        // Hash-chained tables get their trigger once the function exists.
        let chains = crate::audit::attach_chains(&client, cfg)
            .await
            .map_err(|message| SetupError::Migrate {
                region: region.clone(),
                message,
            })?;
        report.extend(chains.into_iter().map(|l| format!("region {region}: {l}")));
    }
    Ok(report)
}

/// Creates or upgrades the schema through `client`. The client must not be
/// used by anything else meanwhile: the migration is one transaction.
pub async fn setup_region(client: &Client) -> Result<(), SetupError> {
    migrate(client, "(this database)").await.map(|_| ())
}

/// As [`setup_region`], saying what was done; `region` is used in errors.
pub async fn migrate(client: &Client, region: &str) -> Result<Applied, SetupError> {
    client
        .batch_execute("BEGIN")
        .await
        .map_err(|e| SetupError::migrate(region, &e))?;
    match migrate_in_transaction(client).await {
        Ok(applied) => {
            client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| SetupError::migrate(region, &e))?;
            Ok(applied)
        }
        Err(e) => {
            // The transaction is aborted already; ROLLBACK only ends it so
            // the connection stays usable. Its own failure adds nothing.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(SetupError::migrate(region, &e))
        }
    }
}

async fn migrate_in_transaction(client: &Client) -> Result<Applied, tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&SETUP_LOCK_KEY])
        .await?;
    // `CREATE SCHEMA IF NOT EXISTS` checks the CREATE privilege on the
    // database even when the schema exists, so skip it when it does: a
    // role that may only use the schema (set up once by the database owner)
    // can then start `serve`.
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('byokpg.schema_migrations') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        client
            .batch_execute(
                "CREATE SCHEMA IF NOT EXISTS byokpg;
                 CREATE TABLE IF NOT EXISTS byokpg.schema_migrations (
                     version     int PRIMARY KEY,
                     applied_at  timestamptz NOT NULL DEFAULT now()
                 );",
            )
            .await?;
    }
    // Every migration not recorded yet, in list order — not only those
    // above the highest applied version: migrations written on parallel
    // branches can land in a database in either order.
    let applied: Vec<i32> = client
        .query("SELECT version FROM byokpg.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let from = applied.iter().copied().max().unwrap_or(0);
    let mut to = from;
    for m in MIGRATIONS.iter().filter(|m| !applied.contains(&m.version)) {
        client.batch_execute(m.sql).await?;
        client
            .execute(
                "INSERT INTO byokpg.schema_migrations (version) VALUES ($1)",
                &[&m.version],
            )
            .await?;
        tracing::info!(target: "byokpg::setup", version = m.version, "{}", m.description);
        to = to.max(m.version);
    }
    Ok(Applied { from, to })
}

/// A PostgreSQL error as one line, with a hint for the usual cause.
fn describe_pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE => {
            format!(
                "{} (the region DSN's role needs CREATE on the database, or run `byokpg setup` once as its owner)",
                db.message()
            )
        }
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}
