//! The customer-visible KMS operation log (SPEC §7): one row in
//! `byokpg.kms_log` of the tenant's region database per KMS operation made
//! for the tenant — generate, wrap, unwrap, rewrap, describe, sign — with
//! time, operation, outcome, error code, key reference, KMS name and the
//! byokpg instance. Never key material, wrapped keys or plaintext.
//!
//! Successful unwraps may be sampled (`unwrap_log_sample`); failures and
//! every other operation are always written. Writes on the statement path
//! are handed to a spawned task so a slow log insert never delays the
//! statement that needed the key; `keys verify` and the CLI await them.
use std::sync::OnceLock;
use std::time::SystemTime;

use ring::rand::{SecureRandom as _, SystemRandom};

use super::store::{RegionStore, StoreError};
use crate::kms::{KmsError, KmsOp};

/// One KMS operation as the log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsLogEntry {
    pub tenant: String,
    pub operation: KmsOp,
    /// `success`, `denied` or `error` ([`KmsError::outcome`]).
    pub outcome: &'static str,
    /// [`KmsError::code`] when it failed.
    pub error_code: Option<&'static str>,
    pub key_ref: String,
    /// The `[kms.NAME]` that was called.
    pub kms: String,
}

impl KmsLogEntry {
    /// The entry for an operation that ended with `result`.
    pub fn of<T>(
        tenant: &str,
        kms: &str,
        operation: KmsOp,
        key_ref: &str,
        result: &Result<T, KmsError>,
    ) -> Self {
        let (outcome, error_code) = match result {
            Ok(_) => ("success", None),
            Err(e) => (e.outcome(), Some(e.code())),
        };
        Self {
            tenant: tenant.to_owned(),
            operation,
            outcome,
            error_code,
            key_ref: key_ref.to_owned(),
            kms: kms.to_owned(),
        }
    }

    /// Whether to write it: everything but a sampled-out successful unwrap.
    pub fn wanted(&self, unwrap_sample: f64) -> bool {
        if self.operation != KmsOp::Unwrap || self.outcome != "success" || unwrap_sample >= 1.0 {
            return true;
        }
        if unwrap_sample <= 0.0 {
            return false;
        }
        let mut b = [0u8; 4];
        if SystemRandom::new().fill(&mut b).is_err() {
            return true; // no randomness: keep the entry rather than lose it
        }
        f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) < unwrap_sample
    }
}

/// This process as the log's `instance` column: `BYOKPG_INSTANCE` if set,
/// else `<hostname>:<pid>`.
pub fn instance() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        if let Ok(v) = std::env::var("BYOKPG_INSTANCE")
            && !v.trim().is_empty()
        {
            return v.trim().to_owned();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "byokpg".to_owned());
        format!("{host}:{}", std::process::id())
    })
}

/// One row read back from `byokpg.kms_log` (`byokpg kms-log`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KmsLogRow {
    pub time: SystemTime,
    pub tenant: String,
    pub operation: String,
    pub outcome: String,
    pub error_code: Option<String>,
    pub key_ref: String,
    pub instance: String,
}

impl RegionStore {
    /// Appends one entry to the region's KMS log.
    pub async fn append_kms_log(&self, e: &KmsLogEntry) -> Result<(), StoreError> {
        self.execute(
            "INSERT INTO byokpg.kms_log (tenant, operation, outcome, error_code, key_ref, kms, instance) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &e.tenant,
                &e.operation.as_str(),
                &e.outcome,
                &e.error_code,
                &e.key_ref,
                &e.kms,
                &instance(),
            ],
        )
        .await
    }

    /// The tenant's log entries at or after `since`, oldest first.
    pub async fn kms_log(
        &self,
        tenant: &str,
        since: Option<SystemTime>,
    ) -> Result<Vec<KmsLogRow>, StoreError> {
        let since = since.unwrap_or(SystemTime::UNIX_EPOCH);
        let rows = self
            .select(
                "SELECT time, tenant, operation, outcome, error_code, key_ref, instance \
                 FROM byokpg.kms_log WHERE tenant = $1 AND time >= $2 ORDER BY time, id",
                &[&tenant, &since],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(KmsLogRow {
                    time: r.try_get(0).map_err(|e| self.row_error(&e))?,
                    tenant: r.try_get(1).map_err(|e| self.row_error(&e))?,
                    operation: r.try_get(2).map_err(|e| self.row_error(&e))?,
                    outcome: r.try_get(3).map_err(|e| self.row_error(&e))?,
                    error_code: r.try_get(4).map_err(|e| self.row_error(&e))?,
                    key_ref: r.try_get(5).map_err(|e| self.row_error(&e))?,
                    instance: r.try_get(6).map_err(|e| self.row_error(&e))?,
                })
            })
            .collect()
    }
}

/// Writes `entry` in the background (statement path): a failure is logged,
/// never returned — the statement already has its key or its error.
pub fn spawn_append(store: std::sync::Arc<RegionStore>, entry: KmsLogEntry) {
    tokio::spawn(async move {
        if let Err(e) = store.append_kms_log(&entry).await {
            tracing::warn!(target: "byokpg::keys", tenant = %entry.tenant, operation = entry.operation.as_str(), error = %e, "byokpg: could not write the KMS log");
        }
    });
}
