//! `byokpg keys reencrypt --tenant T [--rate] [--batch] [--wait]` (SPEC §2;
//! docs/KEYS.md "Rotation and re-encryption").
//!
//! Talks to the tenant's region database directly, holding the tenant's
//! keys through [`KeyManager`] — an operator tool, not a proxy client.
//!
//! - **One job per tenant** across every host: a session-level advisory
//!   lock on the job's own connection (released by PostgreSQL when the
//!   process dies, however it dies). A second run exits with a clear
//!   message, or waits with `--wait`.
//! - **Walk**: per protected table, keyset pagination on the primary key
//!   (`ctid` for a table without one), only rows of the tenant
//!   (`tenant_column`) that hold a value under another version than the
//!   target (read from the clear envelope header, docs/FORMAT.md §2).
//! - **Optimistic update**: `UPDATE … SET c = new WHERE key = k AND c IS NOT
//!   DISTINCT FROM old`; a row changed meanwhile is read again and retried,
//!   never overwritten.
//! - **Checkpoint**: each batch commits its updates and the position in
//!   `byokpg.reencrypt_jobs` in one transaction, so a crash, a kill or
//!   Ctrl-C resumes exactly after the last committed batch.
//! - **Verification and retirement**: a second pass from the start catches
//!   rows written under an old version meanwhile (a byokpg that had not
//!   seen the rotation yet, a row moved by an update in a `ctid` walk);
//!   versions no row uses any more are then marked `retired`.
//! - **Append-only tables** (and hash-chained ones) are not re-encrypted:
//!   the hash chain covers the stored ciphertext, and an update is what
//!   such a table must refuse. Versions they still use stay live.
mod job;
mod progress;
mod walk;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use job::{JobStatus, job_status};
pub use progress::Progress;

use super::{KeyError, KeyManager};
use crate::config::Config;

/// Options of one run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Rows per second at most (0 = unlimited).
    pub rate: u32,
    /// Rows per batch (one transaction each).
    pub batch: u32,
    /// Wait for another run of the same tenant instead of exiting.
    pub wait: bool,
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReencryptError {
    #[error(
        "byokpg: a keys reencrypt of tenant {tenant} is already running (instance {instance}); wait for it, or run again with --wait"
    )]
    Busy { tenant: String, instance: String },
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("byokpg: keys reencrypt of tenant {tenant}: {message}")]
    Db { tenant: String, message: String },
    #[error(
        "byokpg: keys reencrypt of tenant {tenant} stopped at the last checkpoint; run it again to resume"
    )]
    Interrupted { tenant: String },
}

/// What a finished run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub target: u32,
    pub examined: u64,
    pub updated: u64,
    pub retried: u64,
    /// Values that could not be re-encrypted (with why), kept as they are.
    pub failed: u64,
    pub retired: Vec<u32>,
    /// Versions kept live, and why.
    pub kept: Vec<(u32, String)>,
    pub skipped_tables: Vec<(String, &'static str)>,
}

/// Runs (or resumes) the tenant's job to completion.
pub async fn run(
    cfg: &Config,
    mgr: &KeyManager,
    tenant: &str,
    opts: Options,
    progress: &mut Progress,
) -> Result<Summary, ReencryptError> {
    let db = |e: &dyn std::fmt::Display| ReencryptError::Db {
        tenant: tenant.to_owned(),
        message: e.to_string(),
    };
    let region = &cfg.tenants[tenant].region;
    let client = crate::pgmeta::connect(&cfg.regions[region].dsn, cfg.server.connect_timeout)
        .await
        .map_err(|e| db(&e))?;
    job::lock(&client, tenant, opts.wait, progress).await?;
    let (versions, _) = mgr.active(tenant).await?;
    let target = versions.active;
    job::wait_for_pickup(&client, tenant, progress)
        .await
        .map_err(|e| db(&e))?;
    let tables = walk::tables(&client, cfg).await.map_err(|e| db(&e))?;
    let resumed = job::resume(&client, tenant, target)
        .await
        .map_err(|e| db(&e))?;
    let mut state = if let Some(s) = resumed {
        s
    } else {
        let total = walk::count_pending(&client, tenant, target, &tables)
            .await
            .map_err(|e| db(&e))?;
        job::create(&client, tenant, target, total)
            .await
            .map_err(|e| db(&e))?
    };
    progress.start(tenant, state.done, state.total);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = spawn_interrupt_watch(Arc::clone(&stop));
    let mut walker = walk::Walker::new(mgr, tenant, target, &client, opts);
    let outcome = walker.passes(&tables, &mut state, progress, &stop).await;
    watcher.abort();
    progress.finish();
    if let Err(e) = outcome {
        let st = if matches!(e, ReencryptError::Interrupted { .. }) {
            "stopped"
        } else {
            "failed"
        };
        let _ = job::set_state(&client, tenant, st, Some(&e.to_string())).await;
        return Err(e);
    }
    let mut summary = walker.summary();
    summary.skipped_tables = tables
        .iter()
        .filter_map(|t| t.skip.map(|why| (t.display.clone(), why)))
        .collect();
    retire(mgr, tenant, &client, &tables, &walker.unmoved, &mut summary).await?;
    job::set_state(&client, tenant, "done", None)
        .await
        .map_err(|e| db(&e))?;
    Ok(summary)
}

