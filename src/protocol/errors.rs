//! Errors byokpg itself sends to clients, built by named constructors that
//! carry their SQLSTATE (SPEC §8). This is the one place an error becomes an
//! `ErrorResponse`; callers never hand-assemble one.

use bytes::{BufMut, BytesMut};

use super::messages::{begin_msg, finish_msg, put_cstr};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_bytes(self) -> &'static [u8] {
        match self {
            Self::Error => b"ERROR",
            Self::Fatal => b"FATAL",
        }
    }
}

/// A client-facing error. Messages must never contain secrets or plaintext of
/// protected columns; every constructor below takes only names and reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub severity: Severity,
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl PgError {
    fn new(severity: Severity, code: &'static str, message: String) -> Self {
        debug_assert!(message.starts_with("byokpg:"));
        Self {
            severity,
            code,
            message,
            detail: None,
            hint: None,
        }
    }

    #[must_use]
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// 28P01: unknown user or wrong password (indistinguishable on purpose).
    pub fn auth_failed(user: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "28P01",
            format!("byokpg: password authentication failed for user \"{user}\""),
        )
    }

    /// 28000: the requested tenant is not one of the user's tenants.
    pub fn tenant_not_allowed(user: &str, tenant: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "28000",
            format!("byokpg: user \"{user}\" may not connect as tenant \"{tenant}\""),
        )
        .with_hint("use one of the tenants listed for this user in [[users]].tenants")
    }

    /// 28000: the connection lacks something authentication requires.
    pub fn auth_rejected(reason: &str) -> Self {
        Self::new(Severity::Fatal, "28000", format!("byokpg: {reason}"))
    }

    /// 08006: the tenant's region database cannot be reached.
    pub fn region_unreachable(region: &str, reason: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "08006",
            format!("byokpg: the database of region \"{region}\" is unreachable: {reason}"),
        )
        .with_hint("retry later; other regions are not affected")
    }

    /// 08P01: the client broke the protocol.
    pub fn protocol_violation(what: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "08P01",
            format!("byokpg: protocol violation: {what}"),
        )
    }

    /// 0A000 FATAL: a protocol version byokpg does not speak.
    pub fn unsupported_protocol(major: u16, minor: u16) -> Self {
        Self::new(
            Severity::Fatal,
            "0A000",
            format!("byokpg: unsupported frontend protocol {major}.{minor}: byokpg speaks 3.0"),
        )
    }

    /// 0A000: a statement byokpg refuses on a protected table.
    pub fn not_supported(message: String) -> Self {
        Self::new(Severity::Error, "0A000", message)
    }

    /// XX001: a stored value failed to decrypt (tampered, moved, or another
    /// tenant's); it is never returned as data.
    pub fn data_corrupted(message: String) -> Self {
        Self::new(Severity::Error, "XX001", message)
    }

    /// 58000 / 58030 / 08006: the tenant's key cannot be used now.
    pub fn key_unavailable(code: &'static str, message: String) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// 0A000 or 42501: a statement byokpg refuses (from the planner).
    pub fn refused(code: &'static str, message: String) -> Self {
        Self::new(Severity::Error, code, message)
    }

    /// 53300: the connection cap is reached.
    pub fn too_many_connections(limit: usize) -> Self {
        Self::new(
            Severity::Fatal,
            "53300",
            format!("byokpg: too many client connections (max_client_connections = {limit})"),
        )
    }

    /// 57P01: the proxy is shutting down.
    pub fn shutting_down() -> Self {
        Self::new(
            Severity::Fatal,
            "57P01",
            "byokpg: the proxy is shutting down".to_owned(),
        )
        .with_hint("reconnect; another byokpg instance or this one after restart will serve you")
    }

    /// 57P05: the client stayed idle past `client_idle_timeout`.
    pub fn idle_timeout() -> Self {
        Self::new(
            Severity::Fatal,
            "57P05",
            "byokpg: terminating connection due to idle timeout (client_idle_timeout)".to_owned(),
        )
    }

    /// 08P01 during startup: the client took too long.
    pub fn startup_timeout() -> Self {
        Self::new(
            Severity::Fatal,
            "08P01",
            "byokpg: startup and authentication did not finish in time".to_owned(),
        )
    }

    /// XX000: an internal fault; the message says nothing secret.
    pub fn internal(what: &str) -> Self {
        Self::new(
            Severity::Fatal,
            "XX000",
            format!("byokpg: internal error: {what}"),
        )
    }

    /// Encode as an `ErrorResponse` frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let start = begin_msg(out, b'E');
        let sev = self.severity.as_bytes();
        field(out, b'S', sev);
        field(out, b'V', sev);
        field(out, b'C', self.code.as_bytes());
        field(out, b'M', self.message.as_bytes());
        if let Some(d) = &self.detail {
            field(out, b'D', d.as_bytes());
        }
        if let Some(h) = &self.hint {
            field(out, b'H', h.as_bytes());
        }
        out.put_u8(0);
        finish_msg(out, start);
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(128);
        self.encode(&mut out);
        out
    }
}

fn field(out: &mut BytesMut, code: u8, value: &[u8]) {
    out.put_u8(code);
    put_cstr(out, value);
}

/// Fields of an `ErrorResponse`/`NoticeResponse` body, e.g. to log a
/// backend's refusal during connect. Malformed bodies yield what parsed.
pub fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some((&code, tail)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let Some(end) = memchr::memchr(0, tail) else {
            break;
        };
        out.push((code, String::from_utf8_lossy(&tail[..end]).into_owned()));
        rest = &tail[end + 1..];
    }
    out
}

/// The `M` (message) and `C` (code) of an error body, for logs.
pub fn error_summary(body: &[u8]) -> (String, String) {
    let f = error_fields(body);
    let get = |c: u8| {
        f.iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    (get(b'C'), get(b'M'))
}
