//! `byokpg keys status [--tenant T] [--format text|json]` (SPEC §2): per
//! tenant, its KMS and KEK, the active DEK version, every version with its
//! status and how many rows still use it, and the last KMS error — all read
//! from the tenant's region database (`byokpg.tenant_keys`, the policy
//! tables, `byokpg.kms_log`), so it works without a running proxy.
//!
//! Rows per version: for each policy table with a `tenant_column`, the rows
//! of the tenant that hold at least one value under that DEK version (read
//! from the clear envelope header, bytes 2..6 — docs/FORMAT.md §2; text
//! columns hold `byok1:` + base64, whose first 8 base64 characters are
//! exactly those 6 header bytes). Tables without a tenant column cannot be
//! attributed to a tenant and are not counted.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::json;
use tokio_postgres::Client;

use super::{KeyManager, KmsLogRow, StoredKey};
use crate::config::{Config, TableConfig};
use crate::crypto::dek_version_sql;
use crate::guards::sql::{quote_ident, quote_qualified};

/// One DEK version of a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionStatus {
    pub version: u32,
    pub status: String,
    /// Rows under it (see the module doc); `None` when they could not be counted.
    pub rows: Option<i64>,
}

/// What `keys status` prints for one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantStatus {
    pub tenant: String,
    pub kms: String,
    pub key: String,
    pub region: String,
    pub active_version: Option<u32>,
    pub versions: Vec<VersionStatus>,
    /// The last unwrap that succeeded (time, instance).
    pub last_unwrap: Option<KmsLogRow>,
    /// The last KMS operation that failed.
    pub last_error: Option<KmsLogRow>,
    /// The `keys reencrypt` job, if the tenant ever had one.
    pub job: Option<super::reencrypt::JobStatus>,
    /// Why part of the status could not be read.
    pub problems: Vec<String>,
}

impl TenantStatus {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "tenant": self.tenant,
            "kms": self.kms,
            "key": self.key,
            "active_version": self.active_version,
            "versions": self.versions.iter().map(|v| json!({
                "version": v.version, "status": v.status, "rows": v.rows,
            })).collect::<Vec<_>>(),
            "job": self.job.as_ref().map(|j| json!({
                "state": j.state, "done": j.done, "total": j.total,
                "target_version": j.target, "instance": j.instance, "message": j.message,
            })),
            "last_error": self.last_error.as_ref().map(|e| json!({
                "time": humantime::format_rfc3339_micros(e.time).to_string(),
                "operation": e.operation, "error_code": e.error_code,
            })),
        })
    }

    pub fn render(&self, ttl: std::time::Duration) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "tenant {}: region {}, kms {}, key {}",
            self.tenant, self.region, self.kms, self.key
        );
        match self.active_version {
            Some(v) => drop(writeln!(s, "  active DEK version: {v}")),
            None => drop(writeln!(
                s,
                "  active DEK version: none (created on first use)"
            )),
        }
        for v in &self.versions {
            let rows = v.rows.map_or_else(|| "?".to_owned(), |r| r.to_string());
            let _ = writeln!(s, "  version {}: {}, {rows} rows", v.version, v.status);
        }
        match &self.last_unwrap {
            Some(u) => drop(writeln!(
                s,
                "  cache: last unwrap {} by {} (cached there until at most {} unless evicted)",
                humantime::format_rfc3339_seconds(u.time),
                u.instance,
                humantime::format_rfc3339_seconds(u.time + ttl)
            )),
            None => drop(writeln!(s, "  cache: no unwrap logged")),
        }
        match &self.last_error {
            Some(e) => drop(writeln!(
                s,
                "  last KMS error: {} {} {} at {}",
                e.operation,
                e.outcome,
                e.error_code.as_deref().unwrap_or("-"),
                humantime::format_rfc3339_seconds(e.time)
            )),
            None => drop(writeln!(s, "  last KMS error: none")),
        }
        match &self.job {
            Some(j) => drop(writeln!(
                s,
                "  reencrypt job: {} to version {}, {}/{} rows examined (instance {}){}",
                j.state,
                j.target,
                j.done,
                j.total,
                j.instance,
                j.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            )),
            None => drop(writeln!(s, "  reencrypt job: none")),
        }
        for p in &self.problems {
            let _ = writeln!(s, "  problem: {p}");
        }
        s
    }
}

