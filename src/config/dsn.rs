//! Region connection strings, in libpq's URL or keyword form.
//!
//! Written by hand rather than with `url` so that no error message can ever
//! echo a fragment of the string: when a password holds an unencoded `@` or
//! `/`, a URL parser's idea of "host" or "port" is really a piece of the
//! password.
use std::fmt::{self, Write as _};
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};

use super::Secret;

/// TLS policy towards a region database, with libpq's names and meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// `disable`: plain TCP only.
    Disable,
    /// `allow`: TLS when the server offers it, plain otherwise (byokpg tries
    /// TLS first, like `prefer`).
    Allow,
    /// `prefer` (default): TLS when the server offers it, certificate not verified.
    #[default]
    Prefer,
    /// `require`: TLS or fail; the certificate is verified against
    /// `sslrootcert` when one is given (as libpq does), not otherwise.
    Require,
    /// `verify-ca`: TLS, certificate chain verified against `sslrootcert`.
    VerifyCa,
    /// `verify-full`: as `verify-ca`, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// A parsed region DSN. `Debug` shows the password as `Secret(***)`; use
/// [`Dsn::redacted`] for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dsn {
    /// Host name or IP address (TCP only). Required.
    pub host: String,
    /// TCP port. Default 5432.
    pub port: u16,
    /// Role byokpg logs in as. Required.
    pub user: String,
    /// Password for `user`. Default: none.
    pub password: Option<Secret>,
    /// Database. Default: none, meaning the database the client asked for.
    pub dbname: Option<String>,
    /// TLS policy. Default `prefer`, as libpq.
    pub sslmode: SslMode,
    /// PEM file of CA certificates to verify the server with. Default: none.
    pub sslrootcert: Option<PathBuf>,
    /// `application_name` reported to the server. Default: none.
    pub application_name: Option<String>,
}

/// Why a DSN was refused. Messages never contain any part of the DSN except
/// a keyword name, because a mis-split password could be anywhere in it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DsnError {
    #[error("invalid DSN: {0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> DsnError {
    DsnError::Invalid(msg.into())
}

const KEYWORDS: &str = "host, port, user, password, dbname, sslmode, sslrootcert, application_name";
const ENCODING_HINT: &str = "if the user or password contains @ / : ? # % or spaces, percent-encode them (e.g. %40 for @) or use the keyword form";

#[derive(Default)]
struct Builder {
    host: Option<String>,
    port: Option<String>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    sslmode: Option<String>,
    sslrootcert: Option<String>,
    application_name: Option<String>,
}

impl Builder {
    fn set(&mut self, key: &str, value: String) -> Result<(), DsnError> {
        let slot = match key {
            "host" => &mut self.host,
            "port" => &mut self.port,
            "user" => &mut self.user,
            "password" => {
                self.password = Some(Secret::new(value));
                return Ok(());
            }
            "dbname" => &mut self.dbname,
            "sslmode" => &mut self.sslmode,
            "sslrootcert" => &mut self.sslrootcert,
            "application_name" => &mut self.application_name,
            _ => return Err(unknown_keyword(key)),
        };
        *slot = Some(value);
        Ok(())
    }

    fn finish(self) -> Result<Dsn, DsnError> {
        let host = self.host.filter(|h| !h.is_empty()).ok_or_else(|| {
            invalid(format!(
                "no host given (Unix-domain sockets are not supported); {ENCODING_HINT}"
            ))
        })?;
        if host.contains(',') {
            return Err(invalid("several hosts are not supported; give one host"));
        }
        if host.starts_with('/') {
            return Err(invalid(
                "Unix-domain socket hosts are not supported; give a TCP host name or address",
            ));
        }
        let port = match self.port.as_deref() {
            None | Some("") => 5432,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(invalid(format!(
                        "port is not a number from 1 to 65535; {ENCODING_HINT}"
                    )));
                }
            },
        };
        let user = self.user.filter(|u| !u.is_empty()).ok_or_else(|| {
            invalid("no user given (byokpg logs in to each region with the DSN's own user)")
        })?;
        let sslmode = match self.sslmode.as_deref() {
            None => SslMode::Prefer,
            Some(s) => SslMode::parse(s).ok_or_else(|| {
                invalid("sslmode must be one of disable, allow, prefer, require, verify-ca, verify-full")
            })?,
        };
        Ok(Dsn {
            host,
            port,
            user,
            password: self.password,
            dbname: self.dbname.filter(|d| !d.is_empty()),
            sslmode,
            sslrootcert: self
                .sslrootcert
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            application_name: self.application_name,
        })
    }
}

/// Names a keyword only when it looks like one; anything else might be a
/// piece of a password that was split on an unquoted space.
fn unknown_keyword(key: &str) -> DsnError {
    let plausible = !key.is_empty()
        && key.len() <= 40
        && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plausible {
        invalid(format!("unknown parameter `{key}`; accepted: {KEYWORDS}"))
    } else {
        invalid(format!("unknown parameter; accepted: {KEYWORDS}"))
    }
}

impl Dsn {
    /// Parses `postgres://…`/`postgresql://…` URLs and libpq keyword strings
    /// (`host=… port=… user=… password='…' dbname=… sslmode=…`).
    pub fn parse(s: &str) -> Result<Self, DsnError> {
        let trimmed = s.trim();
        let lower = trimmed.get(..13).unwrap_or(trimmed).to_ascii_lowercase();
        if let Some(rest) = lower
            .strip_prefix("postgresql://")
            .map(|_| &trimmed[13..])
            .or_else(|| lower.strip_prefix("postgres://").map(|_| &trimmed[11..]))
        {
            parse_url(rest)
        } else if trimmed.contains("://") {
            Err(invalid("URL scheme must be postgres:// or postgresql://"))
        } else {
            parse_keywords(trimmed)
        }
    }

