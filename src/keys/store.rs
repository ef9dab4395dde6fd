//! `byokpg.tenant_keys` in one region database (created by `byokpg setup`).
//!
//! One metadata connection per region, opened on first use and reopened
//! when it dies. tokio-postgres pipelines concurrent queries on one
//! connection, and these queries only run on cache misses, so one is enough.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::KeyError;
use crate::config::Dsn;

/// Lifecycle of one DEK version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Used for new writes; at most one per tenant (a unique partial index).
    Active,
    /// Replaced by a rotation; only read. Data may still use it, so lookups
    /// match it too.
    Previous,
    /// No row uses it any more (checked by `keys reencrypt`); still
    /// readable, kept wrapped for break-glass, left out of lookups.
    Retired,
}

impl KeyStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Previous => "previous",
            KeyStatus::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(KeyStatus::Active),
            "previous" => Some(KeyStatus::Previous),
            "retired" => Some(KeyStatus::Retired),
            _ => None,
        }
    }
}

/// One row of `byokpg.tenant_keys`. `wrapped` is KMS ciphertext, not
/// secret, but it is kept out of `Debug` anyway (logs need not carry it).
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub version: u32,
    /// The `[kms.NAME]` that wrapped it.
    pub kms: String,
    /// The KEK reference it is wrapped under.
    pub key_ref: String,
    pub wrapped: Vec<u8>,
    pub status: KeyStatus,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("version", &self.version)
            .field("kms", &self.kms)
            .field("key_ref", &self.key_ref)
            .field("wrapped_len", &self.wrapped.len())
            .field("status", &self.status)
            .finish()
    }
}

/// Why the key table could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No connection to the region database (SQLSTATE 08006 to clients).
    #[error("the database of region {region} is unreachable ({message})")]
    Unreachable { region: String, message: String },
    /// The database refused the query, or returned a row byokpg cannot read.
    #[error("byokpg.tenant_keys in region {region} cannot be used ({message})")]
    Table { region: String, message: String },
}

impl StoreError {
    /// The client-facing error for `tenant`.
    pub fn for_tenant(self, tenant: &str) -> KeyError {
        let tenant = tenant.to_owned();
        match self {
            StoreError::Unreachable { region, message } => KeyError::RegionUnreachable {
                tenant,
                region,
                message,
            },
            StoreError::Table { region, message } => KeyError::Store {
                tenant,
                region,
                message,
            },
        }
    }
}

const COLUMNS: &str = "version, kms, key_ref, wrapped, status";

/// The key table of one region.
pub struct RegionStore {
    region: String,
    dsn: Dsn,
    connect_timeout: Duration,
    client: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for RegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionStore")
            .field("region", &self.region)
            .field("dsn", &self.dsn.redacted())
            .finish_non_exhaustive()
    }
}

