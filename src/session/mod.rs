//! One client session: startup, authentication, routing to the tenant's
//! region, then the relay loop until either side ends.

mod auth;
pub mod copy;
pub mod crypto;
mod lookup;
mod pump;
pub mod registry;
pub mod relay;
mod startup;
pub mod write;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::backend::{Backend, BackendError};
use crate::metrics;
use crate::protocol::PgError;
use crate::protocol::messages;
use crate::server::Shared;
use crate::server::runtime::Runtime;
use crate::tls::Stream;

pub use auth::Identity;

/// Startup and authentication must finish within this time, so half-open
/// and slowloris connections cannot hold resources.
const STARTUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Send this error to the client, then close.
    #[error("{}", .0.message)]
    Client(PgError),
    #[error("connection closed")]
    Closed,
    #[error(transparent)]
    Relay(#[from] relay::RelayError),
}

/// Run a session to its end. Never panics on bad input; a bug that panics
/// ends only this task (see `server::spawn_session`).
pub async fn run(tcp: TcpStream, shared: Arc<Shared>) {
    let peer = tcp.peer_addr().ok();
    let rt = shared.runtime.load_full();
    let opened = tokio::time::timeout(STARTUP_TIMEOUT, startup::open(tcp, &rt, &shared)).await;
    let (mut stream, msg) = match opened {
        Ok(Ok(startup::Opening::Session(s, m))) => (s, m),
        Ok(Ok(startup::Opening::Cancelled)) => return,
        Ok(Err(SessionError::Client(e))) => {
            metrics::connection_refused("protocol");
            tracing::debug!(?peer, code = e.code, "startup refused");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(?peer, error = %e, "connection ended during startup");
            return;
        }
        Err(_) => {
            metrics::connection_refused("protocol");
            return;
        }
    };
    let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
        metrics::connection_refused("limit");
        let limit = rt.config.server.max_client_connections;
        send_fatal(&mut stream, &PgError::too_many_connections(limit)).await;
        return;
    };
    metrics::connection_opened();
    let result = establish(&mut stream, &msg, &rt, &shared).await;
    match result {
        Ok((identity, backend, pid, protection)) => {
            let end = pump::pump(stream, backend, &shared, &identity, protection).await;
            shared.cancels.remove(pid);
            log_end(&identity, end);
        }
        Err(e) => {
            refuse(&mut stream, e, peer).await;
        }
    }
    metrics::connection_closed();
    drop(permit);
}

/// Authenticate, pick the tenant, connect its region, finish the startup.
async fn establish(
    stream: &mut Stream,
    msg: &crate::protocol::startup::StartupMessage,
    rt: &Runtime,
    shared: &Shared,
) -> Result<(Identity, Backend, i32, pump::Protection), SessionError> {
    let identity = tokio::time::timeout(STARTUP_TIMEOUT, auth::authenticate(stream, rt, msg))
        .await
        .map_err(|_| SessionError::Client(PgError::startup_timeout()))??;
    let target = rt
        .tenant_target(&identity.tenant)
        .ok_or_else(|| SessionError::Client(PgError::internal("tenant has no region")))?;
    if msg
        .get("replication")
        .is_some_and(|r| r != "false" && r != "0" && r != "off")
    {
        return Err(SessionError::Client(PgError::auth_rejected(
            "replication connections are not supported through byokpg",
        )));
    }
    let protection = protection(rt, shared, &identity.tenant, &target.region).await?;
    let database = msg.get("database").unwrap_or(identity.user.as_str());
    let params = backend_params(msg, &identity);
    let backend = match target
        .connect(database, &params, rt.config.server.connect_timeout)
        .await
    {
        Ok(b) => {
            metrics::backend_connect(&target.region, true);
            b
        }
        Err(e) => {
            metrics::backend_connect(&target.region, false);
            return Err(backend_refusal(stream, &target.region, e).await);
        }
    };
    let (pid, secret) = shared
        .cancels
        .register(target.clone(), backend.pid, backend.secret);
    let mut out = BytesMut::with_capacity(512);
    messages::auth_msg(&mut out, 0, &[]);
    for ps in &backend.parameter_status {
        out.extend_from_slice(ps);
    }
    messages::backend_key_data(&mut out, pid, secret);
    messages::ready_for_query(&mut out, backend.status);
    stream.write_all(&out).await?;
    Ok((identity, backend, pid, protection))
}

