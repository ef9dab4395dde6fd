//! The job row (`byokpg.reencrypt_jobs`) and the per-tenant lock.
use serde_json::json;
use tokio_postgres::{Client, GenericClient};

use super::{Progress, ReencryptError};
use crate::keys::RegionStore;
use crate::keys::manager::ACTIVE_RECHECK;
use crate::keys::store::StoreError;

/// Where a job is: rows examined so far, of how many, and the position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobState {
    pub done: u64,
    pub total: u64,
    /// 1 = the main pass, 2+ = verification passes.
    pub pass: u32,
    /// Index into the walked tables.
    pub table: usize,
    /// Last key done in that table (text form of each key column).
    pub key: Option<Vec<String>>,
}

impl JobState {
    fn to_json(&self) -> String {
        json!({"pass": self.pass, "table": self.table, "key": self.key}).to_string()
    }

    fn from_json(s: &str, done: i64, total: i64) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(s).ok()?;
        Some(Self {
            done: u64::try_from(done).unwrap_or(0),
            total: u64::try_from(total).unwrap_or(0),
            pass: u32::try_from(v.get("pass")?.as_u64()?).ok()?,
            table: usize::try_from(v.get("table")?.as_u64()?).ok()?,
            key: serde_json::from_value(v.get("key")?.clone()).ok()?,
        })
    }
}

/// The job as `keys status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobStatus {
    /// `running` (its lock is held), `stopped` (interrupted or killed:
    /// `keys reencrypt` resumes it), `failed`, `done`.
    pub state: String,
    pub target: u32,
    pub done: i64,
    pub total: i64,
    pub instance: String,
    pub message: Option<String>,
}

/// The advisory lock key of a tenant's job (FNV-1a 64 of a fixed prefix and
/// the tenant name: stable across builds and hosts).
pub fn lock_key(tenant: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"byokpg-reencrypt\0".iter().chain(tenant.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

/// Takes the tenant's job lock, or says who holds it.
pub async fn lock(
    client: &Client,
    tenant: &str,
    wait: bool,
    progress: &mut Progress,
) -> Result<(), ReencryptError> {
    let db = |e: tokio_postgres::Error| ReencryptError::Db {
        tenant: tenant.to_owned(),
        message: e.to_string(),
    };
    let key = lock_key(tenant);
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(db)?
        .get(0);
    if got {
        return Ok(());
    }
    let instance: String = client
        .query_opt(
            "SELECT instance FROM byokpg.reencrypt_jobs WHERE tenant = $1",
            &[&tenant],
        )
        .await
        .map_err(db)?
        .map_or_else(|| "unknown".to_owned(), |r| r.get(0));
    if !wait {
        return Err(ReencryptError::Busy {
            tenant: tenant.to_owned(),
            instance,
        });
    }
    progress.line(&format!(
        "byokpg: a keys reencrypt of tenant {tenant} is running (instance {instance}); waiting for it to end"
    ));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&key])
        .await
        .map_err(db)?;
    Ok(())
}

/// Waits until the active version is at least [`ACTIVE_RECHECK`] (plus a
/// margin) old, so every byokpg already writes under it: a row written
/// under the old version after the walk passed it would otherwise keep
/// that version in use.
pub async fn wait_for_pickup(
    client: &Client,
    tenant: &str,
    progress: &mut Progress,
) -> Result<(), tokio_postgres::Error> {
    let age: Option<f64> = client
        .query_opt(
            "SELECT extract(epoch FROM now() - created_at)::float8 FROM byokpg.tenant_keys \
             WHERE tenant = $1 AND status = 'active'",
            &[&tenant],
        )
        .await?
        .map(|r| r.get(0));
    let needed = ACTIVE_RECHECK.as_secs_f64() + 2.0;
    if let Some(age) = age.filter(|a| *a < needed) {
        progress.line(&format!(
            "byokpg: the active version is {age:.1}s old; waiting {:.1}s until every byokpg writes under it",
            needed - age
        ));
        tokio::time::sleep(std::time::Duration::from_secs_f64(needed - age)).await;
    }
    Ok(())
}

