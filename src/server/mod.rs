//! The listener: accepts clients, caps connections, reloads the
//! configuration on SIGHUP, and drains on SIGTERM/SIGINT.

pub mod cancel;
pub mod catalogs;
pub mod runtime;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt as _;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::admin::{self, AdminHooks};
use crate::config::{self, Config};
use crate::metrics;
use runtime::Runtime;

/// Lifecycle of the process, watched by every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// No new connections; sessions end when idle.
    Draining,
    /// Drain timeout passed: sessions end now.
    Closing,
}

/// State shared by all sessions.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    /// Tenants' data keys: KMS providers, key store, DEK cache.
    pub keys: Arc<crate::keys::KeyManager>,
    /// Region catalogs: where protected columns appear in results.
    pub catalogs: catalogs::Catalogs,
    pub cancels: cancel::CancelMap,
    pub connections: Arc<Semaphore>,
    pub phase: watch::Receiver<Phase>,
    config_path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("byokpg: cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}

impl Shared {
    /// Re-read the config file; a bad one is refused and the old stays.
    pub fn reload(&self) -> Result<(), String> {
        let result = config::load(&self.config_path)
            .map_err(|errs| {
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .and_then(|cfg| Runtime::build(cfg).map_err(|e| e.to_string()));
        metrics::config_reload(result.is_ok());
        match result {
            Ok(rt) => {
                let old = self.runtime.load();
                if old.config.server.listen != rt.config.server.listen
                    || old.config.server.admin_listen != rt.config.server.admin_listen
                {
                    tracing::warn!(
                        "listen addresses changed: they take effect at the next restart"
                    );
                }
                let keys = self.keys.clone();
                let cfg = rt.config.clone();
                tokio::spawn(async move { keys.reload(&cfg).await });
                self.runtime.store(Arc::new(rt));
                self.catalogs.clear();
                tracing::info!("configuration reloaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the previous configuration stays");
                Err(e)
            }
        }
    }
}

/// Run the proxy until SIGTERM/SIGINT and the drain that follows.
pub async fn serve(config: Config) -> Result<(), ServerError> {
    metrics::install();
    let path = config.path.clone();
    let max = config.server.max_client_connections;
    let drain_timeout = config.server.drain_timeout;
    let listen = config.server.listen.clone();
    let admin_listen = config.server.admin_listen.clone().filter(|a| !a.is_empty());
    run_setup(&config).await;
    crate::audit::spawn_scheduled_attest(&config);
    let keys = Arc::new(crate::keys::KeyManager::new(&config).await);
    let _sweeper = keys.spawn_sweeper(Duration::from_secs(5));
    let rt = Runtime::build(config)?;
    let listener = bind(&listen).await?;
    let (phase_tx, phase_rx) = watch::channel(Phase::Running);
    let shared = Arc::new(Shared {
        runtime: ArcSwap::from_pointee(rt),
        keys,
        catalogs: catalogs::Catalogs::default(),
        cancels: cancel::CancelMap::default(),
        connections: Arc::new(Semaphore::new(max)),
        phase: phase_rx,
        config_path: path,
    });
    if let Some(addr) = admin_listen {
        let admin = bind(&addr).await?;
        tracing::info!(addr = %addr, "admin listening");
        let hooks: Arc<dyn AdminHooks> = Arc::new(Hooks(shared.clone()));
        let mut rx = shared.phase.clone();
        let stop = async move {
            let _ = rx.wait_for(|p| *p == Phase::Closing).await;
        };
        tokio::spawn(admin::serve(admin, hooks, stop));
    }
    tokio::spawn(upkeep_loop());
    tokio::spawn(reload_on_sighup(shared.clone()));
    tracing::info!(addr = %listen, "listening");
    accept_loop(&listener, &shared).await;
    drop(listener);
    let _ = phase_tx.send(Phase::Draining);
    drain(&shared, max, drain_timeout, &phase_tx).await;
    Ok(())
}

/// Create or upgrade byokpg's schema in every region. A region that is down
/// now is not fatal: its tenants get 08006 until it is back, and the schema
/// is created by `byokpg setup` or the next start.
async fn run_setup(config: &Config) {
    match crate::setup::setup(config).await {
        Ok(report) => {
            for line in report {
                tracing::info!("{line}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "byokpg setup did not complete in every region"),
    }
}

async fn bind(addr: &str) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Listen {
            addr: addr.to_owned(),
            source,
        })
}

async fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    let _ = tcp.set_nodelay(true);
                    spawn_session(tcp, shared.clone());
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A panic in a session (a bug) ends that session only, and is counted.
fn spawn_session(tcp: tokio::net::TcpStream, shared: Arc<Shared>) {
    tokio::spawn(async move {
        let run = std::panic::AssertUnwindSafe(crate::session::run(tcp, shared));
        if run.catch_unwind().await.is_err() {
            metrics::session_panic();
            tracing::error!("session task panicked; only that session was closed");
        }
    });
}

async fn drain(shared: &Shared, max: usize, timeout: Duration, phase: &watch::Sender<Phase>) {
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    tracing::info!(?timeout, "draining: waiting for sessions to finish");
    if tokio::time::timeout(timeout, shared.connections.acquire_many(all))
        .await
        .is_ok()
    {
        tracing::info!("all sessions finished");
    } else {
        tracing::warn!("drain timeout reached: closing the remaining sessions");
    }
    let _ = phase.send(Phase::Closing);
    let _ =
        tokio::time::timeout(Duration::from_secs(3), shared.connections.acquire_many(all)).await;
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shutdown only by kill -9");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

async fn reload_on_sighup(shared: Arc<Shared>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::error!("cannot install the SIGHUP handler");
        return;
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading configuration");
        let _ = shared.reload();
    }
}

async fn upkeep_loop() {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        metrics::upkeep();
    }
}

/// The admin API's view of the server.
struct Hooks(Arc<Shared>);

impl AdminHooks for Hooks {
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), Vec<String>>> + Send + '_>> {
        Box::pin(async move {
            let rt = self.0.runtime.load_full();
            let timeout = rt.config.server.connect_timeout;
            let mut problems = Vec::new();
            for (name, target) in &rt.regions {
                let db = target
                    .dsn
                    .dbname
                    .clone()
                    .unwrap_or_else(|| "postgres".to_owned());
                if let Err(e) = target.connect(&db, &[], timeout).await {
                    problems.push(format!("{name}: {e}"));
                }
            }
            if problems.is_empty() {
                Ok(())
            } else {
                Err(problems)
            }
        })
    }

    fn reload(&self) -> Result<(), String> {
        self.0.reload()
    }

    fn evict_tenant(&self, tenant: &str) -> Result<usize, String> {
        if self.0.runtime.load().config.tenants.contains_key(tenant) {
            Ok(self.0.keys.evict_tenant(tenant))
        } else {
            Err(format!("byokpg: unknown tenant: {tenant}"))
        }
    }

    fn admin_token(&self) -> Option<String> {
        let rt = self.0.runtime.load();
        rt.config
            .server
            .admin_token
            .as_ref()
            .map(|t| t.expose().to_owned())
    }
}