/// The region's catalog and the tenant's keys, when the policy protects
/// anything. Without the catalog protected columns cannot be found in
/// results, so the session is refused (fail closed).
pub(crate) async fn protection(
    rt: &Runtime,
    shared: &Shared,
    tenant: &str,
    region: &str,
) -> Result<pump::Protection, SessionError> {
    let catalog = shared.catalogs.get(rt, region).await.map_err(|e| {
        tracing::warn!(region, error = %e, "cannot read the region catalog");
        SessionError::Client(PgError::region_unreachable(
            region,
            "cannot read its catalog",
        ))
    })?;
    let policy = !rt.config.tables.is_empty();
    let crypto =
        policy.then(|| crypto::SessionCrypto::new(tenant, shared.keys.clone(), catalog.clone()));
    let write = policy.then(|| write::WriteCtx::new(&rt.config, &catalog, next_generation()));
    Ok(pump::Protection::new(
        rt.config.clone(),
        tenant,
        region,
        catalog,
        crypto,
        write,
    ))
}

/// A fresh number for each planner view of the policy (plan cache key).
pub(crate) fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The client's startup parameters that go on to the backend.
fn backend_params(
    msg: &crate::protocol::startup::StartupMessage,
    identity: &Identity,
) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = msg
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "user" | "database" | "options" | "byokpg.tenant" | "replication"
            )
        })
        .filter(|(k, _)| !k.starts_with("_pq_."))
        .cloned()
        .collect();
    if !identity.options.is_empty() {
        params.push(("options".to_owned(), identity.options.clone()));
    }
    params
}

/// PostgreSQL's own startup errors (unknown database, ...) pass through
/// unchanged; failures to reach the region become 08006.
async fn backend_refusal(stream: &mut Stream, region: &str, e: BackendError) -> SessionError {
    match e {
        BackendError::Server { raw, code, .. } => {
            tracing::info!(region, code, "region database refused the session");
            let _ = stream.write_all(&raw).await;
            SessionError::Closed
        }
        other => {
            tracing::warn!(region, error = %other, "region database unreachable");
            SessionError::Client(PgError::region_unreachable(region, &other.to_string()))
        }
    }
}

async fn refuse(stream: &mut Stream, e: SessionError, peer: Option<std::net::SocketAddr>) {
    match e {
        SessionError::Client(err) => {
            let reason = match err.code {
                "28000" if err.message.contains("tenant") => "tenant",
                "28000" if err.message.contains("TLS") => "tls",
                "28P01" | "28000" => "auth",
                "08006" => "region",
                _ => "protocol",
            };
            metrics::connection_refused(reason);
            tracing::info!(?peer, code = err.code, message = %err.message, "connection refused");
            send_fatal(stream, &err).await;
        }
        other => tracing::debug!(?peer, error = %other, "connection ended during authentication"),
    }
}

/// Best effort: the client may already be gone.
pub(crate) async fn send_fatal(stream: &mut Stream, err: &PgError) {
    let bytes = err.to_bytes();
    let write = async {
        stream.write_all(&bytes).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), write).await;
}

fn log_end(identity: &Identity, end: Result<pump::End, SessionError>) {
    match end {
        Ok(how) => {
            tracing::debug!(user = %identity.user, tenant = %identity.tenant, ?how, "session ended");
        }
        Err(e) => {
            tracing::info!(user = %identity.user, tenant = %identity.tenant, error = %e, "session ended with error");
        }
    }
}
