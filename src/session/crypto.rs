//! A session's view of its tenant's keys: field ciphers per (protected
//! column, DEK version), valid only while the DEK is in the key cache, so
//! eviction and the TTL take effect on open sessions too.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use bytes::{BufMut, BytesMut};

use crate::catalog::{Catalog, ProtectedColumn};
use crate::config::ColumnMode;
use crate::crypto::{self, ColumnId, Dek, FieldCipher, Mode};
use crate::keys::{KeyManager, LiveVersions};
use crate::protocol::{PgError, messages};
use crate::rewrite::{CryptoFailure, Need, RowHook};
use crate::session::registry::RowMarks;

struct Cached {
    dek: Weak<Dek>,
    cipher: FieldCipher,
}

pub struct SessionCrypto {
    tenant: String,
    keys: Arc<KeyManager>,
    catalog: Arc<Catalog>,
    ciphers: HashMap<(usize, u32), Cached>,
    /// The active and live DEK versions, re-read every
    /// `ACTIVE_RECHECK` so a rotation reaches open sessions too.
    versions: Option<LiveVersions>,
    /// The column whose value asked for the key being fetched: an unknown
    /// DEK version then means "not this tenant's value", XX001 naming it.
    needed_for: Option<usize>,
}

impl SessionCrypto {
    pub fn new(tenant: &str, keys: Arc<KeyManager>, catalog: Arc<Catalog>) -> Self {
        Self {
            tenant: tenant.to_owned(),
            keys,
            catalog,
            ciphers: HashMap::new(),
            versions: None,
            needed_for: None,
        }
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn set_catalog(&mut self, catalog: Arc<Catalog>) {
        self.ciphers.clear();
        self.catalog = catalog;
    }

    /// Fetch what a `Need` asked for (KMS call or cache), then the caller retries.
    pub async fn fetch(&mut self, need: Need) -> Result<(), PgError> {
        let r = match need {
            Need::ActiveKey => self.keys.active(&self.tenant).await.map(|(v, _)| {
                self.versions = Some(v);
            }),
            Need::Key(v) => self.keys.dek(&self.tenant, v).await.map(|_| ()),
        };
        let needed_for = self.needed_for.take();
        r.map_err(|e| match (&e, needed_for.and_then(|c| self.catalog.columns.get(c))) {
            (crate::keys::KeyError::UnknownVersion { .. }, Some(col)) => data_corrupted(
                col,
                "its data key version does not exist for this tenant (another tenant's value, or altered)",
            ),
            _ => key_error(&e),
        })
    }

    fn cipher(&mut self, column: usize, version: u32) -> Result<&FieldCipher, CryptoFailure> {
        let Some(dek) = self.keys.cache().get(&self.tenant, version) else {
            self.needed_for = Some(column);
            return Err(CryptoFailure::Need(Need::Key(version)));
        };
        let fresh = self
            .ciphers
            .get(&(column, version))
            .is_some_and(|c| Weak::ptr_eq(&c.dek, &Arc::downgrade(&dek)));
        if !fresh {
            let col = self.column(column)?;
            let id = ColumnId {
                tenant: &self.tenant,
                schema: &col.schema,
                table: &col.table,
                column: &col.column,
            };
            let cipher = FieldCipher::new(&dek, version, &id, mode(col.mode));
            self.ciphers.insert(
                (column, version),
                Cached {
                    dek: Arc::downgrade(&dek),
                    cipher,
                },
            );
        }
        self.ciphers
            .get(&(column, version))
            .map(|c| &c.cipher)
            .ok_or_else(|| CryptoFailure::Refuse(PgError::internal("cipher cache")))
    }

    fn column(&self, column: usize) -> Result<&ProtectedColumn, CryptoFailure> {
        self.catalog
            .columns
            .get(column)
            .ok_or_else(|| CryptoFailure::Refuse(PgError::internal("unknown protected column")))
    }

    /// The tenant's versions, fresh (at most `ACTIVE_RECHECK` old): from
    /// this session, else from the key manager, else `Need::ActiveKey`.
    fn versions(&mut self) -> Result<&LiveVersions, CryptoFailure> {
        let now = Instant::now();
        if !self.versions.as_ref().is_some_and(|v| v.fresh(now)) {
            self.versions = Some(
                self.keys
                    .live_versions(&self.tenant)
                    .ok_or(CryptoFailure::Need(Need::ActiveKey))?,
            );
        }
        self.versions
            .as_ref()
            .ok_or(CryptoFailure::Need(Need::ActiveKey))
    }

    fn active_cipher(&mut self, column: usize) -> Result<&FieldCipher, CryptoFailure> {
        let v = self.versions()?.active;
        if self.keys.cache().get(&self.tenant, v).is_none() {
            // The active DEK expired: ask again (the version may have changed).
            self.versions = None;
            return Err(CryptoFailure::Need(Need::ActiveKey));
        }
        self.cipher(column, v)
    }

    /// A literal of `value` for `column` under DEK `version`.
    fn literal_under(
        &mut self,
        column: usize,
        value: &str,
        version: Option<u32>,
    ) -> Result<String, CryptoFailure> {
        let plain_bytea = if self.column(column)?.is_bytea {
            Some(self.bytea_input(column, value.as_bytes())?)
        } else {
            None
        };
        let cipher = match version {
            Some(v) => self.cipher(column, v)?,
            None => self.active_cipher(column)?,
        };
        count(cipher.mode(), true);
        Ok(match plain_bytea {
            Some(plain) => format!(
                "'{}'::bytea",
                String::from_utf8_lossy(&encode_bytea_text(&cipher.encrypt(&plain)))
            ),
            None => format!("'{}'", cipher.encrypt_text(value.as_bytes())),
        })
    }

    /// Ciphertext of a bound value under DEK `version` (`None` = active),
    /// in the value's own wire format.
    fn param_under(
        &mut self,
        column: usize,
        value: &[u8],
        binary: bool,
        version: Option<u32>,
    ) -> Result<Vec<u8>, CryptoFailure> {
        let is_bytea = self.column(column)?.is_bytea;
        let plain_bytea = if is_bytea && !binary {
            Some(self.bytea_input(column, value)?)
        } else {
            None
        };
        let cipher = match version {
            Some(v) => self.cipher(column, v)?,
            None => self.active_cipher(column)?,
        };
        count(cipher.mode(), true);
        Ok(match (is_bytea, plain_bytea) {
            (true, Some(plain)) => encode_bytea_text(&cipher.encrypt(&plain)),
            (true, None) => cipher.encrypt(value),
            (false, _) => cipher.encrypt_text(value).into_bytes(),
        })
    }

    /// Live versions, newest first (a copy: the ciphers borrow `self`).
    fn live(&mut self) -> Result<Arc<[u32]>, CryptoFailure> {
        let v = self.versions()?.active;
        if self.keys.cache().get(&self.tenant, v).is_none() {
            self.versions = None;
            return Err(CryptoFailure::Need(Need::ActiveKey));
        }
        Ok(Arc::clone(&self.versions()?.live))
    }

    /// Decrypt one stored value of `column` (wire format: text or binary).
    fn decrypt_value(
        &mut self,
        column: usize,
        stored: &[u8],
        binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure> {
        let is_bytea = self.column(column)?.is_bytea;
        let envelope = match (is_bytea, binary) {
            (true, true) => Some(stored.to_vec()),
            (true, false) => decode_bytea_text(stored),
            (false, _) => crypto::decode_text(stored).ok(),
        };
        let Some(envelope) = envelope else {
            return Err(self.corrupt(column, "not byokpg ciphertext"));
        };
        let Ok(header) = crypto::peek_header(&envelope) else {
            return Err(self.corrupt(column, "malformed envelope"));
        };
        let cipher = self.cipher(column, header.dek_version)?;
        count(cipher.mode(), false);
        let Ok(plain) = cipher.decrypt(&envelope) else {
            let why = "authentication failed (tampered, moved, or another tenant's value)";
            return Err(self.corrupt(column, why));
        };
        Ok(if is_bytea && !binary {
            encode_bytea_text(&plain)
        } else {
            plain.to_vec()
        })
    }

    /// XX001 naming the column (built only when a value fails).
    fn corrupt(&self, column: usize, why: &str) -> CryptoFailure {
        match self.column(column) {
            Ok(col) => CryptoFailure::Refuse(data_corrupted(col, why)),
            Err(e) => e,
        }
    }

    /// Plaintext of a bytea value in text form (`\x..` or escape format);
    /// invalid input is refused as PostgreSQL would (22P02).
    fn bytea_input(&self, column: usize, value: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        decode_bytea_text(value).ok_or_else(|| match self.column(column) {
            Ok(col) => invalid_bytea(col),
            Err(e) => e,
        })
    }
}

impl RowHook for SessionCrypto {
    fn rewrite_row(
        &mut self,
        marks: &RowMarks,
        binary: &[bool],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CryptoFailure> {
        let values = messages::parse_data_row(body)
            .map_err(|_| CryptoFailure::Refuse(PgError::internal("malformed DataRow")))?;
        let mut row = BytesMut::with_capacity(body.len() + 32);
        let start = messages::begin_msg(&mut row, b'D');
        row.put_i16(i16::try_from(values.len()).unwrap_or(i16::MAX));
        for (i, v) in values.iter().enumerate() {
            let mark = marks.marks.get(i).and_then(Option::as_ref);
            match (v, mark) {
                (Some(stored), Some(m)) => {
                    let plain = self.decrypt_value(
                        m.column,
                        stored,
                        binary.get(i).copied().unwrap_or(false),
                    )?;
                    row.put_i32(i32::try_from(plain.len()).unwrap_or(i32::MAX));
                    row.put_slice(&plain);
                }
                (Some(raw), None) => {
                    row.put_i32(i32::try_from(raw.len()).unwrap_or(i32::MAX));
                    row.put_slice(raw);
                }
                (None, _) => row.put_i32(-1),
            }
        }
        messages::finish_msg(&mut row, start);
        out.extend_from_slice(&row);
        Ok(())
    }

    fn encrypt_literal(&mut self, column: usize, value: &str) -> Result<String, CryptoFailure> {
        self.literal_under(column, value, None)
    }

    fn encrypt_param(
        &mut self,
        column: usize,
        value: &[u8],
        binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure> {
        self.param_under(column, value, binary, None)
    }

    fn encrypt_compare_literal(
        &mut self,
        column: usize,
        value: &str,
    ) -> Result<Vec<String>, CryptoFailure> {
        let live = self.live()?;
        live.iter()
            .map(|v| self.literal_under(column, value, Some(*v)))
            .collect()
    }

    fn encrypt_compare_param(
        &mut self,
        column: usize,
        value: &[u8],
        binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure> {
        let live = self.live()?;
        let is_bytea = self.column(column)?.is_bytea;
        if !is_bytea {
            // Text ciphertext has no comma: `string_to_array($n, ',')`.
            let mut out = Vec::new();
            for (i, v) in live.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(self.param_under(column, value, true, Some(*v))?);
            }
            return Ok(out);
        }
        // bytea: a count byte, then the envelopes, all of one length (same
        // plaintext, same mode); the SQL side cuts them apart.
        let plain = if binary {
            value.to_vec()
        } else {
            self.bytea_input(column, value)?
        };
        let mut out = vec![u8::try_from(live.len()).unwrap_or(u8::MAX)];
        for v in live.iter().take(usize::from(u8::MAX)) {
            out.extend(self.param_under(column, &plain, true, Some(*v))?);
        }
        Ok(if binary { out } else { encode_bytea_text(&out) })
    }

    fn live_versions(&mut self) -> Result<Vec<u32>, CryptoFailure> {
        self.live().map(|l| l.to_vec())
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn decrypt_field(&mut self, column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        self.decrypt_value(column, stored, false)
    }
}

/// Count one field operation (cached handles: cheap per field).
fn count(mode: Mode, encrypt: bool) {
    let m = crate::metrics::CryptoMetrics::get();
    let c = match (mode, encrypt) {
        (Mode::Randomized, true) => &m.encrypt_randomized,
        (Mode::Deterministic, true) => &m.encrypt_deterministic,
        (Mode::Randomized, false) => &m.decrypt_randomized,
        (Mode::Deterministic, false) => &m.decrypt_deterministic,
    };
    c.increment(1);
}

fn mode(m: ColumnMode) -> Mode {
    match m {
        ColumnMode::Deterministic => Mode::Deterministic,
        ColumnMode::Randomized => Mode::Randomized,
    }
}

/// bytea text input as PostgreSQL's `byteain` reads it: `\x` + hex, or the
/// escape format (`\\` is a backslash, `\ooo` an octal byte, anything else
/// literal). `None` = invalid input.
fn decode_bytea_text(s: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex_part) = s.strip_prefix(b"\\x") {
        let compact: Vec<u8> = hex_part
            .iter()
            .copied()
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        return hex::decode(compact).ok();
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(s[i]);
            i += 1;
        } else if s.get(i + 1) == Some(&b'\\') {
            out.push(b'\\');
            i += 2;
        } else {
            let oct = s.get(i + 1..i + 4)?;
            if !(b'0'..=b'3').contains(&oct[0])
                || !oct[1..].iter().all(|d| (b'0'..=b'7').contains(d))
            {
                return None;
            }
            out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
            i += 4;
        }
    }
    Some(out)
}

fn invalid_bytea(col: &ProtectedColumn) -> CryptoFailure {
    CryptoFailure::Refuse(PgError::refused(
        "22P02",
        format!(
            "byokpg: invalid input syntax for type bytea in {}.{}.{}",
            col.schema, col.table, col.column
        ),
    ))
}

fn encode_bytea_text(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + b.len() * 2);
    out.extend_from_slice(b"\\x");
    out.extend_from_slice(hex::encode(b).as_bytes());
    out
}

/// XX001 naming the column, never the value.
pub fn data_corrupted(col: &ProtectedColumn, why: &str) -> PgError {
    PgError::data_corrupted(format!(
        "byokpg: cannot decrypt {}.{}.{}: {why}",
        col.schema, col.table, col.column
    ))
}

/// 58000 / 58030 / 08006 from the key manager, with its hint.
pub fn key_error(e: &crate::keys::KeyError) -> PgError {
    PgError::key_unavailable(e.sqlstate(), e.to_string()).with_hint(e.hint())
}

#[cfg(test)]
mod tests {
    use super::decode_bytea_text;

    #[test]
    fn bytea_input_in_hex_and_escape_formats() {
        assert_eq!(decode_bytea_text(b"\\x00ff"), Some(vec![0, 255]));
        assert_eq!(
            decode_bytea_text(b"a\\000b\\\\c"),
            Some(b"a\0b\\c".to_vec())
        );
        assert_eq!(decode_bytea_text(b"plain"), Some(b"plain".to_vec()));
        assert_eq!(decode_bytea_text(b"bad\\9"), None);
        assert_eq!(decode_bytea_text(b"\\xzz"), None);
    }
}
