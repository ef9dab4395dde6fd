//! `gcp-kms`: Google Cloud KMS through its REST API v1
//! (https://cloud.google.com/kms/docs/reference/rest).
//!
//! Client choice: a small REST client on `reqwest` (see [`super::http`]),
//! not an SDK. `google-cloud-kms` 0.6 is gRPC, frozen, and cannot be
//! pointed at another endpoint; Google's official `google-cloud-kms-v1` is
//! REST but a heavy build for the five calls byokpg makes. The REST calls
//! are stable, documented JSON, and the same client reaches a private
//! endpoint or a test fake through `endpoint`.
//!
//! - Credentials: a service-account JSON key (`credentials_file`, else
//!   `GOOGLE_APPLICATION_CREDENTIALS`) exchanged for an access token with the
//!   JWT bearer grant ([`auth`]).
//! - `key` of a tenant: `projects/P/locations/L/keyRings/R/cryptoKeys/K`, a
//!   symmetric ENCRYPT_DECRYPT key. A DEK is 32 random bytes made here and
//!   wrapped with `:encrypt`; unwrapped with `:decrypt`.
//! - AAD: every wrap and unwrap sends the fixed additional authenticated
//!   data [`DEK_AAD`]. A wrapped DEK therefore only decrypts when the caller
//!   says it is a byokpg DEK, which keeps other users of the same key (or a
//!   copied ciphertext) from unwrapping it with a plain `gcloud kms
//!   decrypt`. It is part of the stored format and never changes.
//! - Signing keys name a cryptoKeyVersion
//!   (`.../cryptoKeys/K/cryptoKeyVersions/N`): `:asymmetricSign` on the
//!   SHA-256 digest; verification is local with the version's public key
//!   (`/publicKey`), cached since a version's key never changes.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use super::http::{self, Reply};
use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::KmsConfig;
use crate::crypto::Dek;

mod auth;
mod pubkey;
mod wire;

#[cfg(test)]
mod tests;

pub use auth::ServiceAccount;
use pubkey::PublicKey;

/// Google's public Cloud KMS endpoint.
pub const DEFAULT_ENDPOINT: &str = "https://cloudkms.googleapis.com";
/// Additional authenticated data of every DEK wrap (see the module docs).
pub const DEK_AAD: &[u8] = b"byokpg-dek-v1";

/// The `gcp-kms` provider.
pub struct GcpKms {
    base: String,
    client: reqwest::Client,
    /// Boxed: the RSA key pair is large and [`super::KmsBackend`] holds
    /// every provider inline.
    account: Box<ServiceAccount>,
    public_keys: Mutex<HashMap<String, Arc<PublicKey>>>,
}

impl std::fmt::Debug for GcpKms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpKms")
            .field("endpoint", &self.base)
            .field("account", &self.account.email())
            .finish_non_exhaustive()
    }
}

/// What a key reference names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Key,
    Version,
}

/// Checks `projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N]`
/// (ids restricted to what Google allows, so a reference cannot reach
/// another path of the API).
fn resource(key_ref: &str) -> Result<Resource, KmsError> {
    const LABELS: [&str; 5] = [
        "projects",
        "locations",
        "keyRings",
        "cryptoKeys",
        "cryptoKeyVersions",
    ];
    let parts: Vec<&str> = key_ref.split('/').collect();
    let kind = match parts.len() {
        8 => Resource::Key,
        10 => Resource::Version,
        _ => return Err(bad_name(key_ref)),
    };
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    let ok = parts
        .chunks(2)
        .zip(LABELS)
        .all(|(pair, label)| pair[0] == label && pair.get(1).is_some_and(|id| id_ok(id)));
    if ok { Ok(kind) } else { Err(bad_name(key_ref)) }
}

fn bad_name(key_ref: &str) -> KmsError {
    KmsError::NotFound(format!(
        "`{}` is not a Cloud KMS key name \
         (projects/P/locations/L/keyRings/R/cryptoKeys/K[/cryptoKeyVersions/N])",
        http::clip(key_ref)
    ))
}

/// The CryptoKey a reference belongs to (decrypt takes the key, not a version).
fn crypto_key(key_ref: &str) -> &str {
    key_ref
        .split_once("/cryptoKeyVersions/")
        .map_or(key_ref, |(k, _)| k)
}

fn decode(what: &str, field: &str, b64: &str) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    B64.decode(b64)
        .map(Zeroizing::new)
        .map_err(|_| KmsError::Unavailable(format!("{what}: `{field}` in the reply is not base64")))
}

impl GcpKms {
    /// Builds the provider for `[kms.NAME]`: reads the service-account key
    /// (no network call; the first operation fetches a token).
    #[allow(clippy::unused_async)] // the provider interface is async
    pub async fn from_config(name: &str, cfg: &KmsConfig) -> Result<Self, KmsError> {
        let path = auth::credentials_path(cfg.credentials_file.as_deref(), name)?;
        let account = Box::new(ServiceAccount::load(&path)?);
        let base = cfg
            .endpoint
            .as_deref()
            .unwrap_or(DEFAULT_ENDPOINT)
            .trim_end_matches('/')
            .to_owned();
        Ok(Self {
            base,
            client: http::client(cfg.timeout)?,
            account,
            public_keys: Mutex::new(HashMap::new()),
        })
    }

