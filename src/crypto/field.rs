//! Per-column ciphers: key derivation, seal and open.

use std::fmt;
use std::sync::Mutex;

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, Key, KeyInit, Nonce};
use aes_siv::siv::Aes256Siv;
use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use super::envelope::{
    EnvelopeHeader, FORMAT_VERSION, GCM_NONCE_LEN, HEADER_LEN, TAG_LEN, associated_data,
    peek_header,
};
use super::text::{decode_text, encode_text};
use super::{ColumnId, CryptoError, Dek, Mode};

/// HKDF-SHA256 salt for column keys (docs/FORMAT.md "Key derivation").
pub const HKDF_SALT: &[u8] = b"byokpg-field-v1";

/// AES-SIV key: 32 bytes of CMAC key, then 32 bytes of CTR key (RFC 5297).
const SIV_KEY_LEN: usize = 64;
const GCM_KEY_LEN: usize = 32;

/// Encrypts and decrypts one column of one tenant under one DEK version.
///
/// Build it once per (tenant, column, DEK version) and share it (`Send +
/// Sync`); every method takes `&self`.
pub struct FieldCipher {
    header: EnvelopeHeader,
    /// Full associated data; fixed for this cipher because the header is.
    aad: Box<[u8]>,
    engine: Engine,
}

enum Engine {
    Gcm(Box<Aes256Gcm>),
    Siv(Box<SivEngine>),
}

/// `Aes256Siv` needs `&mut self` (its CMAC state is reused), so one prepared
/// instance sits behind a mutex. A thread that finds it busy builds a
/// throw-away instance from the key instead of waiting: contention never
/// serializes the connections, it only costs the key schedule.
struct SivEngine {
    key: Zeroizing<[u8; SIV_KEY_LEN]>,
    prepared: Mutex<Aes256Siv>,
}

impl SivEngine {
    fn new(key: Zeroizing<[u8; SIV_KEY_LEN]>) -> Self {
        let prepared = Mutex::new(Self::build(&key));
        Self { key, prepared }
    }

    fn build(key: &[u8; SIV_KEY_LEN]) -> Aes256Siv {
        Aes256Siv::new(key.into())
    }

    fn with<R>(&self, f: impl FnOnce(&mut Aes256Siv) -> R) -> R {
        match self.prepared.try_lock() {
            Ok(mut siv) => f(&mut siv),
            Err(_) => f(&mut Self::build(&self.key)),
        }
    }
}

impl FieldCipher {
    /// Derive the column key from `dek` and build the cipher.
    ///
    /// # Panics
    /// If a name in `col` is longer than [`ColumnId::MAX_NAME_LEN`] bytes
    /// (the config validator rejects such names first).
    pub fn new(dek: &Dek, dek_version: u32, col: &ColumnId<'_>, mode: Mode) -> Self {
        let header = EnvelopeHeader {
            format: FORMAT_VERSION,
            mode,
            dek_version,
        };
        let engine = match mode {
            Mode::Randomized => {
                let mut key = Zeroizing::new([0u8; GCM_KEY_LEN]);
                derive_column_key(dek, col, mode, &mut key[..]);
                let key: &Key<Aes256Gcm> = (&*key).into();
                Engine::Gcm(Box::new(Aes256Gcm::new(key)))
            }
            Mode::Deterministic => {
                let mut key = Zeroizing::new([0u8; SIV_KEY_LEN]);
                derive_column_key(dek, col, mode, &mut key[..]);
                Engine::Siv(Box::new(SivEngine::new(key)))
            }
        };
        Self {
            header,
            aad: associated_data(header, col).into_boxed_slice(),
            engine,
        }
    }

    pub fn mode(&self) -> Mode {
        self.header.mode
    }

    pub fn dek_version(&self) -> u32 {
        self.header.dek_version
    }

