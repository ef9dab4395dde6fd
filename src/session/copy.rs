//! The data stream of a `COPY` on a protected table, rewritten row by row:
//! `FROM STDIN` rows get their protected fields encrypted (and the tenant
//! column checked or appended), `TO STDOUT` rows get them decrypted.
//!
//! Pure: no I/O. The relay feeds the payload of each CopyData message and
//! sends on what comes back. Rows may span CopyData messages, so a partial
//! row stays buffered until its line end arrives; only complete rows are
//! emitted. Parsing follows PostgreSQL's own COPY reader (copyfromparse.c)
//! so that byokpg and the server agree on where every row and field ends —
//! a disagreement could let plaintext reach a protected column.
//!
//! Assumes client_encoding UTF8 (or any encoding that never embeds ASCII
//! bytes in multi-byte characters), as the session enforces.

use std::ops::Range;

use memchr::{memchr, memchr2, memchr3};

use crate::protocol::PgError;
use crate::rewrite::plan::{CopyDirection, CopyFormat, CopyPlan, CopyTenant};
use crate::rewrite::{CryptoFailure, Need};

#[cfg(test)]
mod tests;

/// A buffered partial row longer than this is refused: a client that never
/// sends a line end must not grow the proxy's memory without bound.
pub const MAX_ROW: usize = 64 << 20;

