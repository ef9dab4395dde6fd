//! Authenticating to a region database with the DSN's credentials.

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::AsyncWriteExt;

use super::{BackendError, read_frame, server_error};
use crate::config::Dsn;
use crate::protocol::messages::{begin_msg, finish_msg, put_cstr};
use crate::tls::Stream;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Run the authentication exchange until `AuthenticationOk`.
pub(super) async fn authenticate(
    stream: &mut Stream,
    buf: &mut BytesMut,
    dsn: &Dsn,
) -> Result<(), BackendError> {
    let mut scram: Option<sasl::ScramSha256> = None;
    loop {
        let frame = read_frame(stream, buf).await?;
        if frame.tag == b'E' {
            return Err(server_error(frame.raw));
        }
        let body = frame.body();
        if frame.tag != b'R' || body.len() < 4 {
            return Err(BackendError::Protocol(
                "expected an authentication request".into(),
            ));
        }
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let payload = &body[4..];
        let reply = match code {
            AUTH_OK => return Ok(()),
            AUTH_CLEARTEXT => password_msg(password(dsn)?.as_bytes()),
            AUTH_MD5 => {
                let salt: [u8; 4] = payload
                    .try_into()
                    .map_err(|_| BackendError::Protocol("bad MD5 salt".into()))?;
                let hash = md5_hash(dsn.user.as_bytes(), password(dsn)?.as_bytes(), salt);
                password_msg(hash.as_bytes())
            }
            AUTH_SASL => sasl_initial(payload, password(dsn)?, &mut scram)?,
            AUTH_SASL_CONTINUE => sasl_continue(payload, scram.as_mut())?,
            AUTH_SASL_FINAL => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| BackendError::Auth("unexpected SASL final".into()))?;
                s.finish(payload)
                    .map_err(|e| BackendError::Auth(e.to_string()))?;
                continue;
            }
            other => {
                return Err(BackendError::Auth(format!(
                    "the server asks for an authentication method byokpg does not support (code {other})"
                )));
            }
        };
        stream.write_all(&reply).await?;
    }
}

fn password(dsn: &Dsn) -> Result<&str, BackendError> {
    dsn.password
        .as_ref()
        .map(crate::config::Secret::expose)
        .ok_or_else(|| {
            BackendError::Auth("the server wants a password and the region DSN has none".into())
        })
}

fn password_msg(pw: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    let s = begin_msg(&mut out, b'p');
    put_cstr(&mut out, pw);
    finish_msg(&mut out, s);
    out
}

fn sasl_initial(
    mechanisms: &[u8],
    password: &str,
    scram: &mut Option<sasl::ScramSha256>,
) -> Result<BytesMut, BackendError> {
    let offered = mechanisms
        .split(|b| *b == 0)
        .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
    if !offered {
        return Err(BackendError::Auth(
            "the server offers no SCRAM-SHA-256".into(),
        ));
    }
    let s = sasl::ScramSha256::new(password.as_bytes(), sasl::ChannelBinding::unsupported());
    let mut out = BytesMut::new();
    let start = begin_msg(&mut out, b'p');
    put_cstr(&mut out, sasl::SCRAM_SHA_256.as_bytes());
    out.put_i32(i32::try_from(s.message().len()).unwrap_or(i32::MAX));
    out.put_slice(s.message());
    finish_msg(&mut out, start);
    *scram = Some(s);
    Ok(out)
}

fn sasl_continue(
    payload: &[u8],
    scram: Option<&mut sasl::ScramSha256>,
) -> Result<BytesMut, BackendError> {
    let s = scram.ok_or_else(|| BackendError::Auth("unexpected SASL continue".into()))?;
    s.update(payload)
        .map_err(|e| BackendError::Auth(e.to_string()))?;
    let mut out = BytesMut::new();
    let start = begin_msg(&mut out, b'p');
    out.put_slice(s.message());
    finish_msg(&mut out, start);
    Ok(out)
}
