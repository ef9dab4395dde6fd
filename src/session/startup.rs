//! From TCP accept to a decoded StartupMessage: SSL/GSS negotiation, direct
//! TLS, cancel requests, protocol version checks.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::SessionError;
use crate::config::TlsMode;
use crate::protocol::PgError;
use crate::protocol::messages;
use crate::protocol::startup::{self, StartupMessage, StartupPacket};
use crate::server::Shared;
use crate::server::runtime::Runtime;
use crate::tls::Stream;

/// How the opening of a connection ended.
pub enum Opening {
    Session(Stream, StartupMessage),
    /// A CancelRequest was handled; the connection is done.
    Cancelled,
}

/// First byte of a TLS ClientHello record (PostgreSQL 17 "direct TLS").
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn open(tcp: TcpStream, rt: &Runtime, shared: &Shared) -> Result<Opening, SessionError> {
    let mut first = [0u8; 1];
    let direct_tls = tcp.peek(&mut first).await? == 1 && first[0] == TLS_HANDSHAKE;
    let mut stream = if direct_tls {
        let acceptor = rt.tls.as_ref().ok_or(SessionError::Closed)?;
        Stream::Server(Box::new(acceptor.accept(tcp).await?))
    } else {
        Stream::Plain(tcp)
    };
    // At most one SSLRequest and one GSSENCRequest precede the startup.
    for _ in 0..3 {
        let packet = match read_packet(&mut stream).await {
            Ok(p) => p,
            Err(SessionError::Client(e)) => return Err(tell(&mut stream, e).await),
            Err(other) => return Err(other),
        };
        let parsed = match startup::parse_startup(&packet) {
            Ok(p) => p,
            Err(e) => {
                let e = PgError::protocol_violation(&e.to_string());
                return Err(tell(&mut stream, e).await);
            }
        };
        match parsed {
            StartupPacket::SslRequest => stream = answer_ssl(stream, rt).await?,
            StartupPacket::GssEncRequest => stream.write_all(b"N").await?,
            StartupPacket::Cancel { pid, secret } => {
                forward_cancel(shared, pid, secret).await;
                return Ok(Opening::Cancelled);
            }
            StartupPacket::Startup(msg) => return accept_startup(stream, msg, rt).await,
        }
    }
    let e = PgError::protocol_violation("too many negotiation requests");
    Err(tell(&mut stream, e).await)
}

/// Send a FATAL error before closing, as PostgreSQL does.
async fn tell(stream: &mut Stream, e: PgError) -> SessionError {
    super::send_fatal(stream, &e).await;
    SessionError::Client(e)
}

async fn answer_ssl(stream: Stream, rt: &Runtime) -> Result<Stream, SessionError> {
    match (stream, rt.tls.as_ref()) {
        (Stream::Plain(mut tcp), Some(acceptor)) => {
            tcp.write_all(b"S").await?;
            // Nothing may be buffered past the SSLRequest: we read exactly
            // its 8 bytes, so the handshake starts on a clean stream
            // (the CVE-2021-23214 class of bug cannot happen here).
            Ok(Stream::Server(Box::new(acceptor.accept(tcp).await?)))
        }
        (mut s, _) => {
            s.write_all(b"N").await?;
            Ok(s)
        }
    }
}

async fn accept_startup(
    mut stream: Stream,
    msg: StartupMessage,
    rt: &Runtime,
) -> Result<Opening, SessionError> {
    if msg.major != 3 {
        let e = PgError::unsupported_protocol(msg.major, msg.minor);
        return Err(tell(&mut stream, e).await);
    }
    if rt.config.server.tls_mode == TlsMode::Require && !stream.is_tls() {
        let e = PgError::auth_rejected(
            "TLS is required (tls_mode = require): connect with sslmode=require",
        );
        return Err(tell(&mut stream, e).await);
    }
    if msg.minor > 0 {
        // Newer clients (3.2) ask for a minor version we do not speak and may
        // send `_pq_.` options; say which we speak, as PostgreSQL does.
        let unknown: Vec<&[u8]> = msg
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_bytes())
            .collect();
        let mut out = BytesMut::new();
        messages::negotiate_protocol_version(&mut out, 0, &unknown);
        stream.write_all(&out).await?;
    }
    Ok(Opening::Session(stream, msg))
}

/// Read one length-prefixed startup packet, never more bytes than it has.
async fn read_packet<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, SessionError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let total = startup::startup_len(&len)
        .map_err(|e| SessionError::Client(PgError::protocol_violation(&e.to_string())))?
        .unwrap_or(0);
    let mut packet = vec![0u8; total];
    packet[..4].copy_from_slice(&len);
    s.read_exact(&mut packet[4..]).await?;
    Ok(packet)
}

async fn forward_cancel(shared: &Shared, pid: i32, secret: i32) {
    let Some(t) = shared.cancels.lookup(pid, secret) else {
        // PostgreSQL says nothing to a wrong key; neither do we.
        crate::metrics::cancel_request(false);
        return;
    };
    let timeout = shared.runtime.load().config.server.connect_timeout;
    match t
        .target
        .cancel(t.backend_pid, t.backend_secret, timeout)
        .await
    {
        Ok(()) => crate::metrics::cancel_request(true),
        Err(e) => {
            crate::metrics::cancel_request(false);
            tracing::warn!(region = %t.target.region, error = %e, "cancel request not delivered");
        }
    }
}
