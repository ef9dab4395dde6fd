//! Client authentication (SCRAM-SHA-256 or trust) and tenant choice.

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::SessionError;
use crate::config::AuthMethod;
use crate::protocol::messages::{self, Reader};
use crate::protocol::scram::{ScramServer, Verifier};
use crate::protocol::startup::{StartupMessage, take_tenant_option};
use crate::protocol::{PgError, next_frame};
use crate::server::runtime::Runtime;
use crate::tls::Stream;

const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Largest authentication message a client may send (as PostgreSQL).
const MAX_AUTH_MESSAGE: usize = 10_000;

/// Who is connected, as what.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user: String,
    pub tenant: String,
    /// `options` with byokpg's own setting removed.
    pub options: String,
}

pub async fn authenticate(
    stream: &mut Stream,
    rt: &Runtime,
    msg: &StartupMessage,
) -> Result<Identity, SessionError> {
    let user = msg.get("user").filter(|u| !u.is_empty()).ok_or_else(|| {
        SessionError::Client(PgError::auth_rejected(
            "no user name given in the startup packet",
        ))
    })?;
    let entry = rt.users.get(user);
    if rt.auth() == AuthMethod::ScramSha256 {
        // Unknown users go through the whole exchange against a random
        // verifier, so the answer does not reveal which user names exist.
        let mock = Verifier::mock();
        let verifier = entry.and_then(|e| e.verifier.as_ref()).unwrap_or(&mock);
        let ok = scram_exchange(stream, verifier, user).await?;
        if !ok || entry.is_none() {
            return Err(SessionError::Client(PgError::auth_failed(user)));
        }
    }
    let Some(entry) = entry else {
        return Err(SessionError::Client(PgError::auth_failed(user)));
    };
    let (from_options, options) = take_tenant_option(msg.get("options").unwrap_or_default());
    let requested = msg.get("byokpg.tenant").map(str::to_owned).or(from_options);
    let tenant = match requested {
        Some(t) if entry.tenants.contains(&t) => t,
        Some(t) => return Err(SessionError::Client(PgError::tenant_not_allowed(user, &t))),
        None => entry.tenants.first().cloned().ok_or_else(|| {
            SessionError::Client(PgError::auth_rejected("the user has no tenant"))
        })?,
    };
    Ok(Identity {
        user: user.to_owned(),
        tenant,
        options,
    })
}

/// Run SCRAM to the end; `Ok(false)` = wrong password (or unknown user).
async fn scram_exchange(
    stream: &mut Stream,
    verifier: &Verifier,
    user: &str,
) -> Result<bool, SessionError> {
    let mut out = BytesMut::new();
    messages::auth_msg(&mut out, AUTH_SASL, b"SCRAM-SHA-256\0\0");
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(512);
    let initial = read_password_message(stream, &mut buf).await?;
    let mut r = Reader::new(&initial, "SASLInitialResponse");
    let mechanism = r.cstr().map_err(client_err)?;
    if mechanism != b"SCRAM-SHA-256" {
        return Err(SessionError::Client(PgError::auth_rejected(
            "only the SCRAM-SHA-256 mechanism is supported",
        )));
    }
    let len = r.i32().map_err(client_err)?;
    let data = r
        .bytes(usize::try_from(len).unwrap_or(0))
        .map_err(client_err)?;
    let mut server = ScramServer::new(verifier);
    let Ok(first) = server.client_first(data) else {
        return Err(SessionError::Client(PgError::auth_failed(user)));
    };
    out.clear();
    messages::auth_msg(&mut out, AUTH_SASL_CONTINUE, first.as_bytes());
    stream.write_all(&out).await?;
    let response = read_password_message(stream, &mut buf).await?;
    let Ok(fin) = server.client_final(&response) else {
        return Ok(false);
    };
    out.clear();
    messages::auth_msg(&mut out, AUTH_SASL_FINAL, fin.as_bytes());
    stream.write_all(&out).await?;
    Ok(true)
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` wants
fn client_err(e: crate::protocol::ProtocolError) -> SessionError {
    SessionError::Client(PgError::protocol_violation(&e.to_string()))
}

/// Read one `p` message body (bounded).
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, SessionError> {
    loop {
        if buf.len() >= 5 {
            let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
            if buf[0] != b'p'
                || !(4..=i32::try_from(MAX_AUTH_MESSAGE).unwrap_or(i32::MAX)).contains(&len)
            {
                return Err(SessionError::Client(PgError::protocol_violation(
                    "expected a SASL response message",
                )));
            }
        }
        if let Some(frame) = next_frame(buf)
            .map_err(|e| SessionError::Client(PgError::protocol_violation(&e.to_string())))?
        {
            return Ok(frame.body().to_vec());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(SessionError::Closed);
        }
        if !buf.has_remaining() {
            return Err(SessionError::Closed);
        }
    }
}