    /// Encrypt to the binary envelope (what a `bytea` column stores).
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        match &self.engine {
            Engine::Gcm(gcm) => {
                let nonce = random_nonce();
                self.seal_gcm(gcm, &nonce, plaintext)
            }
            Engine::Siv(siv) => self.seal_siv(siv, plaintext),
        }
    }

    /// Encrypt to the text form `byok1:<base64>` (what a text column stores).
    pub fn encrypt_text(&self, plaintext: &[u8]) -> String {
        encode_text(&self.encrypt(plaintext))
    }

    /// Randomized mode with a caller-chosen nonce, for the documented test
    /// vector only. Reusing a nonce under one key breaks AES-GCM; production
    /// code calls [`FieldCipher::encrypt`]. `None` for a deterministic cipher.
    #[doc(hidden)]
    pub fn encrypt_with_nonce(&self, nonce: &[u8; 12], plaintext: &[u8]) -> Option<Vec<u8>> {
        match &self.engine {
            Engine::Gcm(gcm) => Some(self.seal_gcm(gcm, nonce, plaintext)),
            Engine::Siv(_) => None,
        }
    }

    /// Decrypt a binary envelope. The plaintext is wiped when dropped.
    pub fn decrypt(&self, envelope: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let header = peek_header(envelope)?;
        if header.mode != self.header.mode {
            return Err(CryptoError::WrongMode);
        }
        if header.dek_version != self.header.dek_version {
            return Err(CryptoError::WrongKeyVersion(header.dek_version));
        }
        // peek_header checked the mode's minimum length, so the splits hold.
        let body = &envelope[HEADER_LEN..];
        match &self.engine {
            Engine::Gcm(gcm) => self.open_gcm(gcm, body),
            Engine::Siv(siv) => self.open_siv(siv, body),
        }
    }

    /// Decrypt the text form `byok1:<base64>`.
    pub fn decrypt_text(&self, stored: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.decrypt(&decode_text(stored)?)
    }

    fn seal_gcm(&self, gcm: &Aes256Gcm, nonce: &[u8; 12], plaintext: &[u8]) -> Vec<u8> {
        // Exact capacity: no reallocation may leave a plaintext copy behind.
        let mut out = Vec::with_capacity(HEADER_LEN + GCM_NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(nonce);
        out.extend_from_slice(plaintext);
        let nonce: &Nonce<Aes256Gcm> = nonce.into();
        let body = &mut out[HEADER_LEN + GCM_NONCE_LEN..];
        // Fails only above 64 GiB of plaintext; a PostgreSQL message is < 1 GiB.
        #[allow(clippy::expect_used)]
        let tag = gcm
            .encrypt_inout_detached(nonce, &self.aad, body.into())
            .expect("AES-GCM plaintext limit is 64 GiB");
        out.extend_from_slice(&tag);
        out
    }

    fn open_gcm(&self, gcm: &Aes256Gcm, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (nonce, rest) = body
            .split_first_chunk::<GCM_NONCE_LEN>()
            .ok_or(CryptoError::Malformed)?;
        let (ciphertext, tag) = rest
            .split_last_chunk::<TAG_LEN>()
            .ok_or(CryptoError::Malformed)?;
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        // AES-GCM checks the tag before decrypting: on failure `plain` still
        // holds ciphertext.
        gcm.decrypt_inout_detached(
            nonce.into(),
            &self.aad,
            plain.as_mut_slice().into(),
            tag.into(),
        )
        .map_err(|_| CryptoError::Authentication)?;
        Ok(plain)
    }

    fn seal_siv(&self, siv: &SivEngine, plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + TAG_LEN + plaintext.len());
        out.extend_from_slice(&self.header.to_bytes());
        out.extend_from_slice(&[0u8; TAG_LEN]);
        out.extend_from_slice(plaintext);
        let body = &mut out[HEADER_LEN + TAG_LEN..];
        // S2V with one associated-data component: fails only with > 126.
        #[allow(clippy::expect_used)]
        let tag = siv
            .with(|s| s.encrypt_inout_detached([&self.aad[..]], body.into()))
            .expect("AES-SIV accepts one header");
        out[HEADER_LEN..HEADER_LEN + TAG_LEN].copy_from_slice(&tag);
        out
    }

    fn open_siv(&self, siv: &SivEngine, body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (tag, ciphertext) = body
            .split_first_chunk::<TAG_LEN>()
            .ok_or(CryptoError::Malformed)?;
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        // On failure aes-siv re-encrypts the buffer, and Zeroizing wipes it.
        siv.with(|s| {
            s.decrypt_inout_detached([&self.aad[..]], plain.as_mut_slice().into(), tag.into())
        })
        .map_err(|_| CryptoError::Authentication)?;
        Ok(plain)
    }
}

/// Random bytes fetched from the OS in blocks: one `getrandom` call per
/// 85 nonces instead of one per write (a syscall costs more than sealing a
/// short field). Per thread, each byte handed out once. Nonces need only be
/// unique, not secret; byokpg never forks, so no two processes share a block.
const NONCE_BLOCK: usize = 85 * GCM_NONCE_LEN;

struct NonceBlock {
    bytes: [u8; NONCE_BLOCK],
    used: usize,
}

thread_local! {
    static NONCES: std::cell::RefCell<NonceBlock> = const {
        std::cell::RefCell::new(NonceBlock { bytes: [0; NONCE_BLOCK], used: NONCE_BLOCK })
    };
}

fn random_nonce() -> [u8; GCM_NONCE_LEN] {
    NONCES.with_borrow_mut(|block| {
        if block.used + GCM_NONCE_LEN > NONCE_BLOCK {
            crate::protocol::scram::fill_random(&mut block.bytes);
            block.used = 0;
        }
        let mut nonce = [0u8; GCM_NONCE_LEN];
        let taken = &mut block.bytes[block.used..block.used + GCM_NONCE_LEN];
        nonce.copy_from_slice(taken);
        // Wipe what was handed out so no later bug can hand it out twice.
        taken.fill(0);
        block.used += GCM_NONCE_LEN;
        nonce
    })
}

/// HKDF-SHA256(salt = [`HKDF_SALT`], ikm = DEK, info = mode label ||
/// length-prefixed tenant, schema, table, column) → `out.len()` bytes.
pub(crate) fn derive_column_key(dek: &Dek, col: &ColumnId<'_>, mode: Mode, out: &mut [u8]) {
    let mut info = Vec::with_capacity(3 + 8 + 4 * 64);
    info.extend_from_slice(mode.kdf_label());
    col.encode_into(&mut info);
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), dek.expose_secret());
    // HKDF-SHA256 expands up to 8160 bytes; we ask for 32 or 64.
    #[allow(clippy::expect_used)]
    hk.expand(&info, out).expect("HKDF output length in range");
}

impl fmt::Debug for FieldCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldCipher")
            .field("mode", &self.header.mode)
            .field("dek_version", &self.header.dek_version)
            .finish_non_exhaustive()
    }
}