impl RegionStore {
    /// No connection is made until the first query.
    pub fn new(region: impl Into<String>, dsn: Dsn, connect_timeout: Duration) -> Self {
        Self {
            region: region.into(),
            dsn,
            connect_timeout,
            client: Mutex::new(None),
        }
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn dsn(&self) -> &Dsn {
        &self.dsn
    }

    /// The tenant's active DEK version, if it has one.
    pub async fn active_key(&self, tenant: &str) -> Result<Option<StoredKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM byokpg.tenant_keys WHERE tenant = $1 AND status = 'active'"
        );
        let row = self.query_opt(&sql, &[&tenant]).await?;
        row.map(|r| self.decode(&r)).transpose()
    }

    /// One DEK version of the tenant, active or retired.
    pub async fn key(&self, tenant: &str, version: u32) -> Result<Option<StoredKey>, StoreError> {
        let Ok(v) = i32::try_from(version) else {
            return Ok(None);
        };
        let sql =
            format!("SELECT {COLUMNS} FROM byokpg.tenant_keys WHERE tenant = $1 AND version = $2");
        let row = self.query_opt(&sql, &[&tenant, &v]).await?;
        row.map(|r| self.decode(&r)).transpose()
    }

    /// Every DEK version of the tenant, oldest first.
    pub async fn keys(&self, tenant: &str) -> Result<Vec<StoredKey>, StoreError> {
        let sql =
            format!("SELECT {COLUMNS} FROM byokpg.tenant_keys WHERE tenant = $1 ORDER BY version");
        let rows = self.query(&sql, &[&tenant]).await?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    /// The versions lookups must match: active and previous, newest first.
    pub async fn live_keys(&self, tenant: &str) -> Result<Vec<StoredKey>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM byokpg.tenant_keys WHERE tenant = $1 \
             AND status IN ('active', 'previous') ORDER BY version DESC"
        );
        let rows = self.query(&sql, &[&tenant]).await?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    /// Stores a new active DEK version (the next number) and turns the
    /// active one into `previous`, in one statement: the partial unique
    /// index keeps at most one active row whatever runs concurrently, and
    /// of two rotations at once the second fails on the primary key or the
    /// index instead of creating two active versions.
    pub async fn rotate(
        &self,
        tenant: &str,
        kms: &str,
        key_ref: &str,
        wrapped: &[u8],
    ) -> Result<StoredKey, StoreError> {
        // Reading `old` in the INSERT forces the UPDATE to run first, so the
        // unique index sees the old row as no longer active.
        let sql = format!(
            "WITH old AS (UPDATE byokpg.tenant_keys SET status = 'previous', \
                 retired_at = now(), updated_at = now() \
                 WHERE tenant = $1 AND status = 'active' RETURNING version) \
             INSERT INTO byokpg.tenant_keys (tenant, version, kms, key_ref, wrapped, status) \
             SELECT $1, coalesce((SELECT max(version) FROM byokpg.tenant_keys WHERE tenant = $1), 0) + 1, \
                 $2, $3, $4, 'active' FROM (SELECT count(*) FROM old) o RETURNING {COLUMNS}"
        );
        let row = self
            .query_opt(&sql, &[&tenant, &kms, &key_ref, &wrapped])
            .await?
            .ok_or_else(|| self.table_error("the new key version was not stored".to_owned()))?;
        self.decode(&row)
    }

    /// Replaces the wrapping of one version (`--rewrap-only`), only if it
    /// is still `old_wrapped`. Returns whether the row was updated.
    pub async fn rewrap(
        &self,
        tenant: &str,
        version: u32,
        old_wrapped: &[u8],
        kms: &str,
        key_ref: &str,
        wrapped: &[u8],
    ) -> Result<bool, StoreError> {
        let v = i32::try_from(version).map_err(|_| self.table_error("bad version".to_owned()))?;
        let rows = self
            .query(
                "UPDATE byokpg.tenant_keys SET kms = $3, key_ref = $4, wrapped = $5, \
                 updated_at = now() WHERE tenant = $1 AND version = $2 AND wrapped = $6 \
                 RETURNING version",
                &[&tenant, &v, &kms, &key_ref, &wrapped, &old_wrapped],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Stores the tenant's first DEK (version 1, active), or — when another
    /// connection or another byokpg got there first — returns the winner's
    /// row. The `bool` is true when this call's row was stored.
    ///
    /// Race-free by construction: `ON CONFLICT DO NOTHING` covers both the
    /// primary key and the one-active-per-tenant index, so of any number of
    /// concurrent callers exactly one inserts, and the others read its row
    /// (visible to them once the winner's statement committed, which it has
    /// by the time their insert returns nothing).
    pub async fn insert_first_key(
        &self,
        tenant: &str,
        kms: &str,
        key_ref: &str,
        wrapped: &[u8],
    ) -> Result<(StoredKey, bool), StoreError> {
        let sql = format!(
            "INSERT INTO byokpg.tenant_keys (tenant, version, kms, key_ref, wrapped, status) \
             VALUES ($1, 1, $2, $3, $4, 'active') ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        );
        if let Some(row) = self
            .query_opt(&sql, &[&tenant, &kms, &key_ref, &wrapped])
            .await?
        {
            return Ok((self.decode(&row)?, true));
        }
        match self.active_key(tenant).await? {
            Some(winner) => Ok((winner, false)),
            None => Err(self.table_error(format!(
                "tenant {tenant} has DEK rows but none is active; mark one active or run `byokpg keys rotate --tenant {tenant}`"
            ))),
        }
    }

    fn decode(&self, row: &Row) -> Result<StoredKey, StoreError> {
        let bad = |what: &str| self.table_error(format!("a row has {what}"));
        let version: i32 = row.try_get(0).map_err(|_| bad("an unreadable version"))?;
        let status: String = row.try_get(4).map_err(|_| bad("an unreadable status"))?;
        Ok(StoredKey {
            version: u32::try_from(version).map_err(|_| bad("a negative version"))?,
            kms: row.try_get(1).map_err(|_| bad("an unreadable kms"))?,
            key_ref: row.try_get(2).map_err(|_| bad("an unreadable key_ref"))?,
            wrapped: row
                .try_get(3)
                .map_err(|_| bad("an unreadable wrapped key"))?,
            status: KeyStatus::parse(&status).ok_or_else(|| bad("an unknown status"))?,
        })
    }

    fn table_error(&self, message: String) -> StoreError {
        StoreError::Table {
            region: self.region.clone(),
            message,
        }
    }

    /// Runs a statement whose rows do not matter (other modules of `keys`).
    pub(super) async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<(), StoreError> {
        self.query(sql, params).await.map(drop)
    }

    /// Runs a query for other modules of `keys`.
    pub(super) async fn select(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.query(sql, params).await
    }

    /// A row that does not decode.
    pub(super) fn row_error(&self, e: &tokio_postgres::Error) -> StoreError {
        self.table_error(format!("a row cannot be read ({e})"))
    }

    async fn query_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Option<Row>, StoreError> {
        let mut rows = self.query(sql, params).await?;
        Ok(if rows.is_empty() {
            None
        } else {
            Some(rows.swap_remove(0))
        })
    }

    /// Runs `sql`, reconnecting once if the connection turns out to be dead
    /// (the database restarted, a pooler dropped it). Every statement here
    /// is safe to repeat.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let mut retried = false;
        loop {
            let client = self.client().await?;
            match client.query(sql, params).await {
                Ok(rows) => return Ok(rows),
                Err(e) if client.is_closed() && !retried => {
                    tracing::debug!(target: "byokpg::keys", region = %self.region, error = %e, "metadata connection lost, reconnecting");
                    self.forget(&client).await;
                    retried = true;
                }
                Err(e) => return Err(self.pg_error(&e, client.is_closed())),
            }
        }
    }

    fn pg_error(&self, e: &tokio_postgres::Error, closed: bool) -> StoreError {
        match e.as_db_error() {
            Some(db) if !closed => {
                self.table_error(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
            }
            _ => StoreError::Unreachable {
                region: self.region.clone(),
                message: e.to_string(),
            },
        }
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let client = crate::pgmeta::connect(&self.dsn, self.connect_timeout)
            .await
            .map_err(|e| StoreError::Unreachable {
                region: self.region.clone(),
                message: e.to_string(),
            })?;
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    async fn forget(&self, dead: &Arc<Client>) {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_some_and(|c| Arc::ptr_eq(c, dead)) {
            *slot = None;
        }
    }
}