    /// The DSN as a URL with the password replaced by `***`, for logs and
    /// messages.
    pub fn redacted(&self) -> String {
        let mut out = String::from("postgres://");
        out.push_str(&self.user);
        if self.password.is_some() {
            out.push_str(":***");
        }
        out.push('@');
        if self.host.contains(':') {
            let _ = write!(out, "[{}]", self.host);
        } else {
            out.push_str(&self.host);
        }
        let _ = write!(out, ":{}", self.port);
        if let Some(db) = &self.dbname {
            let _ = write!(out, "/{db}");
        }
        let _ = write!(out, "?sslmode={}", self.sslmode.as_str());
        if let Some(root) = &self.sslrootcert {
            let _ = write!(out, "&sslrootcert={}", root.display());
        }
        out
    }

    /// A `tokio_postgres::Config` carrying everything but TLS, which the
    /// caller chooses from [`Dsn::sslmode`] (see `crate::pgmeta`).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host).port(self.port).user(&self.user);
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(db) = &self.dbname {
            c.dbname(db);
        }
        if let Some(app) = &self.application_name {
            c.application_name(app);
        }
        c
    }
}

fn parse_url(rest: &str) -> Result<Dsn, DsnError> {
    let mut b = Builder::default();
    // Like libpq: credentials end at an '@' met before the first '/'. The
    // last such '@' wins, so an unencoded '@' in a password still works.
    let slash = rest.find('/').unwrap_or(rest.len());
    let (userinfo, after) = match rest[..slash].rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    if let Some(info) = userinfo {
        let (user, password) = match info.find(':') {
            Some(c) => (&info[..c], Some(&info[c + 1..])),
            None => (info, None),
        };
        b.user = Some(decode(user, "user")?);
        if let Some(p) = password {
            b.password = Some(Secret::new(decode(p, "password")?));
        }
    }
    let (hostport, path_query) = match after.find(['/', '?']) {
        Some(i) => after.split_at(i),
        None => (after, ""),
    };
    let (host, port) = split_host_port(hostport)?;
    b.host = Some(decode(host, "host")?);
    b.port = port.map(str::to_owned);
    let (path, query) = match path_query.find('?') {
        Some(i) => (&path_query[..i], Some(&path_query[i + 1..])),
        None => (path_query, None),
    };
    if let Some(db) = path.strip_prefix('/') {
        if db.contains('/') {
            return Err(invalid(format!(
                "the database name contains '/'; {ENCODING_HINT}"
            )));
        }
        b.dbname = Some(decode(db, "database name")?);
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            invalid("a query parameter has no '='; write name=value pairs joined by '&'")
        })?;
        let key = decode(k, "parameter name")?;
        let value = decode(v, "parameter value")?;
        b.set(&key, value)?;
    }
    b.finish()
}

fn split_host_port(hostport: &str) -> Result<(&str, Option<&str>), DsnError> {
    if let Some(inner) = hostport.strip_prefix('[') {
        let end = inner
            .find(']')
            .ok_or_else(|| invalid("an IPv6 address is missing its closing ']'"))?;
        let tail = &inner[end + 1..];
        let port = match tail.strip_prefix(':') {
            Some(p) => Some(p),
            None if tail.is_empty() => None,
            None => return Err(invalid("unexpected text after the IPv6 address")),
        };
        return Ok((&inner[..end], port));
    }
    Ok(match hostport.rfind(':') {
        Some(i) => (&hostport[..i], Some(&hostport[i + 1..])),
        None => (hostport, None),
    })
}

/// Percent-decoding as libpq does it: `%XX` only, `+` stays `+`.
fn decode(s: &str, what: &str) -> Result<String, DsnError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    invalid(format!(
                        "bad percent-encoding in the {what} ('%' must be followed by two hex digits; write %25 for '%')"
                    ))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        invalid(format!(
            "the {what} is not valid UTF-8 after percent-decoding"
        ))
    })
}

/// libpq keyword/value syntax: `key = value` pairs separated by white space;
/// a value may be single-quoted, and `\` escapes the next character.
fn parse_keywords(s: &str) -> Result<Dsn, DsnError> {
    let mut b = Builder::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(invalid(
                "expected key=value pairs (e.g. host=db port=5432 user=app) or a postgres:// URL",
            ));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let value = read_value(&mut chars)?;
        b.set(&key, value)?;
    }
    b.finish()
}

fn read_value(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Result<String, DsnError> {
    let mut value = String::new();
    if chars.next_if_eq(&'\'').is_some() {
        loop {
            match chars.next() {
                Some('\\') => value.push(chars.next().ok_or_else(unterminated)?),
                Some('\'') => return Ok(value),
                Some(c) => value.push(c),
                None => return Err(unterminated()),
            }
        }
    }
    while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
        if c == '\\' {
            if let Some(n) = chars.next() {
                value.push(n);
            }
        } else {
            value.push(c);
        }
    }
    Ok(value)
}

fn unterminated() -> DsnError {
    invalid("a quoted value is missing its closing single quote")
}

impl<'de> serde::Deserialize<'de> for Dsn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(DsnVisitor)
    }
}

struct DsnVisitor;

impl Visitor<'_> for DsnVisitor {
    type Value = Dsn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "a connection string (postgres://user:password@host:port/dbname or host=... user=...)",
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Dsn, E> {
        Dsn::parse(v).map_err(E::custom)
    }
}