/// Marks `retired` every `previous` version that no row uses any more.
async fn retire(
    mgr: &KeyManager,
    tenant: &str,
    client: &tokio_postgres::Client,
    tables: &[walk::Table],
    unmoved: &BTreeSet<u32>,
    summary: &mut Summary,
) -> Result<(), ReencryptError> {
    let db = |e: &dyn std::fmt::Display| ReencryptError::Db {
        tenant: tenant.to_owned(),
        message: e.to_string(),
    };
    let store = mgr.store(tenant)?;
    let keys = store.keys(tenant).await.map_err(|e| e.for_tenant(tenant))?;
    let skipped = walk::versions_in_skipped(client, tenant, tables)
        .await
        .map_err(|e| db(&e))?;
    let still_used = walk::versions_in_walked(client, tenant, tables)
        .await
        .map_err(|e| db(&e))?;
    for k in keys
        .iter()
        .filter(|k| k.status == super::KeyStatus::Previous)
    {
        let why = if unmoved.contains(&k.version) {
            Some("values under it could not be re-encrypted (see the log)".to_owned())
        } else if let Some(t) = still_used.get(&k.version) {
            Some(format!(
                "{t} still has values under it (written during the last pass); run `byokpg keys reencrypt` again"
            ))
        } else {
            match &skipped {
                Some(set) => set
                    .get(&k.version)
                    .map(|t| format!("used by append-only table {t}, which is not re-encrypted")),
                None => Some("an append-only table without tenant_column may use it".to_owned()),
            }
        };
        match why {
            Some(w) => summary.kept.push((k.version, w)),
            None => summary.retired.push(k.version),
        }
    }
    if !summary.retired.is_empty() {
        let versions: Vec<i32> = summary
            .retired
            .iter()
            .filter_map(|v| i32::try_from(*v).ok())
            .collect();
        store
            .execute(
                "UPDATE byokpg.tenant_keys SET status = 'retired', updated_at = now() \
                 WHERE tenant = $1 AND version = ANY($2) AND status = 'previous'",
                &[&tenant, &versions],
            )
            .await
            .map_err(|e| e.for_tenant(tenant))?;
    }
    Ok(())
}

/// Ctrl-C / SIGTERM: finish the batch under way, keep its checkpoint, stop.
fn spawn_interrupt_watch(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let term = async {
            #[cfg(unix)]
            if let Ok(mut s) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                s.recv().await;
                return;
            }
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = term => {}
        }
        stop.store(true, Ordering::SeqCst);
    })
}

/// Sleeps so that `rows` over `elapsed` stays at or under `rate` per second.
pub(crate) fn throttle_delay(rate: u32, rows: u64, elapsed: Duration) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    #[allow(clippy::cast_precision_loss)]
    let due = Duration::from_secs_f64(rows as f64 / f64::from(rate));
    due.saturating_sub(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_keeps_the_rate() {
        assert_eq!(throttle_delay(0, 1000, Duration::ZERO), Duration::ZERO);
        assert_eq!(
            throttle_delay(100, 50, Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(
            throttle_delay(100, 50, Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
