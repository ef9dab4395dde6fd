//! The `local` provider: a 256-bit KEK in a file of 64 hex characters.
//! Development only — anyone who can read the file can unwrap every DEK —
//! so it is refused unless `allow_insecure_local = true`.
//!
//! A tenant's `key` is a label bound into the wrapping as associated data,
//! so a DEK wrapped for one label does not unwrap under another:
//!
//! ```text
//! wrapped = 0x01 ‖ nonce (12 bytes) ‖ AES-256-GCM(KEK, DEK, aad) (32 + 16 bytes)
//! aad     = "byokpg-local-v1\0" ‖ label
//! ```
//!
//! Signing keys are Ed25519, seeded by
//! HKDF-SHA256(salt = "", ikm = KEK, info = "byokpg-local-sign-v1\0" ‖ label).
//!
//! The file is checked on every call and re-read when it changed (mtime,
//! size or inode), so replacing or deleting it acts like a revocation: a
//! deleted file gives `KeyDestroyed`, another KEK gives `AccessDenied`.
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use ring::{hkdf, rand::SecureRandom as _};
use zeroize::Zeroizing;

use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::KmsConfig;
use crate::crypto::Dek;

/// First byte of every wrapped key; bump when the layout changes.
pub const WRAP_VERSION: u8 = 1;
/// Associated-data prefix of the wrapping (followed by the label).
pub const WRAP_AAD_PREFIX: &[u8] = b"byokpg-local-v1\0";
/// HKDF info prefix of the signing seed (followed by the label).
pub const SIGN_INFO_PREFIX: &[u8] = b"byokpg-local-sign-v1\0";
/// The `algorithm` of local signatures.
pub const SIGN_ALGORITHM: &str = "ed25519";
/// Length of a wrapped DEK: version, nonce, ciphertext, tag.
pub const WRAPPED_LEN: usize = 1 + NONCE_LEN + Dek::LEN + 16; // 16: the GCM tag

type Kek = Zeroizing<[u8; 32]>;

/// What identifies one version of the key file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

struct Loaded {
    stamp: FileStamp,
    kek: Kek,
}

/// The local, file-based KMS.
pub struct LocalKms {
    path: PathBuf,
    loaded: Mutex<Option<Loaded>>,
}

impl fmt::Debug for LocalKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalKms")
            .field("key_file", &self.path)
            .finish_non_exhaustive()
    }
}

impl LocalKms {
    /// Checks the settings (again: config validation already did) without
    /// reading the file, so a missing file is a per-tenant key error at use
    /// rather than a refusal to start.
    pub fn from_config(cfg: &KmsConfig) -> Result<Self, KmsError> {
        if !cfg.allow_insecure_local {
            return Err(KmsError::Config(
                "the local provider is for development only; set allow_insecure_local = true"
                    .to_owned(),
            ));
        }
        let path = cfg
            .key_file
            .clone()
            .ok_or_else(|| KmsError::Config("the local provider needs `key_file`".to_owned()))?;
        Ok(Self::open(path))
    }

    /// A local KMS on `path`, without the `allow_insecure_local` check (tests,
    /// `demo`).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            loaded: Mutex::new(None),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current KEK, re-read when the file changed since the last call.
    fn kek(&self) -> Result<Kek, KmsError> {
        let stamp = stamp(&self.path)?;
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = loaded.as_ref().filter(|l| l.stamp == stamp) {
            return Ok(l.kek.clone());
        }
        let kek = read_kek(&self.path)?;
        *loaded = Some(Loaded {
            stamp,
            kek: kek.clone(),
        });
        Ok(kek)
    }

    pub fn generate_data_key(&self, label: &str) -> Result<DataKey, KmsError> {
        let plaintext = Dek::generate();
        let wrapped = self.wrap(label, &plaintext)?;
        Ok(DataKey { plaintext, wrapped })
    }

