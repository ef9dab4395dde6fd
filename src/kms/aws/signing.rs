//! Which algorithm a signing key is used with, and how a message is sent.
use aws_sdk_kms::types::{
    KeyMetadata, KeyUsageType, MacAlgorithmSpec, MessageType, SigningAlgorithmSpec,
};
use sha2::Digest as _;

use crate::kms::KmsError;

/// `Sign` / `GenerateMac` take at most this many message bytes.
pub const MAX_RAW_MESSAGE: usize = 4096;

/// Preferred signing algorithms, best first; a key offering none of them
/// is used with the first algorithm it lists.
const SIGNING_PREFERENCE: [SigningAlgorithmSpec; 6] = [
    SigningAlgorithmSpec::EcdsaSha256,
    SigningAlgorithmSpec::RsassaPssSha256,
    SigningAlgorithmSpec::EcdsaSha384,
    SigningAlgorithmSpec::RsassaPssSha384,
    SigningAlgorithmSpec::EcdsaSha512,
    SigningAlgorithmSpec::RsassaPssSha512,
];

/// The immutable facts of a key that `sign` / `verify` need: its usage and
/// the algorithms KMS allows with it. Fixed when the key is created, so
/// they are cached for the life of the process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignSpec {
    pub usage: KeyUsageType,
    pub signing: Vec<SigningAlgorithmSpec>,
    pub mac: Vec<MacAlgorithmSpec>,
}

impl SignSpec {
    /// From `DescribeKey`; a key that can neither sign nor MAC is refused.
    pub fn from_metadata(meta: &KeyMetadata) -> Result<Self, KmsError> {
        let usage = meta.key_usage.clone().ok_or_else(|| {
            KmsError::Config(format!("DescribeKey of {} names no KeyUsage", meta.key_id))
        })?;
        match usage {
            KeyUsageType::SignVerify | KeyUsageType::GenerateVerifyMac => Ok(Self {
                usage,
                signing: meta.signing_algorithms().to_vec(),
                mac: meta.mac_algorithms().to_vec(),
            }),
            other => Err(KmsError::Config(format!(
                "key {} has usage {}; signing needs SIGN_VERIFY or GENERATE_VERIFY_MAC",
                meta.key_id,
                other.as_str()
            ))),
        }
    }

    /// The algorithm `sign` uses.
    pub fn signing_algorithm(&self) -> Result<SigningAlgorithmSpec, KmsError> {
        SIGNING_PREFERENCE
            .iter()
            .find(|a| self.signing.contains(a))
            .or_else(|| self.signing.first())
            .cloned()
            .ok_or_else(|| KmsError::Config("the key lists no SigningAlgorithms".to_string()))
    }

    /// The key's algorithm called `name`, if it has one.
    pub fn signing_algorithm_named(&self, name: &str) -> Option<SigningAlgorithmSpec> {
        self.signing.iter().find(|a| a.as_str() == name).cloned()
    }

    /// The MAC algorithm `sign` uses: `HMAC_SHA_256` when the key has it.
    pub fn mac_algorithm(&self) -> Result<MacAlgorithmSpec, KmsError> {
        self.mac
            .iter()
            .find(|a| **a == MacAlgorithmSpec::HmacSha256)
            .or_else(|| self.mac.first())
            .cloned()
            .ok_or_else(|| KmsError::Config("the key lists no MacAlgorithms".to_string()))
    }

    /// The key's MAC algorithm called `name`, if it has one.
    pub fn mac_algorithm_named(&self, name: &str) -> Option<MacAlgorithmSpec> {
        self.mac.iter().find(|a| a.as_str() == name).cloned()
    }
}

/// What to send as `Message`: the message itself when KMS accepts it raw,
/// otherwise its digest with the algorithm's hash (`MessageType = DIGEST`),
/// which KMS signs the same way it would have signed the raw message. Only
/// the RSA and ECDSA algorithms have such a plain digest mode.
pub fn message_for(
    alg: &SigningAlgorithmSpec,
    msg: &[u8],
) -> Result<(Vec<u8>, MessageType), KmsError> {
    if msg.len() <= MAX_RAW_MESSAGE {
        return Ok((msg.to_vec(), MessageType::Raw));
    }
    let name = alg.as_str();
    let digest = match name.rsplit_once("_SHA_") {
        Some(("ECDSA" | "RSASSA_PSS" | "RSASSA_PKCS1_V1_5", "256")) => {
            sha2::Sha256::digest(msg).to_vec()
        }
        Some(("ECDSA" | "RSASSA_PSS" | "RSASSA_PKCS1_V1_5", "384")) => {
            sha2::Sha384::digest(msg).to_vec()
        }
        Some(("ECDSA" | "RSASSA_PSS" | "RSASSA_PKCS1_V1_5", "512")) => {
            sha2::Sha512::digest(msg).to_vec()
        }
        _ => {
            return Err(KmsError::Config(format!(
                "{name} signs at most {MAX_RAW_MESSAGE} bytes, this message has {}",
                msg.len()
            )));
        }
    };
    Ok((digest, MessageType::Digest))
}

/// `GenerateMac` has no digest mode: longer messages are refused.
pub fn check_mac_len(msg: &[u8]) -> Result<(), KmsError> {
    if msg.len() > MAX_RAW_MESSAGE {
        return Err(KmsError::Config(format!(
            "an HMAC key signs at most {MAX_RAW_MESSAGE} bytes, this message has {}",
            msg.len()
        )));
    }
    Ok(())
}
