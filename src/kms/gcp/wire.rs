//! Cloud KMS REST v1 wire types and error mapping, after
//! https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys
//! (encrypt, decrypt, get), .../cryptoKeyVersions (asymmetricSign,
//! getPublicKey, get) and the error model https://cloud.google.com/apis/design/errors.
use serde::{Deserialize, Serialize};

use crate::kms::KmsError;
use crate::kms::http::{Reply, clip};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EncryptRequest<'a> {
    pub plaintext: &'a str,
    pub additional_authenticated_data: &'a str,
}

#[derive(Deserialize)]
pub struct EncryptResponse {
    pub ciphertext: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DecryptRequest<'a> {
    pub ciphertext: &'a str,
    pub additional_authenticated_data: &'a str,
}

#[derive(Deserialize)]
pub struct DecryptResponse {
    /// Absent when the plaintext is empty (proto3 JSON omits defaults).
    #[serde(default)]
    pub plaintext: crate::config::Secret,
}

/// A CryptoKey, or a CryptoKeyVersion (which carries `state` itself).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct KeyResource {
    pub purpose: Option<String>,
    pub primary: Option<VersionResource>,
    pub state: Option<String>,
    pub algorithm: Option<String>,
    pub protection_level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionResource {
    pub name: String,
    pub state: String,
    pub algorithm: Option<String>,
}

#[derive(Serialize)]
pub struct SignRequest<'a> {
    pub digest: Digest<'a>,
}

#[derive(Serialize)]
pub struct Digest<'a> {
    pub sha256: &'a str,
}

#[derive(Deserialize)]
pub struct SignResponse {
    pub signature: String,
}

#[derive(Deserialize)]
pub struct PublicKeyResponse {
    pub pem: String,
    pub algorithm: String,
}

/// Google's error envelope: `{"error": {"code", "message", "status"}}`.
#[derive(Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    error: Status,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    message: String,
    status: String,
}

/// A non-2xx reply as a [`KmsError`]. The canonical `status` string
/// decides; the HTTP status is the fallback for bodies that are not
/// Google's envelope (a load balancer's 503 page).
pub fn map_error(what: &str, reply: &Reply) -> KmsError {
    let env: Envelope = serde_json::from_slice(&reply.body).unwrap_or_default();
    let Status { message, status } = env.error;
    let text = clip(&format!(
        "{what}: {} {}",
        if status.is_empty() {
            format!("HTTP {}", reply.status)
        } else {
            status.clone()
        },
        message
    ));
    match status.as_str() {
        "PERMISSION_DENIED" | "UNAUTHENTICATED" => KmsError::AccessDenied(text),
        "FAILED_PRECONDITION" => key_state(&message, text),
        "NOT_FOUND" => KmsError::NotFound(text),
        "RESOURCE_EXHAUSTED" => KmsError::Throttled(text + &reply.retry_note()),
        "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED" | "UNKNOWN" | "ABORTED" => {
            KmsError::Unavailable(text)
        }
        // Decrypt of a ciphertext this key did not make (another key, or
        // another AAD): the tenant's wrapped DEK is not this KEK's.
        "INVALID_ARGUMENT" if message.contains("Decryption failed") => KmsError::AccessDenied(text),
        "INVALID_ARGUMENT" => KmsError::Config(text),
        _ if reply.status == 429 => KmsError::Throttled(text + &reply.retry_note()),
        _ => by_http_status(reply.status, text),
    }
}

/// FAILED_PRECONDITION: the key version is not usable; the message says
/// which state it is in ("... is not enabled, current state is: DISABLED").
fn key_state(message: &str, text: String) -> KmsError {
    if message.contains("DESTROY") {
        KmsError::KeyDestroyed(text)
    } else {
        KmsError::KeyDisabled(text)
    }
}

fn by_http_status(status: u16, text: String) -> KmsError {
    match status {
        401 | 403 => KmsError::AccessDenied(text),
        404 => KmsError::NotFound(text),
        429 => KmsError::Throttled(text),
        400 => KmsError::Config(text),
        _ => KmsError::Unavailable(text),
    }
}
