//! Untagged startup-phase packets: `len (4) | code (4) | payload`.

use super::ProtocolError;
use super::messages::Reader;

/// PostgreSQL refuses startup packets over 10,000 bytes; so do we, before
/// buffering them (an absurd length must not make us allocate).
pub const MAX_STARTUP_LEN: usize = 10_000;

const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;

#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel { pid: i32, secret: i32 },
    Startup(StartupMessage),
}

#[derive(Debug, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    /// Parameters in the order sent (`user`, `database`, `options`, ...).
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Total length of the startup packet at the start of `buf`, once its
/// 4-byte length is readable. Errors on lengths outside [8, 10000].
pub fn startup_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    match usize::try_from(len) {
        Ok(n) if (8..=MAX_STARTUP_LEN).contains(&n) => Ok(Some(n)),
        Ok(n) if n > MAX_STARTUP_LEN => Err(ProtocolError::TooLarge {
            len: n,
            limit: MAX_STARTUP_LEN,
        }),
        _ => Err(ProtocolError::BadLength(i64::from(len))),
    }
}

/// Decode one complete startup packet (length prefix included).
pub fn parse_startup(packet: &[u8]) -> Result<StartupPacket, ProtocolError> {
    let mut r = Reader::new(packet.get(4..).unwrap_or_default(), "startup");
    let code = r.i32()?;
    match code {
        SSL_REQUEST => r.finish().map(|()| StartupPacket::SslRequest),
        GSSENC_REQUEST => r.finish().map(|()| StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            let pid = r.i32()?;
            let secret = r.i32()?;
            r.finish()?;
            Ok(StartupPacket::Cancel { pid, secret })
        }
        _ => parse_params(code, &mut r).map(StartupPacket::Startup),
    }
}

fn parse_params(code: i32, r: &mut Reader<'_>) -> Result<StartupMessage, ProtocolError> {
    let version = code.cast_unsigned();
    let major = u16::try_from(version >> 16).unwrap_or(u16::MAX);
    let minor = u16::try_from(version & 0xffff).unwrap_or(u16::MAX);
    let mut params = Vec::new();
    if major != 3 {
        // Other versions are refused by the caller; their payload is not ours
        // to interpret.
        return Ok(StartupMessage {
            major,
            minor,
            params,
        });
    }
    loop {
        let key = r.cstr_utf8()?;
        if key.is_empty() {
            break;
        }
        let value = r.cstr_utf8()?;
        params.push((key.to_owned(), value.to_owned()));
    }
    r.finish()?;
    Ok(StartupMessage {
        major,
        minor,
        params,
    })
}

/// Encode a startup message (used towards backends and by tests).
pub fn encode_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&196_608_i32.to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    with_len(&body)
}

/// Encode a CancelRequest for a backend.
pub fn encode_cancel(pid: i32, secret: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&CANCEL_REQUEST.to_be_bytes());
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&secret.to_be_bytes());
    with_len(&body)
}

/// The 8-byte SSLRequest.
pub fn encode_ssl_request() -> Vec<u8> {
    with_len(&SSL_REQUEST.to_be_bytes())
}

fn with_len(body: &[u8]) -> Vec<u8> {
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Split `options` (libpq's `-c name=value` / `--name=value` list) into the
/// value of `byokpg.tenant`, if present, and the remaining options to forward.
pub fn take_tenant_option(options: &str) -> (Option<String>, String) {
    let words = split_options(options);
    let mut tenant = None;
    let mut keep: Vec<String> = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = &words[i];
        let (setting, used) = if w == "-c" && i + 1 < words.len() {
            (Some(words[i + 1].as_str()), 2)
        } else if let Some(s) = w.strip_prefix("--").or_else(|| w.strip_prefix("-c")) {
            (Some(s), 1)
        } else {
            (None, 1)
        };
        match setting.and_then(|s| s.split_once('=')) {
            Some((k, v)) if k.trim().eq_ignore_ascii_case("byokpg.tenant") => {
                tenant = Some(v.to_owned());
            }
            _ => keep.extend(words[i..i + used].iter().map(|s| escape_option(s))),
        }
        i += used;
    }
    (tenant, keep.join(" "))
}

/// libpq splits `options` on unescaped whitespace; `\` escapes the next char.
fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn escape_option(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c == '\\' || c.is_whitespace() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
