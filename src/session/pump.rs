//! The relay loop: one task, `select!` over both sockets, the write queues
//! and shutdown. Reads stop while the opposite write queue is above a high
//! water mark, so a client that stops reading makes byokpg stop reading the
//! backend (backpressure) instead of buffering a whole result.

use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use std::sync::Arc;

use super::crypto::SessionCrypto;
use super::relay::{Ctx, Relay, RelayError};
use super::write::WriteCtx;
use super::{Identity, SessionError};
use crate::backend::Backend;
use crate::catalog::Catalog;
use crate::metrics::SessionMetrics;
use crate::protocol::PgError;
use crate::rewrite::RowHook;
use crate::server::{Phase, Shared};
use crate::tls::Stream;

/// Stop reading one side while this much is queued for the other.
const HIGH_WATER: usize = 1024 * 1024;
const READ_CHUNK: usize = 16 * 1024;

#[derive(Debug)]
pub enum End {
    ClientClosed,
    ClientTerminated,
    BackendClosed,
    IdleTimeout,
    Shutdown,
}

struct Io {
    client_rd: ReadHalf<Stream>,
    client_wr: WriteHalf<Stream>,
    backend_rd: ReadHalf<Stream>,
    backend_wr: WriteHalf<Stream>,
    from_client: BytesMut,
    from_backend: BytesMut,
    to_backend: BytesMut,
    to_client: BytesMut,
}

/// What the session knows about protected columns of its region.
pub struct Protection {
    /// The configuration this protection was built from: when a reload
    /// swaps it, the session rebuilds before its next message (fail closed:
    /// a table newly added to the policy is protected at once).
    pub config: Arc<crate::config::Config>,
    pub tenant: String,
    pub region: String,
    pub catalog: Arc<Catalog>,
    /// The planner's view of the policy; `None` without a policy.
    pub write: Option<WriteCtx>,
    /// `None` when the policy protects nothing.
    pub crypto: Option<SessionCrypto>,
    /// The catalog was just refreshed: do not ask for another refresh for
    /// the frame being retried (an OID still unknown is not ours).
    refreshed: bool,
}

impl Protection {
    pub fn new(
        config: Arc<crate::config::Config>,
        tenant: &str,
        region: &str,
        catalog: Arc<Catalog>,
        crypto: Option<SessionCrypto>,
        write: Option<WriteCtx>,
    ) -> Self {
        Self {
            config,
            tenant: tenant.to_owned(),
            region: region.to_owned(),
            catalog,
            write,
            crypto,
            refreshed: false,
        }
    }
}

pub async fn pump(
    client: Stream,
    backend: Backend,
    shared: &Shared,
    identity: &Identity,
    mut protection: Protection,
) -> Result<End, SessionError> {
    let (client_rd, client_wr) = tokio::io::split(client);
    let (backend_rd, backend_wr) = tokio::io::split(backend.stream);
    let mut io = Io {
        client_rd,
        client_wr,
        backend_rd,
        backend_wr,
        from_client: BytesMut::with_capacity(READ_CHUNK),
        from_backend: backend.leftover,
        to_backend: BytesMut::with_capacity(READ_CHUNK),
        to_client: BytesMut::with_capacity(READ_CHUNK),
    };
    let mut relay = Relay::new(backend.status);
    let result = run_loop(&mut io, &mut relay, shared, &mut protection).await;
    finish(&mut io, &result).await;
    tracing::trace!(tenant = %identity.tenant, "relay loop ended");
    result
}

