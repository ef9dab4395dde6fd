//! The steady mixed workload: N workers, each one client connection as one
//! tenant, cycling through a prepared insert into the encrypted table, a
//! deterministic lookup, a simple-protocol insert into a plain table, an
//! audit insert and a simple select. Every outcome is logged per worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

use crate::common::sqlstate;

/// Names of the three tables (the same in every region).
#[derive(Clone, Debug)]
pub struct Tables {
    pub enc: String,
    pub plain: String,
    pub audit: String,
}

/// A row the workload wrote and saw committed: (id, secret, email).
pub type Written = (i32, String, String);

#[derive(Debug, Default)]
pub struct WorkerLog {
    /// (when, class): a SQLSTATE, `closed`, `io` or `mismatch`.
    pub errors: Vec<(Instant, String)>,
    pub ok_ops: u64,
    pub last_ok: Option<Instant>,
    pub connects: u32,
    pub backend_pid: Option<i32>,
    pub written: Vec<Written>,
}

pub struct Worker {
    pub tenant: String,
    pub log: Mutex<WorkerLog>,
}

pub struct Workload {
    pub workers: Vec<Arc<Worker>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What a worker needs to reach the proxy.
#[derive(Clone)]
pub struct Target {
    /// tenant → libpq URL of byokpg as that tenant.
    pub dsns: Arc<std::collections::BTreeMap<String, String>>,
    pub tables: Tables,
    pub marker: String,
}

impl Workload {
    /// `per_tenant` workers for each tenant.
    pub fn start(target: &Target, tenants: &[String], per_tenant: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..per_tenant {
            for t in tenants {
                let w = Arc::new(Worker {
                    tenant: t.clone(),
                    log: Mutex::new(WorkerLog::default()),
                });
                let name = format!("w{i}");
                tasks.push(tokio::spawn(run_worker(
                    w.clone(),
                    target.clone(),
                    name,
                    stop.clone(),
                )));
                workers.push(w);
            }
        }
        Self {
            workers,
            stop,
            tasks,
        }
    }

    /// Asks every worker to stop after its current statement and waits.
    pub async fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_mins(1), t).await;
        }
    }

    /// Error counts per worker, to diff before/after a fault.
    pub fn error_counts(&self) -> Vec<usize> {
        self.workers.iter().map(|w| lock(w).errors.len()).collect()
    }

    pub fn connect_counts(&self) -> Vec<u32> {
        self.workers.iter().map(|w| lock(w).connects).collect()
    }

    /// Every row committed so far, per tenant.
    pub fn written(&self, tenant: &str) -> Vec<Written> {
        self.workers
            .iter()
            .filter(|w| w.tenant == tenant)
            .flat_map(|w| lock(w).written.clone())
            .collect()
    }

    /// Waits until every worker of `tenant` (or `only`, if given) had a
    /// successful statement after `since`; returns when that happened.
    pub async fn wait_ok_after(
        &self,
        pick: impl Fn(usize, &Worker) -> bool,
        since: Instant,
        limit: Duration,
    ) -> Duration {
        let deadline = Instant::now() + limit;
        loop {
            let all = self
                .workers
                .iter()
                .enumerate()
                .filter(|(i, w)| pick(*i, w))
                .all(|(_, w)| lock(w).last_ok.is_some_and(|t| t > since));
            if all {
                return since.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "workers did not recover within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn lock(w: &Worker) -> std::sync::MutexGuard<'_, WorkerLog> {
    w.log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn classify(e: &tokio_postgres::Error) -> String {
    sqlstate(e).unwrap_or_else(|| {
        if e.is_closed() {
            "closed".to_owned()
        } else {
            "io".to_owned()
        }
    })
}

async fn connect(dsn: &str) -> Result<(Client, i32), tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let pid: i32 = client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0);
    Ok((client, pid))
}

async fn run_worker(w: Arc<Worker>, target: Target, name: String, stop: Arc<AtomicBool>) {
    let dsn = target.dsns[&w.tenant].clone();
    let mut client: Option<Client> = None;
    let mut op_no: u64 = 0;
    while !stop.load(Ordering::SeqCst) {
        let Some(c) = client.as_ref().filter(|c| !c.is_closed()) else {
            if client.take().is_some() {
                // The server side ended the session between two statements
                // (an unsolicited FATAL, e.g. pg_terminate_backend).
                lock(&w).errors.push((Instant::now(), "closed".to_owned()));
            }
            match connect(&dsn).await {
                Ok((c, pid)) => {
                    let mut l = lock(&w);
                    l.connects += 1;
                    l.backend_pid = Some(pid);
                    client = Some(c);
                }
                Err(e) => {
                    lock(&w).errors.push((Instant::now(), classify(&e)));
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            continue;
        };
        let res = one_op(c, &w, &target, &name, op_no).await;
        op_no += 1;
        {
            let mut l = lock(&w);
            match res {
                Ok(()) => {
                    l.ok_ops += 1;
                    l.last_ok = Some(Instant::now());
                }
                Err(class) => l.errors.push((Instant::now(), class)),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One statement of the cycle; `Err(class)` on failure.
async fn one_op(
    client: &Client,
    worker: &Worker,
    target: &Target,
    name: &str,
    step: u64,
) -> Result<(), String> {
    let Tables { enc, plain, audit } = &target.tables;
    let m = &target.marker;
    let tag = format!("{name}-{step}");
    let r = match step % 5 {
        0 => {
            let secret = format!("{m}-secret-{}-{tag}", worker.tenant);
            let email = format!("{m}-{tag}@{}", worker.tenant);
            let sql = format!("insert into {enc} (secret, email) values ($1, $2) returning id");
            match client.query_one(&sql, &[&secret, &email]).await {
                Ok(row) => {
                    lock(worker).written.push((row.get(0), secret, email));
                    return Ok(());
                }
                Err(e) => Err(e),
            }
        }
        1 => return lookup(client, worker, enc).await,
        2 => client
            .simple_query(&format!(
                "insert into {plain} (tenant_id, note) values ('{}', 'plain {tag}')",
                worker.tenant
            ))
            .await
            .map(drop),
        3 => client
            .simple_query(&format!(
                "insert into {audit} (kind, payload) values ('op', '{m}-audit-{tag}')"
            ))
            .await
            .map(drop),
        _ => client
            .simple_query(&format!(
                "select count(*) from {plain} where tenant_id = '{}'",
                worker.tenant
            ))
            .await
            .map(drop),
    };
    r.map_err(|e| classify(&e))
}

/// A prepared deterministic lookup of a row this worker wrote; the secret
/// must come back exactly.
async fn lookup(c: &Client, w: &Worker, enc: &str) -> Result<(), String> {
    let Some((id, secret, email)) = lock(w).written.last().cloned() else {
        return Ok(());
    };
    let sql = format!("select id, secret from {enc} where email = $1");
    let rows = c.query(&sql, &[&email]).await.map_err(|e| classify(&e))?;
    let got: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    if got == [(id, secret)] {
        Ok(())
    } else {
        Err("mismatch".to_owned())
    }
}