    pub fn wrap(&self, label: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        let key = aead_key(&self.kek()?)?;
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| KmsError::Unavailable("the OS random generator failed".to_owned()))?;
        let mut out = Vec::with_capacity(WRAPPED_LEN);
        out.push(WRAP_VERSION);
        out.extend_from_slice(&nonce);
        // Room for the tag up front: a reallocation while appending it would
        // leave a plaintext copy of the DEK in freed memory.
        let mut body = Zeroizing::new(Vec::with_capacity(Dek::LEN + AES_256_GCM.tag_len()));
        body.extend_from_slice(dek.expose_secret());
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(label)),
            &mut *body,
        )
        .map_err(|_| KmsError::Config("local wrapping failed".to_owned()))?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    pub fn unwrap(&self, label: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        let denied =
            |why: &str| KmsError::AccessDenied(format!("local KEK cannot unwrap this DEK{why}"));
        if wrapped.len() != WRAPPED_LEN || wrapped[0] != WRAP_VERSION {
            return Err(denied(": not a DEK wrapped by the local provider"));
        }
        let key = aead_key(&self.kek()?)?;
        let (nonce, body) = wrapped[1..].split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| denied(""))?;
        let mut buf = Zeroizing::new(body.to_vec());
        let plain = key
            .open_in_place(nonce, Aad::from(aad(label)), &mut buf)
            .map_err(|_| denied(""))?;
        Dek::from_slice(plain).map_err(|_| denied(""))
    }

    pub fn describe(&self, label: &str) -> Result<KeyInfo, KmsError> {
        self.kek()?;
        Ok(KeyInfo {
            enabled: true,
            description: format!("local key file {}, label {label}", self.path.display()),
        })
    }

    pub fn sign(&self, label: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        let pair = self.signing_pair(label)?;
        Ok(Signature {
            algorithm: SIGN_ALGORITHM.to_owned(),
            bytes: pair.sign(msg).as_ref().to_vec(),
        })
    }

    pub fn verify(&self, label: &str, msg: &[u8], sig: &Signature) -> Result<bool, KmsError> {
        let pair = self.signing_pair(label)?;
        if sig.algorithm != SIGN_ALGORITHM {
            return Ok(false);
        }
        let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref());
        Ok(public.verify(msg, &sig.bytes).is_ok())
    }

    fn signing_pair(&self, label: &str) -> Result<Ed25519KeyPair, KmsError> {
        let kek = self.kek()?;
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(&kek[..]);
        let mut seed = Zeroizing::new([0u8; 32]);
        let info = [SIGN_INFO_PREFIX, label.as_bytes()];
        prk.expand(&info, Len32)
            .and_then(|okm| okm.fill(&mut seed[..]))
            .map_err(|_| KmsError::Config("local signing key derivation failed".to_owned()))?;
        Ed25519KeyPair::from_seed_unchecked(&seed[..])
            .map_err(|_| KmsError::Config("local signing key derivation failed".to_owned()))
    }
}

struct Len32;

impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn aad(label: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(WRAP_AAD_PREFIX.len() + label.len());
    v.extend_from_slice(WRAP_AAD_PREFIX);
    v.extend_from_slice(label.as_bytes());
    v
}

fn aead_key(kek: &Kek) -> Result<LessSafeKey, KmsError> {
    UnboundKey::new(&AES_256_GCM, &kek[..])
        .map(LessSafeKey::new)
        .map_err(|_| KmsError::Config("the local KEK is not a valid AES-256 key".to_owned()))
}

fn stamp(path: &Path) -> Result<FileStamp, KmsError> {
    let meta = std::fs::metadata(path).map_err(|e| file_error(path, &e))?;
    Ok(FileStamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: inode(&meta),
    })
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> u64 {
    0
}

fn file_error(path: &Path, e: &std::io::Error) -> KmsError {
    let shown = path.display();
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            KmsError::KeyDestroyed(format!("local key file {shown} is gone"))
        }
        std::io::ErrorKind::PermissionDenied => {
            KmsError::AccessDenied(format!("cannot read local key file {shown}"))
        }
        _ => KmsError::Unavailable(format!("cannot read local key file {shown}: {e}")),
    }
}

/// Parses the file: 64 hex characters, surrounding whitespace ignored.
fn read_kek(path: &Path) -> Result<Kek, KmsError> {
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| file_error(path, &e))?);
    let mut kek = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(text.trim(), &mut kek[..]).map_err(|_| {
        KmsError::Config(format!(
            "local key file {} must hold exactly 64 hex characters (a 256-bit key)",
            path.display()
        ))
    })?;
    Ok(kek)
}