async fn run_loop(
    io: &mut Io,
    relay: &mut Relay,
    shared: &Shared,
    prot: &mut Protection,
) -> Result<End, SessionError> {
    let metrics = SessionMetrics::get();
    let mut phase = shared.phase.clone();
    let idle_timeout = shared.runtime.load().config.server.client_idle_timeout;
    let idle = tokio::time::sleep_until(far_future(idle_timeout));
    tokio::pin!(idle);
    loop {
        if *phase.borrow() != Phase::Running && relay.is_idle() && io.to_client.is_empty() {
            return Ok(End::Shutdown);
        }
        if relay.terminated && io.to_backend.is_empty() {
            return Ok(End::ClientTerminated);
        }
        reserve(&mut io.from_client);
        reserve(&mut io.from_backend);
        tokio::select! {
            biased;
            r = io.backend_wr.write(&io.to_backend), if !io.to_backend.is_empty() => {
                io.to_backend.advance(r?);
                if io.to_backend.is_empty() {
                    io.backend_wr.flush().await?;
                }
            }
            r = io.client_wr.write(&io.to_client), if !io.to_client.is_empty() => {
                io.to_client.advance(r?);
                if io.to_client.is_empty() {
                    io.client_wr.flush().await?;
                }
            }
            r = io.backend_rd.read_buf(&mut io.from_backend), if io.to_client.len() < HIGH_WATER => {
                let n = r?;
                if n == 0 {
                    return Ok(End::BackendClosed);
                }
                metrics.bytes_server_to_client.increment(n as u64);
                from_backend(io, relay, shared, prot).await?;
            }
            r = io.client_rd.read_buf(&mut io.from_client), if io.to_backend.len() < HIGH_WATER && !relay.terminated => {
                let n = r?;
                if n == 0 {
                    return Ok(End::ClientClosed);
                }
                metrics.bytes_client_to_server.increment(n as u64);
                from_client(io, relay, shared, prot).await?;
                if !idle_timeout.is_zero() {
                    idle.as_mut().reset(Instant::now() + idle_timeout);
                }
            }
            r = phase.changed() => {
                if r.is_err() || *phase.borrow() == Phase::Closing {
                    return Ok(End::Shutdown);
                }
            }
            () = &mut idle, if !idle_timeout.is_zero() && relay.is_idle() => {
                return Ok(End::IdleTimeout);
            }
        }
    }
}

