//! Field-encryption primitives: pure code, no I/O.
//!
//! A tenant's 256-bit data key ([`Dek`]) never encrypts a field directly. For
//! each (tenant, schema, table, column, mode) we derive a column key with
//! HKDF-SHA256 and build the cipher object once ([`FieldCipher`]); the caller
//! caches it, because building AES round keys and the GHASH/CMAC state on every
//! call would cost more than the encryption of a short field.
//!
//! Every envelope carries a 6-byte header (format, mode, DEK version) and is
//! authenticated together with the column's identity, so a value copied to
//! another column, table or tenant, or with an edited header, fails to decrypt.
//! docs/FORMAT.md documents the bytes; `tests.rs` checks the test vectors
//! printed there against this code.

mod dek;
mod envelope;
mod field;
mod text;

#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod vectors;

pub use dek::Dek;
pub use envelope::{
    EnvelopeHeader, FORMAT_VERSION, HEADER_LEN, MIN_DETERMINISTIC_ENVELOPE_LEN, MIN_ENVELOPE_LEN,
    MIN_RANDOMIZED_ENVELOPE_LEN, peek_header,
};
pub use field::{FieldCipher, HKDF_SALT};
pub use text::{
    TEXT_CIPHERTEXT_REGEX, TEXT_PREFIX, bytea_check_sql, decode_text, dek_version_sql,
    is_text_ciphertext, text_check_sql,
};

/// How a column is encrypted (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// AES-256-GCM with a random 96-bit nonce: equal plaintexts give
    /// different ciphertexts. No lookups possible.
    Randomized,
    /// AES-SIV (RFC 5297): equal plaintexts give equal ciphertexts within one
    /// tenant, column and DEK version, so `=`, `IN` and joins work.
    Deterministic,
}

impl Mode {
    /// The envelope's mode byte.
    pub const fn to_byte(self) -> u8 {
        match self {
            Mode::Randomized => 1,
            Mode::Deterministic => 2,
        }
    }

    /// Parse the envelope's mode byte.
    pub const fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Mode::Randomized),
            2 => Some(Mode::Deterministic),
            _ => None,
        }
    }

    /// The HKDF info label (docs/FORMAT.md "Key derivation").
    pub const fn kdf_label(self) -> &'static [u8] {
        match self {
            Mode::Randomized => b"rnd",
            Mode::Deterministic => b"det",
        }
    }

    /// The policy spelling (`randomized` / `deterministic`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Randomized => "randomized",
            Mode::Deterministic => "deterministic",
        }
    }
}

/// The identity a ciphertext is bound to: exact PostgreSQL names (no quoting,
/// no case folding — the caller resolves `Customers` vs `customers` first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ColumnId<'a> {
    pub tenant: &'a str,
    pub schema: &'a str,
    pub table: &'a str,
    pub column: &'a str,
}

impl ColumnId<'_> {
    /// Longest name (in bytes) the u16 length prefixes can carry. PostgreSQL
    /// identifiers stop at 63 bytes; tenant ids come from the config file.
    pub const MAX_NAME_LEN: usize = u16::MAX as usize;

    /// `tenant`, `schema`, `table`, `column`, each as u16 BE length + bytes.
    /// Shared by the HKDF info and the AEAD associated data; the length
    /// prefixes keep ("ab","c") and ("a","bc") apart.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        for name in [self.tenant, self.schema, self.table, self.column] {
            // The config validator bounds these; a longer name would make the
            // encoding ambiguous, so refuse it loudly rather than truncate.
            let len = u16::try_from(name.len()).unwrap_or_else(|_| {
                panic!(
                    "byokpg: a tenant/schema/table/column name is longer than {} bytes",
                    Self::MAX_NAME_LEN
                )
            });
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(name.as_bytes());
        }
    }
}

/// Why a field could not be decrypted or decoded. Never carries plaintext or
/// key bytes; the caller adds the column name and maps to SQLSTATE `XX001`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// Too short, unknown mode byte, bad `byok1:` prefix or bad base64.
    #[error("byokpg: malformed ciphertext envelope")]
    Malformed,
    /// The envelope's format byte is not one this build reads.
    #[error("byokpg: unsupported ciphertext format version {0}")]
    UnsupportedVersion(u8),
    /// The envelope is valid but of the other mode than the cipher asked.
    #[error("byokpg: ciphertext was written in the other encryption mode")]
    WrongMode,
    /// The envelope names a DEK version other than the cipher's; pick the key
    /// with [`peek_header`] first.
    #[error("byokpg: ciphertext is under DEK version {0}, not the version supplied")]
    WrongKeyVersion(u32),
    /// Tag check failed: tampered, or another tenant's, column's or key's.
    #[error("byokpg: ciphertext failed authentication (tampered, or another tenant's or column's)")]
    Authentication,
    /// A DEK of the wrong length was supplied.
    #[error("byokpg: a data key must be 32 bytes")]
    KeyLength,
}
