//! Decoders for the few messages the proxy inspects, and builders for the
//! messages it originates. Every decoder works on one isolated frame body
//! and fails (never panics) when the body is short or has trailing bytes.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// Bounded cursor over a message body.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Self { buf, what }
    }

    fn err(&self) -> ProtocolError {
        ProtocolError::Malformed(self.what)
    }

    /// A NUL-terminated string, returned without its terminator.
    pub fn cstr(&mut self) -> Result<&'a [u8], ProtocolError> {
        let end = memchr::memchr(0, self.buf).ok_or_else(|| self.err())?;
        let (s, rest) = self.buf.split_at(end);
        self.buf = &rest[1..];
        Ok(s)
    }

    pub fn cstr_utf8(&mut self) -> Result<&'a str, ProtocolError> {
        let s = self.cstr()?;
        std::str::from_utf8(s).map_err(|_| self.err())
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(self.err());
        }
        let (s, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(s)
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.bytes(1)?[0])
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A non-negative count (i16 on the wire).
    pub fn count16(&mut self) -> Result<usize, ProtocolError> {
        usize::try_from(self.i16()?).map_err(|_| self.err())
    }

    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Require that the body was consumed exactly.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.err())
        }
    }
}

/// `Parse`: statement name, SQL text, declared parameter type OIDs.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub sql: &'a [u8],
    pub param_types: Vec<u32>,
}

pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr()?;
    let sql = r.cstr()?;
    let n = r.count16()?;
    let mut param_types = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        param_types.push(r.i32()?.cast_unsigned());
    }
    r.finish()?;
    Ok(Parse {
        name,
        sql,
        param_types,
    })
}

/// The head of `Bind`: portal and statement names. The parameter values are
/// left undecoded; only statements that need rewriting decode them.
#[derive(Debug, PartialEq, Eq)]
pub struct BindHead<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
}

pub fn parse_bind_head(body: &[u8]) -> Result<BindHead<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    Ok(BindHead { portal, statement })
}

/// A fully decoded `Bind` (used on the slow path and by the fuzz tests).
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub param_formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub result_formats: Vec<i16>,
}

pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Bind");
    let portal = r.cstr()?;
    let statement = r.cstr()?;
    let param_formats = read_i16s(&mut r)?;
    let n = r.count16()?;
    let mut params = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = r.i32()?;
        params.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len.cast_unsigned() as usize)?)
        });
    }
    let result_formats = read_i16s(&mut r)?;
    r.finish()?;
    Ok(Bind {
        portal,
        statement,
        param_formats,
        params,
        result_formats,
    })
}

fn read_i16s(r: &mut Reader<'_>) -> Result<Vec<i16>, ProtocolError> {
    let n = r.count16()?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        v.push(r.i16()?);
    }
    Ok(v)
}

/// `Describe` / `Close`: kind (`S` statement or `P` portal) and name.
pub fn parse_target<'a>(
    body: &'a [u8],
    what: &'static str,
) -> Result<(u8, &'a [u8]), ProtocolError> {
    let mut r = Reader::new(body, what);
    let kind = r.u8()?;
    let name = r.cstr()?;
    r.finish()?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::Malformed(what));
    }
    Ok((kind, name))
}

/// `Execute`: portal name and row limit.
pub fn parse_execute(body: &[u8]) -> Result<(&[u8], i32), ProtocolError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr()?;
    let limit = r.i32()?;
    r.finish()?;
    Ok((portal, limit))
}

/// `Query`: the SQL text.
pub fn parse_query(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, "Query");
    let sql = r.cstr()?;
    r.finish()?;
    Ok(sql)
}

/// One column of a `RowDescription`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDesc {
    pub name: Vec<u8>,
    pub table_oid: u32,
    pub attnum: i16,
    pub type_oid: u32,
    pub type_len: i16,
    pub type_mod: i32,
    pub format: i16,
}

pub fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDesc>, ProtocolError> {
    let mut r = Reader::new(body, "RowDescription");
    let n = r.count16()?;
    let mut fields = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        fields.push(FieldDesc {
            name: r.cstr()?.to_vec(),
            table_oid: r.i32()?.cast_unsigned(),
            attnum: r.i16()?,
            type_oid: r.i32()?.cast_unsigned(),
            type_len: r.i16()?,
            type_mod: r.i32()?,
            format: r.i16()?,
        });
    }
    r.finish()?;
    Ok(fields)
}

