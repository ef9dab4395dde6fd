//! Key Vault REST wire types and error mapping, after
//! https://learn.microsoft.com/rest/api/keyvault/keys/wrap-key/wrap-key
//! (unwrap-key, sign, get-key) and the error model
//! https://learn.microsoft.com/azure/key-vault/general/rest-error-codes:
//! `{"error": {"code", "message", "innererror": {"code"}}}`.
use serde::{Deserialize, Serialize};

use crate::kms::KmsError;
use crate::kms::http::{Reply, clip};

/// The Key Vault REST API version byokpg speaks.
pub const API_VERSION: &str = "7.4";

/// Body of wrapkey / unwrapkey / sign.
#[derive(Serialize)]
pub struct KeyOperation<'a> {
    pub alg: &'a str,
    /// base64url, no padding.
    pub value: &'a str,
}

/// Reply of wrapkey / unwrapkey / sign.
#[derive(Deserialize)]
pub struct KeyOperationResult {
    pub value: crate::config::Secret,
}

/// GET key: the JSON web key and its attributes.
#[derive(Deserialize)]
pub struct KeyBundle {
    pub key: Jwk,
    #[serde(default)]
    pub attributes: Attributes,
}

/// A JSON web key as Key Vault returns it: only public parts.
#[derive(Deserialize, Default, Clone, Debug)]
#[serde(default)]
pub struct Jwk {
    pub kid: String,
    pub kty: String,
    pub key_ops: Vec<String>,
    pub crv: Option<String>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Attributes {
    pub enabled: Option<bool>,
    #[serde(rename = "recoveryLevel")]
    pub recovery_level: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Envelope {
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ErrorBody {
    code: String,
    message: String,
    innererror: Option<Box<ErrorBody>>,
}

/// A non-2xx reply as a [`KmsError`]: the HTTP status first, then the
/// `code` / `innererror.code` pair to tell a disabled key from a revoked
/// role (both 403).
pub fn map_error(what: &str, reply: &Reply) -> KmsError {
    let env: Envelope = serde_json::from_slice(&reply.body).unwrap_or_default();
    let ErrorBody {
        code,
        message,
        innererror,
    } = env.error;
    let inner = innererror.map(|i| i.code).unwrap_or_default();
    let codes = if inner.is_empty() {
        code.clone()
    } else {
        format!("{code}/{inner}")
    };
    // Key Vault messages carry CR LF line breaks (RBAC denials span lines).
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = clip(&format!("{what}: HTTP {} {codes}: {message}", reply.status));
    let deleted = |c: &str| c.contains("Deleted") || c.contains("BeingDeleted");
    match reply.status {
        _ if deleted(&code) || deleted(&inner) => KmsError::KeyDestroyed(text),
        403 if matches!(
            inner.as_str(),
            "KeyDisabled" | "KeyExpired" | "KeyNotYetValid"
        ) || message.contains("disabled key") =>
        {
            KmsError::KeyDisabled(text)
        }
        401 | 403 => KmsError::AccessDenied(text),
        404 => KmsError::NotFound(text),
        409 => KmsError::KeyDestroyed(text),
        429 => KmsError::Throttled(text + &reply.retry_note()),
        // unwrapkey of a value this key did not wrap: the tenant's wrapped
        // DEK is not this KEK's (wrong key, or tampered).
        400 if what.contains("unwrapkey") => KmsError::AccessDenied(text),
        400 => KmsError::Config(text),
        // 5xx, and anything else unexpected: the service is not answering
        // properly; retried, then 58030.
        _ => KmsError::Unavailable(text),
    }
}
