//! Local verification of Cloud KMS asymmetric signatures: the public key
//! arrives as a PEM SubjectPublicKeyInfo (getPublicKey), ring wants the
//! raw key inside it (RSAPublicKey DER, or the uncompressed EC point).
use ring::signature::{self, VerificationAlgorithm};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use rustls_pki_types::pem::PemObject as _;

use crate::kms::KmsError;

/// A cryptoKeyVersion's public key, ready for ring.
pub struct PublicKey {
    /// Cloud KMS algorithm name (`EC_SIGN_P256_SHA256`, ...).
    pub algorithm: String,
    verify: &'static dyn VerificationAlgorithm,
    raw: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The ring verifier of a Cloud KMS signing algorithm whose digest is
/// SHA-256 (the only digest byokpg sends). EC signatures come DER-encoded.
fn verifier(algorithm: &str) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match algorithm {
        "EC_SIGN_P256_SHA256" => &signature::ECDSA_P256_SHA256_ASN1,
        "RSA_SIGN_PSS_2048_SHA256" | "RSA_SIGN_PSS_3072_SHA256" | "RSA_SIGN_PSS_4096_SHA256" => {
            &signature::RSA_PSS_2048_8192_SHA256
        }
        "RSA_SIGN_PKCS1_2048_SHA256"
        | "RSA_SIGN_PKCS1_3072_SHA256"
        | "RSA_SIGN_PKCS1_4096_SHA256" => &signature::RSA_PKCS1_2048_8192_SHA256,
        _ => return None,
    })
}

impl PublicKey {
    /// From getPublicKey's `pem` and `algorithm`.
    pub fn from_pem(pem: &str, algorithm: &str) -> Result<Self, KmsError> {
        let verify = verifier(algorithm).ok_or_else(|| {
            KmsError::Config(format!(
                "signing algorithm {algorithm} is not supported; use EC_SIGN_P256_SHA256 or \
                 RSA_SIGN_PSS_2048_SHA256"
            ))
        })?;
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes()).map_err(|_| {
            KmsError::Unavailable("getPublicKey: the reply holds no PEM public key".to_owned())
        })?;
        let raw = spki_key(spki.as_ref()).ok_or_else(|| {
            KmsError::Unavailable("getPublicKey: malformed SubjectPublicKeyInfo".to_owned())
        })?;
        Ok(Self {
            algorithm: algorithm.to_owned(),
            verify,
            raw: raw.to_vec(),
        })
    }

    /// Whether `sig` is this key's signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(self.verify, &self.raw)
            .verify(msg, sig)
            .is_ok()
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subjectPublicKey BIT STRING of a SubjectPublicKeyInfo
/// (RFC 5280 §4.1): SEQUENCE { SEQUENCE algorithm, BIT STRING key }.
pub fn spki_key(spki: &[u8]) -> Option<&[u8]> {
    let (0x30, body, _) = der(spki)? else {
        return None;
    };
    let (0x30, _alg, rest) = der(body)? else {
        return None;
    };
    let (0x03, bits, _) = der(rest)? else {
        return None;
    };
    // First byte: unused bits in the last byte, always 0 for keys.
    match bits.split_first()? {
        (0, key) => Some(key),
        _ => None,
    }
}