/// Field encryption as COPY needs it: values in their text form.
pub trait FieldCrypto {
    /// Ciphertext of `plaintext` (text form: `byok1:...` for text columns,
    /// `\x<hex>` for bytea columns).
    fn encrypt_field(&mut self, column: usize, plaintext: &[u8]) -> Result<Vec<u8>, CryptoFailure>;
    /// Plaintext (text form) of a stored value in text form.
    fn decrypt_field(&mut self, column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure>;
    fn tenant(&self) -> &str;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// A key is missing; nothing was consumed: fetch it and feed again.
    #[error("byokpg: a tenant key is needed first ({0:?})")]
    Need(Need),
    /// Fail the COPY with this error (malformed data, wrong field count,
    /// another tenant's row, a value that fails to decrypt, ...).
    #[error("{}", .0.message)]
    Refuse(PgError),
}

impl From<CryptoFailure> for CopyError {
    fn from(f: CryptoFailure) -> Self {
        match f {
            CryptoFailure::Need(n) => Self::Need(n),
            CryptoFailure::Refuse(e) => Self::Refuse(e),
        }
    }
}

impl From<PgError> for CopyError {
    fn from(e: PgError) -> Self {
        Self::Refuse(e)
    }
}

#[derive(Debug, Clone, Copy)]
struct Csv {
    quote: u8,
    escape: u8,
}

/// The stream's syntax, as bytes (PostgreSQL requires one-byte options).
#[derive(Debug, Clone)]
struct Syntax {
    delimiter: u8,
    null: Vec<u8>,
    /// `None`: text format.
    csv: Option<Csv>,
}

/// How far the current (incomplete) line has been scanned, so a long row
/// arriving in many pieces is not rescanned from its start every time.
#[derive(Debug, Clone, Copy, Default)]
struct Scan {
    pos: usize,
    in_quote: bool,
    last_was_esc: bool,
}

/// Everything that changes as rows go by; restored as a whole on `Need`.
#[derive(Debug, Clone, Copy)]
struct State {
    scan: Scan,
    /// The header line is still to come.
    header: bool,
    /// The end-of-data marker `\.` was seen: the rest is dropped.
    ended: bool,
    /// Lines seen so far (error messages count from 1, like PostgreSQL).
    line: u64,
}

/// Where a complete line's content ends and the next line starts.
struct LineEnd {
    content: usize,
    next: usize,
}

/// One field of a row: its raw bytes and whether any part was quoted (CSV).
struct Field {
    raw: Range<usize>,
    quoted: bool,
}

pub struct CopyRewriter {
    direction: CopyDirection,
    syntax: Syntax,
    /// Catalog column per field; fields past the end are not protected.
    protect: Vec<Option<usize>>,
    /// Fields every client row must have (FROM only).
    expected: Option<usize>,
    force_not_null: Vec<usize>,
    force_null: Vec<usize>,
    tenant: Option<CopyTenant>,
    pending: Vec<u8>,
    state: State,
    /// Set once the stream was refused: every later call repeats the error.
    failed: Option<PgError>,
}

impl std::fmt::Debug for CopyRewriter {
    // Never the buffered data: it is plaintext of protected columns.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyRewriter")
            .field("direction", &self.direction)
            .field("pending_bytes", &self.pending.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl CopyRewriter {
    /// `columns`: the catalog column of each COPY field (same order as
    /// `plan.columns`), `None` = not protected. The caller must refuse the
    /// COPY before calling this if a protected column has no catalog entry.
    pub fn new(plan: &CopyPlan, columns: Vec<Option<usize>>) -> Self {
        let (syntax, header, failed) = match syntax(&plan.format) {
            Ok((s, h)) => (s, h, None),
            Err(e) => (
                Syntax {
                    delimiter: b'\t',
                    null: Vec::new(),
                    csv: None,
                },
                false,
                Some(e),
            ),
        };
        let tenant = plan
            .tenant
            .filter(|_| plan.direction == CopyDirection::FromStdin);
        let fill = tenant.is_some_and(|t| t.fill);
        let expected = (plan.direction == CopyDirection::FromStdin)
            .then(|| plan.columns.len().saturating_sub(usize::from(fill)));
        let from = plan.direction == CopyDirection::FromStdin;
        Self {
            direction: plan.direction,
            syntax,
            protect: columns,
            expected,
            force_not_null: if from {
                plan.force_not_null.clone()
            } else {
                Vec::new()
            },
            force_null: if from {
                plan.force_null.clone()
            } else {
                Vec::new()
            },
            tenant,
            pending: Vec::new(),
            state: State {
                scan: Scan::default(),
                header,
                ended: false,
                line: 0,
            },
            failed,
        }
    }

    /// Feed the payload of one CopyData message; returns the bytes to send
    /// on (empty while a row is incomplete). On `Need` nothing was consumed:
    /// fetch the key and call again with the same `data`.
    pub fn feed(
        &mut self,
        data: &[u8],
        crypto: &mut dyn FieldCrypto,
    ) -> Result<Vec<u8>, CopyError> {
        self.run(data, false, crypto)
    }

    /// At CopyDone: the last row if it lacks a line end, or an error if the
    /// stream ends inside a quoted field or an escape.
    pub fn finish(&mut self, crypto: &mut dyn FieldCrypto) -> Result<Vec<u8>, CopyError> {
        self.run(&[], true, crypto)
    }

    fn run(
        &mut self,
        data: &[u8],
        at_end: bool,
        crypto: &mut dyn FieldCrypto,
    ) -> Result<Vec<u8>, CopyError> {
        if let Some(e) = &self.failed {
            return Err(CopyError::Refuse(e.clone()));
        }
        if self.state.ended {
            // PostgreSQL ignores whatever follows `\.`; so does byokpg, and
            // it never forwards those bytes unencrypted.
            return Ok(Vec::new());
        }
        let kept = self.pending.len();
        self.pending.extend_from_slice(data);
        match self.drain(at_end, crypto) {
            Ok(out) => Ok(out),
            Err(CopyError::Need(n)) => {
                // Undo: the caller retries with the same input.
                self.pending.truncate(kept);
                Err(CopyError::Need(n))
            }
            Err(CopyError::Refuse(e)) => {
                self.pending.clear();
                self.failed = Some(e.clone());
                Err(CopyError::Refuse(e))
            }
        }
    }

    /// Rewrite every complete line in `pending`; commit the new state only
    /// when all of them succeeded.
    fn drain(&mut self, at_end: bool, crypto: &mut dyn FieldCrypto) -> Result<Vec<u8>, CopyError> {
        let mut out = Vec::new();
        let mut state = self.state;
        let mut start = 0;
        while !state.ended {
            let Some(end) = self.scan(&mut state.scan, state.line + 1)? else {
                break;
            };
            let line = &self.pending[start..end.content];
            let eol = &self.pending[end.content..end.next];
            self.line(line, eol, &mut state, crypto, &mut out)?;
            start = end.next;
            state.scan = Scan {
                pos: start,
                ..Scan::default()
            };
        }
        if state.ended {
            start = self.pending.len();
        } else if at_end && start < self.pending.len() {
            self.last_line(start, &mut state, crypto, &mut out)?;
            start = self.pending.len();
        } else if self.pending.len() - start > MAX_ROW {
            return Err(too_long().into());
        }
        self.pending.drain(..start);
        // Scan positions are buffer offsets; after `\.` or the last line
        // the buffer is empty and the position no longer matters.
        state.scan.pos = state.scan.pos.saturating_sub(start);
        self.state = state;
        Ok(out)
    }

    /// The stream ended without a final line end.
    fn last_line(
        &self,
        start: usize,
        state: &mut State,
        crypto: &mut dyn FieldCrypto,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyError> {
        let line = state.line + 1;
        if state.scan.in_quote {
            return Err(malformed(line, "unterminated CSV quoted field").into());
        }
        if state.scan.pos < self.pending.len() {
            // Stopped before a trailing backslash or carriage return.
            return Err(malformed(line, "the data ends inside an escape or line end").into());
        }
        self.line(&self.pending[start..], &[], state, crypto, out)
    }

    fn scan(&self, scan: &mut Scan, line: u64) -> Result<Option<LineEnd>, PgError> {
        match self.syntax.csv {
            None => scan_text(&self.pending, scan),
            Some(csv) => scan_csv(&self.pending, scan, csv),
        }
        .map_err(|why| malformed(line, why))
    }

    fn line(
        &self,
        line: &[u8],
        eol: &[u8],
        state: &mut State,
        crypto: &mut dyn FieldCrypto,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyError> {
        state.line += 1;
        if line == b"\\." {
            state.ended = true;
        } else if state.header {
            state.header = false;
        } else {
            self.row(line, state.line, crypto, out)?;
            out.extend_from_slice(eol);
            return Ok(());
        }
        out.extend_from_slice(line);
        out.extend_from_slice(eol);
        Ok(())
    }

    fn row(
        &self,
        line: &[u8],
        n: u64,
        crypto: &mut dyn FieldCrypto,
        out: &mut Vec<u8>,
    ) -> Result<(), CopyError> {
        let fields = self.split(line).map_err(|why| malformed(n, why))?;
        if let Some(want) = self.expected
            && fields.len() != want
        {
            let why = format!("the row has {} fields, expected {want}", fields.len());
            return Err(malformed(n, &why).into());
        }
        for (i, f) in fields.iter().enumerate() {
            if i > 0 {
                out.push(self.syntax.delimiter);
            }
            let raw = &line[f.raw.clone()];
            let null = self.is_null(i, raw, f.quoted);
            if self.tenant.is_some_and(|t| t.index == i && !t.fill) {
                self.check_tenant(raw, null, n, crypto.tenant())?;
            }
            match self.protect.get(i).copied().flatten() {
                Some(column) if !null => {
                    let value = self.convert(column, raw, (n, i), crypto)?;
                    self.encode(&value, fields.len(), out);
                }
                _ => out.extend_from_slice(raw),
            }
        }
        if self.tenant.is_some_and(|t| t.fill) {
            out.push(self.syntax.delimiter);
            self.encode(crypto.tenant().as_bytes(), fields.len() + 1, out);
        }
        Ok(())
    }

    /// Encrypt (FROM) or decrypt (TO) one non-NULL field.
    fn convert(
        &self,
        column: usize,
        raw: &[u8],
        (line, field): (u64, usize),
        crypto: &mut dyn FieldCrypto,
    ) -> Result<Vec<u8>, CopyError> {
        let value = self.decode(raw);
        Ok(match self.direction {
            CopyDirection::FromStdin => {
                // The server would reject these for a text column; once
                // encrypted it could not see them, so byokpg checks.
                if value.contains(&0) || std::str::from_utf8(&value).is_err() {
                    return Err(PgError::refused(
                        "22021",
                        format!(
                            "byokpg: COPY data, line {line}, field {}: invalid byte sequence for encoding \"UTF8\"",
                            field + 1
                        ),
                    )
                    .into());
                }
                crypto.encrypt_field(column, &value)?
            }
            CopyDirection::ToStdout => crypto.decrypt_field(column, &value)?,
        })
    }

    fn check_tenant(&self, raw: &[u8], null: bool, line: u64, tenant: &str) -> Result<(), PgError> {
        if !null && self.decode(raw) == tenant.as_bytes() {
            return Ok(());
        }
        Err(PgError::refused(
            "42501",
            format!(
                "byokpg: COPY data, line {line}: the row names another tenant; this connection writes only its own tenant's rows"
            ),
        ))
    }

    /// PostgreSQL's NULL rules: the raw text equals the NULL string (CSV:
    /// and no part was quoted), adjusted by FORCE_NOT_NULL / FORCE_NULL.
    fn is_null(&self, i: usize, raw: &[u8], quoted: bool) -> bool {
        if self.syntax.csv.is_none() {
            return raw == self.syntax.null.as_slice();
        }
        if self.force_not_null.contains(&i) {
            return false;
        }
        if !quoted && raw == self.syntax.null.as_slice() {
            return true;
        }
        self.force_null.contains(&i) && self.decode(raw) == self.syntax.null
    }

    fn split(&self, line: &[u8]) -> Result<Vec<Field>, &'static str> {
        match self.syntax.csv {
            None => split_text(line, self.syntax.delimiter),
            Some(csv) => split_csv(line, self.syntax.delimiter, csv),
        }
    }

    fn decode(&self, raw: &[u8]) -> Vec<u8> {
        match self.syntax.csv {
            None => decode_text(raw),
            Some(csv) => decode_csv(raw, self.syntax.delimiter, csv),
        }
    }

    fn encode(&self, value: &[u8], fields: usize, out: &mut Vec<u8>) {
        match self.syntax.csv {
            None => encode_text(value, self.syntax.delimiter, out),
            Some(csv) => encode_csv(value, &self.syntax, csv, fields == 1, out),
        }
    }
}

fn syntax(format: &CopyFormat) -> Result<(Syntax, bool), PgError> {
    let byte = |c: char| {
        u8::try_from(c).ok().filter(u8::is_ascii).ok_or_else(|| {
            PgError::not_supported(
                "byokpg: COPY delimiter, quote and escape must be single one-byte characters"
                    .to_owned(),
            )
        })
    };
    Ok(match format {
        CopyFormat::Text {
            delimiter,
            null,
            header,
        } => (
            Syntax {
                delimiter: byte(*delimiter)?,
                null: null.as_bytes().to_vec(),
                csv: None,
            },
            *header,
        ),
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            header,
        } => (
            Syntax {
                delimiter: byte(*delimiter)?,
                null: null.as_bytes().to_vec(),
                csv: Some(Csv {
                    quote: byte(*quote)?,
                    escape: byte(*escape)?,
                }),
            },
            *header,
        ),
    })
}

fn malformed(line: u64, why: &str) -> PgError {
    PgError::refused("22P04", format!("byokpg: COPY data, line {line}: {why}"))
}

fn too_long() -> PgError {
    PgError::refused(
        "54000",
        format!("byokpg: a COPY row is longer than {} MiB", MAX_ROW >> 20),
    )
}

// ------------------------------------------------------------ line ends

/// Text format: a line ends at a newline not escaped by a backslash
/// (`\r\n` accepted); a backslash always takes the next byte with it.
fn scan_text(buf: &[u8], scan: &mut Scan) -> Result<Option<LineEnd>, &'static str> {
    let mut i = scan.pos;
    while let Some(off) = memchr3(b'\\', b'\n', b'\r', &buf[i..]) {
        let at = i + off;
        match buf[at] {
            b'\\' if at + 1 < buf.len() => i = at + 2,
            b'\n' => return Ok(Some(line_end(at, 1))),
            b'\r' if at + 1 < buf.len() => return crlf(buf, at).map(Some),
            // A backslash or CR at the end: wait for the next byte.
            _ => {
                scan.pos = at;
                return Ok(None);
            }
        }
    }
    scan.pos = buf.len();
    Ok(None)
}

/// CSV: as PostgreSQL's CopyReadLineText, newlines inside quotes are data.
/// An escape distinct from the quote only matters inside quotes, before a
/// quote or another escape.
fn scan_csv(buf: &[u8], scan: &mut Scan, csv: Csv) -> Result<Option<LineEnd>, &'static str> {
    let esc = (csv.escape != csv.quote).then_some(csv.escape);
    let mut i = scan.pos;
    while i < buf.len() {
        let rest = &buf[i..];
        if scan.in_quote {
            let hit = match esc {
                Some(e) => memchr2(csv.quote, e, rest),
                None => memchr(csv.quote, rest),
            };
            let Some(off) = hit else {
                scan.last_was_esc = false;
                i = buf.len();
                break;
            };
            if off > 0 {
                scan.last_was_esc = false;
            }
            if Some(rest[off]) == esc {
                scan.last_was_esc = !scan.last_was_esc;
            } else {
                scan.in_quote = scan.last_was_esc;
                scan.last_was_esc = false;
            }
            i += off + 1;
            continue;
        }
        let Some(off) = memchr3(csv.quote, b'\n', b'\r', rest) else {
            i = buf.len();
            break;
        };
        let at = i + off;
        match buf[at] {
            b'\n' => return Ok(Some(line_end(at, 1))),
            b'\r' if at + 1 < buf.len() => return crlf(buf, at).map(Some),
            b'\r' => {
                scan.pos = at;
                return Ok(None);
            }
            _ => scan.in_quote = true,
        }
        i = at + 1;
    }
    scan.pos = i;
    Ok(None)
}

fn line_end(at: usize, len: usize) -> LineEnd {
    LineEnd {
        content: at,
        next: at + len,
    }
}

/// A carriage return must start `\r\n`: a bare one is how PostgreSQL's
/// old-Mac line ends look, which it accepts only if every line uses them;
/// byokpg refuses rather than guess.
fn crlf(buf: &[u8], at: usize) -> Result<LineEnd, &'static str> {
    if buf.get(at + 1) == Some(&b'\n') {
        Ok(line_end(at, 2))
    } else {
        Err("literal carriage return found in data (use \\r in text format, or quote it in CSV)")
    }
}