/// The job to resume: same target, not done.
pub async fn resume(
    client: &Client,
    tenant: &str,
    target: u32,
) -> Result<Option<JobState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT state, target, checkpoint::text, done, total FROM byokpg.reencrypt_jobs \
             WHERE tenant = $1",
            &[&tenant],
        )
        .await?;
    let Some(row) = row else { return Ok(None) };
    let state: String = row.get(0);
    let t: i32 = row.get(1);
    if state == "done" || u32::try_from(t).ok() != Some(target) {
        return Ok(None);
    }
    let st = JobState::from_json(row.get(2), row.get(3), row.get(4));
    if st.is_some() {
        set_state(client, tenant, "running", None).await?;
    }
    Ok(st)
}

/// A fresh job towards `target`.
pub async fn create(
    client: &Client,
    tenant: &str,
    target: u32,
    total: u64,
) -> Result<JobState, tokio_postgres::Error> {
    let st = JobState {
        total,
        pass: 1,
        ..JobState::default()
    };
    let t = i32::try_from(target).unwrap_or(i32::MAX);
    let total_i = i64::try_from(total).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO byokpg.reencrypt_jobs (tenant, state, target, checkpoint, done, total, instance) \
             VALUES ($1, 'running', $2, $3::text::jsonb, 0, $4, $5) \
             ON CONFLICT (tenant) DO UPDATE SET state = 'running', target = $2, \
             checkpoint = $3::text::jsonb, done = 0, total = $4, instance = $5, message = NULL, \
             started_at = now(), updated_at = now()",
            &[&tenant, &t, &st.to_json(), &total_i, &crate::keys::log::instance()],
        )
        .await?;
    Ok(st)
}

/// Saves the position (inside the batch's transaction).
pub async fn checkpoint(
    tx: &impl GenericClient,
    tenant: &str,
    st: &JobState,
) -> Result<(), tokio_postgres::Error> {
    let done = i64::try_from(st.done).unwrap_or(i64::MAX);
    let total = i64::try_from(st.total).unwrap_or(i64::MAX);
    tx.execute(
        "UPDATE byokpg.reencrypt_jobs SET checkpoint = $2::text::jsonb, done = $3, \
         total = greatest(total, $4), instance = $5, updated_at = now() WHERE tenant = $1",
        &[
            &tenant,
            &st.to_json(),
            &done,
            &total,
            &crate::keys::log::instance(),
        ],
    )
    .await
    .map(drop)
}

pub async fn set_state(
    client: &Client,
    tenant: &str,
    state: &str,
    message: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE byokpg.reencrypt_jobs SET state = $2, message = $3, updated_at = now() \
             WHERE tenant = $1",
            &[&tenant, &state, &message],
        )
        .await
        .map(drop)
}

/// The tenant's job, if it ever had one. `running` only while some
/// process holds the job's lock; a row left `running` by a killed process
/// shows as `stopped`.
pub async fn job_status(
    store: &RegionStore,
    tenant: &str,
) -> Result<Option<JobStatus>, StoreError> {
    let key = lock_key(tenant);
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let classid = i64::try_from(bits >> 32).unwrap_or(0);
    let objid = i64::try_from(bits & 0xffff_ffff).unwrap_or(0);
    let rows = store
        .select(
            "SELECT j.state, j.target, j.done, j.total, j.instance, j.message, \
             EXISTS (SELECT 1 FROM pg_locks l WHERE l.locktype = 'advisory' AND l.granted \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND l.classid::bigint = $2 AND l.objid::bigint = $3 AND l.objsubid = 1) \
             FROM byokpg.reencrypt_jobs j WHERE j.tenant = $1",
            &[&tenant, &classid, &objid],
        )
        .await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let get = |e: tokio_postgres::Error| store.row_error(&e);
    let mut state: String = r.try_get(0).map_err(get)?;
    let locked: bool = r.try_get(6).map_err(get)?;
    if state == "running" && !locked {
        "stopped".clone_into(&mut state);
    }
    let target: i32 = r.try_get(1).map_err(get)?;
    Ok(Some(JobStatus {
        state,
        target: u32::try_from(target).unwrap_or(0),
        done: r.try_get(2).map_err(get)?,
        total: r.try_get(3).map_err(get)?,
        instance: r.try_get(4).map_err(get)?,
        message: r.try_get(5).map_err(get)?,
    }))
}
