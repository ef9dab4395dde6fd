//! The faults, one function each. Every function injects its fault into
//! the running workload, waits for recovery, runs the data checks and
//! returns its row of the table (asserting as it goes).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::task::block_in_place;

use super::fixture::{Fx, write_key};
use super::relay::Mode;
use super::report::{Row, split_errors};
use super::workload::{Workload, lock};

const LIMIT: Duration = Duration::from_mins(1);

/// Waits until `cond` holds (polling), panicking with `what` after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// True when a worker matching `pick` logged error `class` after `before`.
fn saw(work: &Workload, before: &[usize], pick: impl Fn(usize, &str) -> bool, class: &str) -> bool {
    work.workers.iter().enumerate().any(|(i, w)| {
        pick(i, &w.tenant)
            && lock(w)
                .errors
                .iter()
                .skip(before[i])
                .any(|(_, c)| c == class)
    })
}

pub fn only(m: &BTreeMap<String, usize>, allowed: &[&str]) -> bool {
    m.keys().all(|k| allowed.contains(&k.as_str()))
}

/// Reads the tenant's encrypted rows through a fresh connection until it
/// works: the moment the tenant is served again.
async fn wait_readable(fx: &Fx, tenant: &str, since: Instant) -> Duration {
    let sql = format!(
        "select secret from {} where tenant_id = $1 limit 5",
        fx.tables.enc
    );
    loop {
        if let Ok(c) = fx
            .proxy
            .try_connect(super::fixture::USER, Some(tenant))
            .await
            && c.query(&sql, &[&tenant]).await.is_ok()
        {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < LIMIT,
            "{tenant} not readable again within {LIMIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn terminate_backend(fx: &Fx, work: &Workload) -> Row {
    let victim = 0;
    let w = &work.workers[victim];
    let before = work.error_counts();
    let pid = lock(w).backend_pid.expect("worker 0 knows its backend pid");
    let killed: bool = fx
        .direct(&w.tenant)
        .await
        .query_opt(
            // Only a backend of this database: the server is shared.
            "select pg_terminate_backend(pid) from pg_stat_activity \
             where pid = $1 and datname = current_database()",
            &[&pid],
        )
        .await
        .expect("pg_terminate_backend")
        .is_some_and(|r| r.get(0));
    assert!(killed, "backend {pid} of worker 0 was not there");
    wait_for("worker 0 sees its backend die", LIMIT, || {
        lock(w).errors.len() > before[victim]
    })
    .await;
    let t1 = lock(w).errors.last().map(|e| e.0).expect("an error");
    let recovery = work.wait_ok_after(|i, _| i == victim, t1, LIMIT).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hit, other) = split_errors(work, &before, |i, _| i == victim);
    assert!(!hit.is_empty(), "the terminated client saw no error");
    assert!(other.is_empty(), "other clients saw errors: {other:?}");
    Row {
        fault: "pg_terminate_backend(one client)".into(),
        affected: hit,
        unaffected: other,
        recovery: Some(recovery),
        data: fx.check_data(work, true).await,
    }
}

pub async fn region_restart(fx: &Fx, work: &Workload, hold: Duration) -> Row {
    let reg = fx.reg.clone();
    let before = work.error_counts();
    block_in_place(|| fx.cluster.pg_stop());
    let r = reg.clone();
    wait_for("the region's clients see the outage", LIMIT, || {
        saw(work, &before, |_, t| t == r, "08006")
    })
    .await;
    let probe = fx.proxy.try_connect(super::fixture::USER, Some(&reg)).await;
    let code = probe.err().and_then(|e| crate::common::sqlstate(&e));
    assert_eq!(
        code.as_deref(),
        Some("08006"),
        "a new connection to the stopped region"
    );
    tokio::time::sleep(hold).await;
    block_in_place(|| fx.cluster.pg_start());
    let back = Instant::now();
    let r = reg.clone();
    let recovery = work.wait_ok_after(|_, w| w.tenant == r, back, LIMIT).await;
    wait_readable(fx, &reg, back).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hit, other) = split_errors(work, &before, |_, w| w.tenant == reg);
    assert!(hit.contains_key("08006"), "{hit:?}");
    assert!(other.is_empty(), "other regions saw errors: {other:?}");
    Row {
        fault: "region PostgreSQL stop + restart".into(),
        affected: hit,
        unaffected: other,
        recovery: Some(recovery),
        data: fx.check_data(work, true).await,
    }
}

pub async fn kms_outage(fx: &Fx, work: &Workload, hold: Duration) -> Row {
    let kms = fx.kms.clone();
    let before = work.error_counts();
    fx.relay.set(Mode::Blackhole);
    let k = kms.clone();
    wait_for("58030 while the KMS is unreachable", LIMIT, || {
        saw(work, &before, |_, t| t == k, "58030")
    })
    .await;
    tokio::time::sleep(hold).await;
    fx.relay.set(Mode::Slow);
    let mid = work.error_counts();
    wait_for("58030 while the KMS is slow", LIMIT, || {
        saw(work, &mid, |_, t| t == k, "58030")
    })
    .await;
    tokio::time::sleep(hold).await;
    fx.relay.set(Mode::Pass);
    let back = Instant::now();
    let recovery = wait_readable(fx, &kms, back).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hit, other) = split_errors(work, &before, |_, w| w.tenant == kms);
    assert!(only(&hit, &["58030"]) && !hit.is_empty(), "{hit:?}");
    assert!(other.is_empty(), "other tenants saw errors: {other:?}");
    Row {
        fault: "KMS unreachable, then slow".into(),
        affected: hit,
        unaffected: other,
        recovery: Some(recovery),
        data: fx.check_data(work, true).await,
    }
}

pub async fn key_revoked(fx: &Fx, work: &Workload, hold: Duration) -> Row {
    let rev = fx.rev.clone();
    let before = work.error_counts();
    write_key(&fx.rev_key, "77");
    let r = rev.clone();
    // TTL + the KMS timeout + slack for a loaded machine.
    let effect = wait_for("58000 after revocation", super::fixture::TTL * 8, || {
        saw(work, &before, |_, t| t == r, "58000")
    })
    .await;
    tokio::time::sleep(hold).await;
    write_key(&fx.rev_key, "5c");
    let back = Instant::now();
    let recovery = wait_readable(fx, &rev, back).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hit, other) = split_errors(work, &before, |_, w| w.tenant == rev);
    assert!(only(&hit, &["58000"]) && !hit.is_empty(), "{hit:?}");
    assert!(other.is_empty(), "other tenants saw errors: {other:?}");
    Row {
        fault: format!("key revoked (58000 after {:.1}s)", effect.as_secs_f64()),
        affected: hit,
        unaffected: other,
        recovery: Some(recovery),
        data: fx.check_data(work, true).await,
    }
}