// ------------------------------------------------------------ text format

fn split_text(line: &[u8], delimiter: u8) -> Result<Vec<Field>, &'static str> {
    let mut fields = Vec::new();
    let (mut start, mut i) = (0, 0);
    while let Some(off) = memchr2(b'\\', delimiter, &line[i..]) {
        let at = i + off;
        if line[at] == b'\\' {
            if line.get(at + 1) == Some(&b'.') {
                // PostgreSQL reads `\.` as end of data (or a corrupt marker)
                // wherever it appears in text format.
                return Err("end-of-copy marker \\. inside a row");
            }
            i = (at + 2).min(line.len());
        } else {
            fields.push(Field {
                raw: start..at,
                quoted: false,
            });
            start = at + 1;
            i = start;
        }
    }
    fields.push(Field {
        raw: start..line.len(),
        quoted: false,
    });
    Ok(fields)
}

/// PostgreSQL's CopyReadAttributesText de-escaping.
fn decode_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(off) = memchr(b'\\', &raw[i..]) {
        out.extend_from_slice(&raw[i..i + off]);
        i += off + 1;
        let Some(&c) = raw.get(i) else {
            return out; // a lone trailing backslash is dropped
        };
        i += 1;
        let byte = match c {
            b'0'..=b'7' => {
                let mut v = c - b'0';
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v.wrapping_mul(8).wrapping_add(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                v
            }
            b'x' => match raw.get(i).and_then(|&h| hex_digit(h)) {
                Some(h) => {
                    i += 1;
                    match raw.get(i).and_then(|&h| hex_digit(h)) {
                        Some(l) => {
                            i += 1;
                            h * 16 + l
                        }
                        None => h,
                    }
                }
                None => b'x',
            },
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(byte);
    }
    out.extend_from_slice(&raw[i..]);
    out
}

fn hex_digit(h: u8) -> Option<u8> {
    char::from(h)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
}

/// PostgreSQL's CopyAttributeOutText escaping.
fn encode_text(value: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    out.reserve(value.len());
    for &c in value {
        let letter = match c {
            0x08 => Some(b'b'),
            0x0c => Some(b'f'),
            b'\n' => Some(b'n'),
            b'\r' => Some(b'r'),
            b'\t' => Some(b't'),
            0x0b => Some(b'v'),
            b'\\' => Some(b'\\'),
            c if c == delimiter => Some(c),
            _ => None,
        };
        match letter {
            Some(l) => out.extend_from_slice(&[b'\\', l]),
            None => out.push(c),
        }
    }
}

// ------------------------------------------------------------- CSV format

fn split_csv(line: &[u8], delimiter: u8, csv: Csv) -> Result<Vec<Field>, &'static str> {
    let mut fields = Vec::new();
    let mut start = 0;
    loop {
        let (end, quoted) = csv_field(line, start, delimiter, csv, |_| {})?;
        fields.push(Field {
            raw: start..end,
            quoted,
        });
        if end >= line.len() {
            return Ok(fields);
        }
        start = end + 1;
    }
}