    /// One authenticated call. A 401 drops the cached token and tries once
    /// more with a new one (a token can die before its announced expiry);
    /// a second 401 is the answer.
    async fn call(&self, what: &str, url: &str, body: Option<&[u8]>) -> Result<Reply, KmsError> {
        let mut fresh = false;
        loop {
            let token = self.account.token(&self.client).await?;
            let req = match body {
                Some(b) => self
                    .client
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_vec()),
                None => self.client.get(url),
            };
            let reply = http::send(req.bearer_auth(token.expose()), what).await?;
            if reply.ok() {
                return Ok(reply);
            }
            if reply.status == 401 {
                self.account.forget_token().await;
                if !fresh {
                    fresh = true;
                    continue;
                }
            }
            return Err(wire::map_error(what, &reply));
        }
    }

    async fn post<T: serde::Serialize>(
        &self,
        what: &str,
        resource: &str,
        verb: &str,
        body: &T,
    ) -> Result<Reply, KmsError> {
        let json = Zeroizing::new(
            serde_json::to_vec(body).map_err(|e| KmsError::Config(format!("{what}: {e}")))?,
        );
        let url = format!("{}/v1/{resource}:{verb}", self.base);
        self.call(what, &url, Some(&json)).await
    }

    pub async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        let plaintext = Dek::generate();
        let wrapped = self.wrap(key_ref, &plaintext).await?;
        Ok(DataKey { plaintext, wrapped })
    }

    pub async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        resource(key_ref)?;
        let plaintext = Zeroizing::new(B64.encode(dek.expose_secret()));
        let aad = B64.encode(DEK_AAD);
        let req = wire::EncryptRequest {
            plaintext: &plaintext,
            additional_authenticated_data: &aad,
        };
        let what = "Cloud KMS encrypt";
        let reply = self.post(what, key_ref, "encrypt", &req).await?;
        let out: wire::EncryptResponse = reply.json(what)?;
        Ok(decode(what, "ciphertext", &out.ciphertext)?.to_vec())
    }

    pub async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        resource(key_ref)?;
        let ciphertext = B64.encode(wrapped);
        let aad = B64.encode(DEK_AAD);
        let req = wire::DecryptRequest {
            ciphertext: &ciphertext,
            additional_authenticated_data: &aad,
        };
        let what = "Cloud KMS decrypt";
        let reply = self
            .post(what, crypto_key(key_ref), "decrypt", &req)
            .await?;
        let out: wire::DecryptResponse = reply.json(what)?;
        let bytes = decode(what, "plaintext", out.plaintext.expose())?;
        Dek::from_slice(&bytes).map_err(|_| {
            KmsError::AccessDenied(format!(
                "{what}: the plaintext is {} bytes, not a byokpg data key",
                bytes.len()
            ))
        })
    }

    pub async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        let kind = resource(key_ref)?;
        let what = "Cloud KMS get";
        let url = format!("{}/v1/{key_ref}", self.base);
        let reply = self.call(what, &url, None).await?;
        let key: wire::KeyResource = reply.json(what)?;
        Ok(describe_resource(kind, &key))
    }

    /// The public key of a cryptoKeyVersion, fetched once.
    async fn public_key(&self, key_ref: &str) -> Result<Arc<PublicKey>, KmsError> {
        if resource(key_ref)? != Resource::Version {
            return Err(KmsError::Config(format!(
                "signing needs a key version (.../cryptoKeyVersions/N), not `{}`",
                http::clip(key_ref)
            )));
        }
        if let Some(k) = self.cached_key(key_ref) {
            return Ok(k);
        }
        let what = "Cloud KMS getPublicKey";
        let url = format!("{}/v1/{key_ref}/publicKey", self.base);
        let reply = self.call(what, &url, None).await?;
        let out: wire::PublicKeyResponse = reply.json(what)?;
        let key = Arc::new(PublicKey::from_pem(&out.pem, &out.algorithm)?);
        if let Ok(mut keys) = self.public_keys.lock() {
            keys.insert(key_ref.to_owned(), Arc::clone(&key));
        }
        Ok(key)
    }

    fn cached_key(&self, key_ref: &str) -> Option<Arc<PublicKey>> {
        self.public_keys.lock().ok()?.get(key_ref).cloned()
    }

    pub async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        let key = self.public_key(key_ref).await?;
        let digest = ring::digest::digest(&ring::digest::SHA256, msg);
        let sha256 = B64.encode(digest.as_ref());
        let req = wire::SignRequest {
            digest: wire::Digest { sha256: &sha256 },
        };
        let what = "Cloud KMS asymmetricSign";
        let reply = self.post(what, key_ref, "asymmetricSign", &req).await?;
        let out: wire::SignResponse = reply.json(what)?;
        Ok(Signature {
            algorithm: key.algorithm.clone(),
            bytes: decode(what, "signature", &out.signature)?.to_vec(),
        })
    }

    pub async fn verify(
        &self,
        key_ref: &str,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        let key = self.public_key(key_ref).await?;
        Ok(sig.algorithm == key.algorithm && key.verify(msg, &sig.bytes))
    }
}

/// KeyInfo of a CryptoKey (its primary version decides) or a version.
fn describe_resource(kind: Resource, key: &wire::KeyResource) -> KeyInfo {
    let purpose = key.purpose.as_deref().unwrap_or("?");
    match kind {
        Resource::Key => match &key.primary {
            Some(p) => KeyInfo {
                enabled: p.state == "ENABLED",
                description: format!(
                    "Cloud KMS {purpose} key, primary version {} {} ({})",
                    p.name.rsplit('/').next().unwrap_or("?"),
                    p.state,
                    p.algorithm.as_deref().unwrap_or("?")
                ),
            },
            None => KeyInfo {
                enabled: false,
                description: format!("Cloud KMS {purpose} key without a primary version"),
            },
        },
        Resource::Version => {
            let state = key.state.as_deref().unwrap_or("?");
            KeyInfo {
                enabled: state == "ENABLED",
                description: format!(
                    "Cloud KMS key version {state} ({}, {})",
                    key.algorithm.as_deref().unwrap_or("?"),
                    key.protection_level.as_deref().unwrap_or("?")
                ),
            }
        }
    }
}
