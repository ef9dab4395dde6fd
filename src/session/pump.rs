//! The relay loop: one task, `select!` over both sockets, the write queues
//! and shutdown. Reads stop while the opposite write queue is above a high
//! water mark, so a client that stops reading makes byokpg stop reading the
//! backend (backpressure) instead of buffering a whole result.

use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use super::relay::{Ctx, Relay, RelayError};
use super::{Identity, SessionError};
use crate::backend::Backend;
use crate::metrics::SessionMetrics;
use crate::protocol::PgError;
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

pub async fn pump(
    client: Stream,
    backend: Backend,
    shared: &Shared,
    identity: &Identity,
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
    let result = run_loop(&mut io, &mut relay, shared).await;
    finish(&mut io, &result).await;
    tracing::trace!(tenant = %identity.tenant, "relay loop ended");
    result
}

async fn run_loop(io: &mut Io, relay: &mut Relay, shared: &Shared) -> Result<End, SessionError> {
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
                let rt = shared.runtime.load();
                let ctx = Ctx { classifier: &rt.classifier, protected: &rt.protected, row_hook: None, metrics };
                relay.on_backend(&ctx, &mut io.from_backend, &mut io.to_client)?;
            }
            r = io.client_rd.read_buf(&mut io.from_client), if io.to_backend.len() < HIGH_WATER && !relay.terminated => {
                let n = r?;
                if n == 0 {
                    return Ok(End::ClientClosed);
                }
                metrics.bytes_client_to_server.increment(n as u64);
                let rt = shared.runtime.load();
                let ctx = Ctx { classifier: &rt.classifier, protected: &rt.protected, row_hook: None, metrics };
                relay.on_client(&ctx, &mut io.from_client, &mut io.to_backend)?;
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
