//! The tenant data key.

use std::fmt;

use zeroize::Zeroizing;

use super::CryptoError;

/// A 256-bit data encryption key, wiped from memory when dropped.
///
/// Deliberately not `Clone`: share it behind an `Arc` so exactly one copy
/// exists per cache entry and eviction really removes it.
pub struct Dek(Zeroizing<[u8; Dek::LEN]>);

impl Dek {
    /// Key length in bytes.
    pub const LEN: usize = 32;

    /// Take ownership of key bytes (the caller's array is moved in; wipe any
    /// other copy you made).
    pub fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copy key bytes from a slice, e.g. a KMS unwrap result.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != Self::LEN {
            return Err(CryptoError::KeyLength);
        }
        let mut key = Zeroizing::new([0u8; Self::LEN]);
        key.copy_from_slice(bytes);
        Ok(Self(key))
    }

    /// A fresh key from the OS RNG (for KMS providers without
    /// generate-data-key, and the local provider).
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; Self::LEN]);
        crate::protocol::scram::fill_random(&mut key[..]);
        Self(key)
    }

    /// The raw key, for wrapping by a KMS. Named so every use stands out in
    /// review: never log, format or persist the result.
    pub fn expose_secret(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for Dek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Dek(***)")
    }
}