/// The status of `tenant`.
pub async fn tenant_status(cfg: &Config, mgr: &KeyManager, tenant: &str) -> TenantStatus {
    let t = &cfg.tenants[tenant];
    let mut st = TenantStatus {
        tenant: tenant.to_owned(),
        kms: t.kms.clone(),
        key: t.key.clone(),
        region: t.region.clone(),
        active_version: None,
        versions: Vec::new(),
        last_unwrap: None,
        last_error: None,
        job: None,
        problems: Vec::new(),
    };
    let store = match mgr.store(tenant) {
        Ok(s) => s,
        Err(e) => {
            st.problems.push(e.to_string());
            return st;
        }
    };
    let keys: Vec<StoredKey> = match store.keys(tenant).await {
        Ok(k) => k,
        Err(e) => {
            st.problems.push(e.to_string());
            return st;
        }
    };
    let counts = match count_rows(cfg, tenant).await {
        Ok(c) => Some(c),
        Err(e) => {
            st.problems
                .push(format!("rows per version not counted: {e}"));
            None
        }
    };
    for k in &keys {
        if k.status == super::KeyStatus::Active {
            st.active_version = Some(k.version);
        }
        st.versions.push(VersionStatus {
            version: k.version,
            status: k.status.as_str().to_owned(),
            rows: counts
                .as_ref()
                .map(|c| c.get(&k.version).copied().unwrap_or(0)),
        });
    }
    match super::reencrypt::job_status(&store, tenant).await {
        Ok(j) => st.job = j,
        Err(e) => st.problems.push(e.to_string()),
    }
    match store.kms_log(tenant, None).await {
        Ok(log) => {
            st.last_unwrap = log
                .iter()
                .rev()
                .find(|r| r.operation == "unwrap" && r.outcome == "success")
                .cloned();
            st.last_error = log.iter().rev().find(|r| r.outcome != "success").cloned();
        }
        Err(e) => st.problems.push(e.to_string()),
    }
    st
}

/// Rows per DEK version over the tenant's policy tables.
async fn count_rows(cfg: &Config, tenant: &str) -> Result<BTreeMap<u32, i64>, String> {
    let region = &cfg.tenants[tenant].region;
    let dsn = &cfg.regions[region].dsn;
    let client = crate::pgmeta::connect(dsn, cfg.server.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for table in cfg
        .tables
        .iter()
        .filter(|t| t.tenant_column.is_some() && !t.columns.is_empty())
    {
        let Some(sql) = count_sql(&client, table).await? else {
            continue;
        };
        let rows = client
            .query(&sql, &[&tenant])
            .await
            .map_err(|e| e.to_string())?;
        for r in rows {
            let v: i64 = r.try_get(0).map_err(|e| e.to_string())?;
            let n: i64 = r.try_get(1).map_err(|e| e.to_string())?;
            if let Ok(v) = u32::try_from(v) {
                *out.entry(v).or_insert(0) += n;
            }
        }
    }
    Ok(out)
}

/// `SELECT version, count(rows)` for one table, or `None` when the table
/// does not exist (yet).
async fn count_sql(client: &Client, table: &TableConfig) -> Result<Option<String>, String> {
    let qualified = quote_qualified(&table.schema(), &table.table());
    let types = client
        .query(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&qualified],
        )
        .await
        .map_err(|e| e.to_string())?;
    if types.is_empty() {
        return Ok(None);
    }
    let type_of: BTreeMap<String, String> = types
        .iter()
        .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
        .collect();
    let tenant_col = quote_ident(table.tenant_column.as_deref().unwrap_or_default());
    let parts: Vec<String> = table
        .columns
        .keys()
        .filter_map(|c| {
            let version = dek_version_sql(&quote_ident(c), type_of.get(c)? == "bytea");
            Some(format!(
                "SELECT ctid, v FROM (SELECT ctid, {version} AS v FROM {qualified} \
                 WHERE {tenant_col} = $1) s WHERE v IS NOT NULL"
            ))
        })
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    Ok(Some(format!(
        "SELECT v, count(*) FROM (SELECT DISTINCT ctid, v FROM ({}) u) d GROUP BY v",
        parts.join(" UNION ALL ")
    )))
}