/// Relay what the backend sent, fetching keys and refreshing the catalog
/// when the relay asks for them.
async fn from_backend(
    io: &mut Io,
    relay: &mut Relay,
    shared: &Shared,
    prot: &mut Protection,
) -> Result<(), SessionError> {
    follow_reload(shared, prot).await?;
    loop {
        let rt = shared.runtime.load();
        let policy = !rt.config.tables.is_empty();
        let known = (policy && !prot.refreshed).then_some(&prot.catalog.known_oids);
        let ctx = Ctx {
            write: prot.write.as_ref(),
            classifier: prot
                .write
                .as_ref()
                .map_or(&rt.classifier, |w| &w.classifier),
            protected: &prot.catalog.by_attr,
            known_oids: known,
            metrics: SessionMetrics::get(),
        };
        let hook = prot.crypto.as_mut().map(|c| c as &mut dyn RowHook);
        match relay.on_backend(&ctx, hook, &mut io.from_backend, &mut io.to_client) {
            Ok(()) => {
                prot.refreshed = false;
                return Ok(());
            }
            Err(RelayError::Need(need)) => {
                let Some(crypto) = prot.crypto.as_mut() else {
                    return Err(SessionError::Client(PgError::internal(
                        "a key was needed without a policy",
                    )));
                };
                if let Err(e) = crypto.fetch(need).await {
                    // Only this result fails; its remaining rows are dropped.
                    relay.fail_result(&e, &mut io.to_client);
                }
            }
            Err(RelayError::StaleCatalog) => {
                match shared.catalogs.refresh(&rt, &prot.region).await {
                    Ok(cat) => {
                        if let Some(c) = prot.crypto.as_mut() {
                            c.set_catalog(cat.clone());
                        }
                        if prot.write.is_some() {
                            prot.write =
                                Some(WriteCtx::new(&rt.config, &cat, super::next_generation()));
                        }
                        prot.catalog = cat;
                    }
                    Err(e) => {
                        tracing::warn!(region = %prot.region, error = %e, "catalog refresh failed");
                        let err = PgError::region_unreachable(
                            &prot.region,
                            "cannot read the catalog to find protected columns",
                        );
                        relay.fail_result(&err, &mut io.to_client);
                    }
                }
                prot.refreshed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Relay what the client sent, fetching the tenant's key when a statement
/// needs it; a key that cannot be had refuses that statement only.
async fn from_client(
    io: &mut Io,
    relay: &mut Relay,
    shared: &Shared,
    prot: &mut Protection,
) -> Result<(), SessionError> {
    follow_reload(shared, prot).await?;
    loop {
        let rt = shared.runtime.load();
        let ctx = Ctx {
            write: prot.write.as_ref(),
            classifier: prot
                .write
                .as_ref()
                .map_or(&rt.classifier, |w| &w.classifier),
            protected: &prot.catalog.by_attr,
            known_oids: None,
            metrics: SessionMetrics::get(),
        };
        let hook = prot.crypto.as_mut().map(|c| c as &mut dyn RowHook);
        match relay.on_client(&ctx, hook, &mut io.from_client, &mut io.to_backend) {
            Ok(()) => return Ok(()),
            Err(RelayError::Need(need)) => {
                let Some(crypto) = prot.crypto.as_mut() else {
                    return Err(SessionError::Client(PgError::internal(
                        "a key was needed without a policy",
                    )));
                };
                if let Err(e) = crypto.fetch(need).await {
                    relay.refuse_next_client_message(
                        &e,
                        &mut io.from_client,
                        &mut io.to_backend,
                    )?;
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Rebuild the session's protection when the configuration was reloaded.
async fn follow_reload(shared: &Shared, prot: &mut Protection) -> Result<(), SessionError> {
    // A borrowed guard: this runs on every read, so no refcount traffic.
    if Arc::ptr_eq(&prot.config, &shared.runtime.load().config) {
        return Ok(());
    }
    let rt = shared.runtime.load_full();
    *prot = super::protection(&rt, shared, &prot.tenant.clone(), &prot.region.clone()).await?;
    Ok(())
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

fn far_future(timeout: Duration) -> Instant {
    let d = if timeout.is_zero() {
        Duration::from_secs(u64::from(u32::MAX))
    } else {
        timeout
    };
    Instant::now() + d
}

/// Say goodbye on both legs, best effort and bounded in time.
async fn finish(io: &mut Io, result: &Result<End, SessionError>) {
    let err = match result {
        Ok(End::Shutdown) => Some(PgError::shutting_down()),
        Ok(End::IdleTimeout) => Some(PgError::idle_timeout()),
        Err(SessionError::Relay(RelayError::Frame(e))) => {
            Some(PgError::protocol_violation(&e.to_string()))
        }
        Err(SessionError::Relay(RelayError::Protocol(e))) => {
            Some(PgError::protocol_violation(&e.to_string()))
        }
        Err(SessionError::Relay(RelayError::Refused(e))) => Some(e.clone()),
        Err(SessionError::Relay(e @ RelayError::Desync(_))) => {
            tracing::error!(error = %e, "relay desynchronised; closing the session");
            Some(PgError::internal(
                "lost track of the backend's responses; the session was closed",
            ))
        }
        _ => None,
    };
    let goodbye = async {
        if !io.to_client.is_empty() {
            io.client_wr.write_all(&io.to_client).await?;
        }
        if let Some(e) = err {
            let mut bytes = e.to_bytes();
            if let crate::protocol::errors::Severity::Error = e.severity {
                bytes = PgError {
                    severity: crate::protocol::errors::Severity::Fatal,
                    ..e
                }
                .to_bytes();
            }
            io.client_wr.write_all(&bytes).await?;
        }
        io.client_wr.flush().await?;
        let _ = io.client_wr.shutdown().await;
        // A polite Terminate keeps "unexpected EOF" out of the server log.
        io.backend_wr.write_all(b"X\0\0\0\x04").await?;
        io.backend_wr.flush().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), goodbye).await;
}