fn decode_csv(raw: &[u8], delimiter: u8, csv: Csv) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    // `raw` holds no unquoted delimiter and its quotes are balanced (it was
    // split by the same rules), so neither can stop the parse early.
    let _ = csv_field(raw, 0, delimiter, csv, |c| out.push(c));
    out
}

/// PostgreSQL's CopyReadAttributesCSV for one field starting at `start`:
/// returns where it ends (at a delimiter or the line end) and whether any
/// part was quoted; `sink` receives the de-quoted bytes.
fn csv_field(
    line: &[u8],
    start: usize,
    delimiter: u8,
    csv: Csv,
    mut sink: impl FnMut(u8),
) -> Result<(usize, bool), &'static str> {
    let mut quoted = false;
    let mut i = start;
    loop {
        // Outside quotes.
        loop {
            let Some(&c) = line.get(i) else {
                return Ok((i, quoted));
            };
            if c == delimiter {
                return Ok((i, quoted));
            }
            i += 1;
            if c == csv.quote {
                quoted = true;
                break;
            }
            sink(c);
        }
        // Inside quotes.
        loop {
            let Some(&c) = line.get(i) else {
                return Err("unterminated CSV quoted field");
            };
            i += 1;
            if c == csv.escape
                && let Some(&next) = line.get(i)
                && (next == csv.escape || next == csv.quote)
            {
                sink(next);
                i += 1;
                continue;
            }
            if c == csv.quote {
                break;
            }
            sink(c);
        }
    }
}

/// PostgreSQL's CopyAttributeOutCSV: quote when the value holds the
/// delimiter, the quote or a line end, equals the NULL string, or is `\.`
/// alone on a line; inside quotes, quote and escape get the escape.
fn encode_csv(value: &[u8], syntax: &Syntax, csv: Csv, single: bool, out: &mut Vec<u8>) {
    let quote = value == syntax.null.as_slice()
        || (single && value == b"\\.")
        || value
            .iter()
            .any(|&c| c == syntax.delimiter || c == csv.quote || c == b'\n' || c == b'\r');
    if !quote {
        out.extend_from_slice(value);
        return;
    }
    out.reserve(value.len() + 2);
    out.push(csv.quote);
    for &c in value {
        if c == csv.quote || c == csv.escape {
            out.push(csv.escape);
        }
        out.push(c);
    }
    out.push(csv.quote);
}