/// The values of a `DataRow` (`None` = SQL NULL).
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    let mut r = Reader::new(body, "DataRow");
    let n = r.count16()?;
    let mut cols = Vec::with_capacity(n.min(1600));
    for _ in 0..n {
        let len = r.i32()?;
        cols.push(if len < 0 {
            None
        } else {
            Some(r.bytes(len.cast_unsigned() as usize)?)
        });
    }
    r.finish()?;
    Ok(cols)
}

/// Start a tagged message; `finish_msg` patches the length in.
pub fn begin_msg(out: &mut BytesMut, tag: u8) -> usize {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    start
}

pub fn finish_msg(out: &mut BytesMut, start: usize) {
    let len = i32::try_from(out.len() - start - 1).unwrap_or(i32::MAX);
    out[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// `AuthenticationOk` and friends: `R` + i32 code + payload.
pub fn auth_msg(out: &mut BytesMut, code: i32, payload: &[u8]) {
    let s = begin_msg(out, b'R');
    out.put_i32(code);
    out.put_slice(payload);
    finish_msg(out, s);
}

pub fn parameter_status(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    let s = begin_msg(out, b'S');
    put_cstr(out, name);
    put_cstr(out, value);
    finish_msg(out, s);
}

pub fn backend_key_data(out: &mut BytesMut, pid: i32, secret: i32) {
    let s = begin_msg(out, b'K');
    out.put_i32(pid);
    out.put_i32(secret);
    finish_msg(out, s);
}

pub fn ready_for_query(out: &mut BytesMut, status: u8) {
    let s = begin_msg(out, b'Z');
    out.put_u8(status);
    finish_msg(out, s);
}

/// Frontend messages the proxy originates towards a backend.
pub fn query(out: &mut BytesMut, sql: &[u8]) {
    let s = begin_msg(out, b'Q');
    put_cstr(out, sql);
    finish_msg(out, s);
}

pub fn parse(out: &mut BytesMut, name: &[u8], sql: &[u8], param_types: &[u32]) {
    let s = begin_msg(out, b'P');
    put_cstr(out, name);
    put_cstr(out, sql);
    out.put_i16(i16::try_from(param_types.len()).unwrap_or(i16::MAX));
    for t in param_types {
        out.put_u32(*t);
    }
    finish_msg(out, s);
}

/// `Bind` with no parameters and text results.
pub fn bind_empty(out: &mut BytesMut, portal: &[u8], statement: &[u8]) {
    let s = begin_msg(out, b'B');
    put_cstr(out, portal);
    put_cstr(out, statement);
    out.put_i16(0);
    out.put_i16(0);
    out.put_i16(0);
    finish_msg(out, s);
}

/// Re-encode a `Bind` (after parameters were replaced).
pub fn bind(out: &mut BytesMut, b: &Bind<'_>, params: &[Option<Vec<u8>>]) {
    let s = begin_msg(out, b'B');
    put_cstr(out, b.portal);
    put_cstr(out, b.statement);
    put_i16s(out, &b.param_formats);
    out.put_i16(i16::try_from(params.len()).unwrap_or(i16::MAX));
    for p in params {
        match p {
            Some(v) => {
                out.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
                out.put_slice(v);
            }
            None => out.put_i32(-1),
        }
    }
    put_i16s(out, &b.result_formats);
    finish_msg(out, s);
}

fn put_i16s(out: &mut BytesMut, v: &[i16]) {
    out.put_i16(i16::try_from(v.len()).unwrap_or(i16::MAX));
    for x in v {
        out.put_i16(*x);
    }
}

pub fn execute(out: &mut BytesMut, portal: &[u8], limit: i32) {
    let s = begin_msg(out, b'E');
    put_cstr(out, portal);
    out.put_i32(limit);
    finish_msg(out, s);
}

/// `NegotiateProtocolVersion`: newest minor we speak, and the `_pq_.`
/// options we did not recognise.
pub fn negotiate_protocol_version(out: &mut BytesMut, minor: i32, unknown: &[&[u8]]) {
    let s = begin_msg(out, b'v');
    out.put_i32(minor);
    out.put_i32(i32::try_from(unknown.len()).unwrap_or(i32::MAX));
    for o in unknown {
        put_cstr(out, o);
    }
    finish_msg(out, s);
}
