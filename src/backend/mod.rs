//! Connections to a region database: TCP, TLS per the DSN's `sslmode`,
//! authentication with the DSN's own credentials, and the startup exchange
//! up to the first `ReadyForQuery`. Also forwards cancel requests.

mod auth;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Dsn, SslMode};
use crate::protocol::{errors, next_frame, startup};
use crate::tls::{self, Stream, Verify};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the server does not support TLS but sslmode={0} requires it")]
    TlsRefused(&'static str),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("protocol: {0}")]
    Protocol(String),
    /// The server answered the startup with an `ErrorResponse` (e.g. unknown
    /// database): relayed to the client unchanged, as PostgreSQL's own error.
    #[error("server error {code}: {message}")]
    Server {
        code: String,
        message: String,
        raw: bytes::Bytes,
    },
}

/// A region database's address and TLS policy, resolved once per config load.
#[derive(Clone)]
pub struct Target {
    pub region: String,
    pub dsn: Arc<Dsn>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("region", &self.region)
            .field("dsn", &self.dsn.redacted())
            .finish_non_exhaustive()
    }
}

impl Target {
    pub fn new(region: &str, dsn: &Dsn) -> Result<Self, tls::TlsError> {
        let verify = match dsn.sslmode {
            SslMode::Disable => None,
            SslMode::VerifyFull => Some(Verify::Full),
            SslMode::VerifyCa => Some(Verify::Ca),
            // libpq: with a root certificate, `require` verifies like verify-ca.
            SslMode::Require if dsn.sslrootcert.is_some() => Some(Verify::Ca),
            SslMode::Allow | SslMode::Prefer | SslMode::Require => Some(Verify::None),
        };
        let tls = verify
            .map(|v| tls::client_config(v, dsn.sslrootcert.as_deref()))
            .transpose()?;
        Ok(Self {
            region: region.to_owned(),
            dsn: Arc::new(dsn.clone()),
            tls,
        })
    }

    /// TCP connect plus TLS negotiation per `sslmode`.
    async fn open(&self) -> Result<Stream, BackendError> {
        let tcp = TcpStream::connect((self.dsn.host.as_str(), self.dsn.port)).await?;
        tcp.set_nodelay(true)?;
        let Some(cfg) = self
            .tls
            .as_ref()
            .filter(|_| self.dsn.sslmode != SslMode::Allow)
        else {
            return Ok(Stream::Plain(tcp));
        };
        self.negotiate_tls(tcp, cfg.clone()).await
    }

    async fn negotiate_tls(
        &self,
        mut tcp: TcpStream,
        cfg: Arc<rustls::ClientConfig>,
    ) -> Result<Stream, BackendError> {
        tcp.write_all(&startup::encode_ssl_request()).await?;
        // Exactly one byte: anything after it would be unauthenticated data.
        let answer = tcp.read_u8().await?;
        match answer {
            b'S' => {
                let name = rustls::pki_types::ServerName::try_from(self.dsn.host.clone())
                    .map_err(|e| BackendError::Tls(e.to_string()))?;
                let tls = tokio_rustls::TlsConnector::from(cfg)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| BackendError::Tls(e.to_string()))?;
                Ok(Stream::Client(Box::new(tls)))
            }
            b'N' if self.dsn.sslmode == SslMode::Prefer => Ok(Stream::Plain(tcp)),
            b'N' => Err(BackendError::TlsRefused(self.dsn.sslmode.as_str())),
            other => Err(BackendError::Protocol(format!(
                "unexpected answer {other:#x} to SSLRequest"
            ))),
        }
    }

    /// Open an authenticated backend session.
    ///
    /// `params` are the client's startup parameters to pass on (without
    /// `user`, `database` and byokpg's own options).
    pub async fn connect(
        &self,
        database: &str,
        params: &[(String, String)],
        timeout: Duration,
    ) -> Result<Backend, BackendError> {
        tokio::time::timeout(timeout, self.connect_inner(database, params))
            .await
            .map_err(|_| BackendError::Timeout(timeout))?
    }

    async fn connect_inner(
        &self,
        database: &str,
        params: &[(String, String)],
    ) -> Result<Backend, BackendError> {
        let mut stream = self.open().await?;
        let db = self.dsn.dbname.as_deref().unwrap_or(database);
        let mut all: Vec<(&str, &str)> = vec![("user", self.dsn.user.as_str()), ("database", db)];
        if let Some(app) = &self.dsn.application_name {
            all.push(("application_name", app));
        }
        for (k, v) in params {
            if !(k == "application_name" && self.dsn.application_name.is_some()) {
                all.push((k, v));
            }
        }
        stream.write_all(&startup::encode_startup(&all)).await?;
        let mut buf = BytesMut::with_capacity(4096);
        auth::authenticate(&mut stream, &mut buf, &self.dsn).await?;
        finish_startup(stream, buf).await
    }

    /// Forward a cancel request for `pid`/`secret` to this region.
    pub async fn cancel(
        &self,
        pid: i32,
        secret: i32,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let send = async {
            let mut stream = self.open().await?;
            stream
                .write_all(&startup::encode_cancel(pid, secret))
                .await?;
            stream.flush().await?;
            // The server closes without answering; wait for that so the
            // request is not cut short by our own close.
            let mut sink = [0u8; 1];
            let _ = stream.read(&mut sink).await;
            Ok::<(), BackendError>(())
        };
        tokio::time::timeout(timeout, send)
            .await
            .map_err(|_| BackendError::Timeout(timeout))?
    }
}

/// An authenticated backend session ready for queries.
pub struct Backend {
    pub stream: Stream,
    /// `ParameterStatus` frames to relay to the client verbatim.
    pub parameter_status: Vec<bytes::Bytes>,
    pub pid: i32,
    pub secret: i32,
    /// Transaction status of the first `ReadyForQuery`.
    pub status: u8,
    /// Bytes that arrived after the first `ReadyForQuery` (normally none).
    pub leftover: BytesMut,
}

async fn finish_startup(mut stream: Stream, mut buf: BytesMut) -> Result<Backend, BackendError> {
    let mut parameter_status = Vec::new();
    let (mut pid, mut secret) = (0, 0);
    loop {
        let frame = read_frame(&mut stream, &mut buf).await?;
        match frame.tag {
            b'S' => parameter_status.push(frame.raw),
            b'K' if frame.body().len() == 8 => {
                let b = frame.body();
                pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                secret = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
            }
            b'Z' => {
                return Ok(Backend {
                    stream,
                    parameter_status,
                    pid,
                    secret,
                    status: frame.body().first().copied().unwrap_or(b'I'),
                    leftover: buf,
                });
            }
            b'E' => return Err(server_error(frame.raw)),
            // NoticeResponse and NegotiateProtocolVersion carry nothing we need.
            b'N' | b'v' => {}
            other => {
                return Err(BackendError::Protocol(format!(
                    "unexpected message {:?} during startup",
                    char::from(other)
                )));
            }
        }
    }
}

fn server_error(raw: bytes::Bytes) -> BackendError {
    let (code, message) = errors::error_summary(&raw[5..]);
    BackendError::Server { code, message, raw }
}

/// Read one whole frame from a backend during startup.
async fn read_frame(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<crate::protocol::Frame, BackendError> {
    loop {
        if let Some(f) = next_frame(buf).map_err(|e| BackendError::Protocol(e.to_string()))? {
            return Ok(f);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Protocol(
                "server closed the connection during startup".to_owned(),
            ));
        }
    }
}
