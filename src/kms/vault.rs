//! `vault-transit`: HashiCorp Vault / OpenBao Transit as the KEK store.
//!
//! A tenant's `key` is a Transit key name under `mount` (default
//! `transit`). DEKs come from `datakey/plaintext/<key>`; the wrapped form
//! is Vault's own ciphertext string (`vault:v3:...`) stored as bytes, so
//! Vault picks the key version on unwrap and a rotated key keeps unwrapping
//! old DEKs. Signatures are Vault's signature strings (`vault:v1:...`) as
//! bytes, with the key type (`ed25519`, `ecdsa-p256`, ...) as algorithm.
//!
//! Authentication: a fixed `token`, or AppRole (`role_id` + `secret_id`,
//! at `auth/approle`); see [`auth`] for renewal. Every request carries
//! `X-Vault-Namespace` when `namespace` is set.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::{KmsConfig, Secret};
use crate::crypto::Dek;

mod auth;
mod http;
#[cfg(test)]
mod tests;

use auth::{Auth, Method};
use http::Http;

/// The `vault-transit` provider.
pub struct VaultTransit {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    http: Http,
    auth: Auth,
    /// Transit mount path, without surrounding slashes.
    mount: String,
    /// Key name → Transit key type, learnt on first sign (for `algorithm`).
    key_types: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for VaultTransit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultTransit")
            .field("name", &self.inner.name)
            .field("http", &self.inner.http)
            .field("auth", &self.inner.auth)
            .field("mount", &self.inner.mount)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct Data<T> {
    data: T,
}

#[derive(Deserialize)]
struct DataKeyAnswer {
    plaintext: Secret,
    ciphertext: String,
}

#[derive(Deserialize)]
struct CiphertextAnswer {
    ciphertext: String,
}

#[derive(Deserialize)]
struct PlaintextAnswer {
    plaintext: Secret,
}

#[derive(Deserialize)]
struct SignAnswer {
    signature: String,
}

#[derive(Deserialize)]
struct VerifyAnswer {
    valid: bool,
}

/// The fields of Vault's key read that byokpg shows (its JSON has the bools).
#[derive(Deserialize)]
#[allow(clippy::struct_excessive_bools)]
struct KeyAnswer {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    latest_version: u64,
    #[serde(default)]
    min_decryption_version: u64,
    #[serde(default)]
    deletion_allowed: bool,
    #[serde(default)]
    supports_encryption: bool,
    #[serde(default)]
    supports_signing: bool,
    /// OpenBao: the key is soft-deleted and refuses every operation.
    #[serde(default)]
    soft_deleted: bool,
}

/// The authentication a `[kms.NAME]` section asks for.
fn method(name: &str, cfg: &KmsConfig) -> Result<Method, KmsError> {
    let usable = |s: &Option<Secret>| s.as_ref().filter(|s| !s.is_empty()).cloned();
    match (
        usable(&cfg.token),
        cfg.role_id.as_deref(),
        usable(&cfg.secret_id),
    ) {
        (Some(token), None, None) => Ok(Method::Token(token)),
        (None, Some(role_id), Some(secret_id)) if !role_id.is_empty() => Ok(Method::AppRole {
            role_id: role_id.to_owned(),
            secret_id,
        }),
        (Some(_), _, _) => Err(KmsError::Config(format!(
            "kms.{name}: give either `token` or `role_id` + `secret_id`, not both"
        ))),
        _ => Err(KmsError::Config(format!(
            "kms.{name}: vault-transit needs `token`, or `role_id` and `secret_id` (AppRole)"
        ))),
    }
}

/// A Transit key name as a single path segment.
fn key_segment(key_ref: &str) -> Result<&str, KmsError> {
    let ok = !key_ref.is_empty()
        && key_ref != "."
        && key_ref != ".."
        && key_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(key_ref)
    } else {
        Err(KmsError::NotFound(format!(
            "{key_ref:?} is not a Transit key name (letters, digits, '-', '_', '.')"
        )))
    }
}

fn decode_dek(plaintext: &Secret) -> Result<Dek, KmsError> {
    let bytes = Zeroizing::new(B64.decode(plaintext.expose()).map_err(|_| {
        KmsError::Unavailable("Vault returned a data key that is not base64".to_owned())
    })?);
    Dek::from_slice(&bytes).map_err(|_| {
        KmsError::Config(format!(
            "Vault returned a {}-byte data key; byokpg needs {} bytes (an aes256 Transit key)",
            bytes.len(),
            Dek::LEN
        ))
    })
}

impl VaultTransit {
    /// Builds the provider for `[kms.NAME]`. Contacts nothing: the token's
    /// lease is looked up, or the AppRole login made, by a background task
    /// (and before the first call if that task has not done it yet), so a
    /// Vault that is down at start-up does not stop byokpg. Async only to
    /// match the other providers (the dispatcher awaits every one).
    #[allow(clippy::unused_async)]
    pub async fn from_config(name: &str, cfg: &KmsConfig) -> Result<Self, KmsError> {
        let address = cfg.address.as_deref().ok_or_else(|| {
            KmsError::Config(format!("kms.{name}: vault-transit needs `address`"))
        })?;
        let method = method(name, cfg)?;
        let mount = cfg.transit_mount().trim_matches('/').to_owned();
        if mount.is_empty() {
            return Err(KmsError::Config(format!("kms.{name}: `mount` is empty")));
        }
        let http = Http::new(address, cfg.namespace.as_deref(), cfg.timeout)?;
        let inner = Arc::new(Inner {
            name: name.to_owned(),
            http,
            auth: Auth::new(method),
            mount,
            key_types: Mutex::new(HashMap::new()),
        });
        spawn_upkeep(Arc::downgrade(&inner));
        Ok(Self { inner })
    }

    fn path(&self, op: &str, key_ref: &str) -> Result<String, KmsError> {
        Ok(format!(
            "{}/{op}/{}",
            self.inner.mount,
            key_segment(key_ref)?
        ))
    }

    /// One authenticated Transit call.
    async fn call<R: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<R, KmsError> {
        let inner = &self.inner;
        let token = inner.auth.token(&inner.http).await?;
        let result = match body {
            Some(b) => inner.http.post(path, Some(&token), b).await,
            None => inner.http.get(path, &token).await,
        };
        if let Err(KmsError::AccessDenied(m)) = &result
            && m.starts_with("vault: HTTP 403")
        {
            inner.auth.denied(&token);
        }
        result
    }

    pub async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        let path = self.path("datakey/plaintext", key_ref)?;
        let body = serde_json::json!({ "bits": 256 });
        let a: Data<DataKeyAnswer> = self.call(&path, Some(&body)).await?;
        Ok(DataKey {
            plaintext: decode_dek(&a.data.plaintext)?,
            wrapped: a.data.ciphertext.into_bytes(),
        })
    }

    pub async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        let path = self.path("encrypt", key_ref)?;
        let plaintext = Zeroizing::new(B64.encode(dek.expose_secret()));
        // `json!` copies the string; wipe that copy too once sent.
        let mut body = serde_json::json!({ "plaintext": plaintext.as_str() });
        let result: Result<Data<CiphertextAnswer>, KmsError> = self.call(&path, Some(&body)).await;
        if let Some(serde_json::Value::String(s)) = body.get_mut("plaintext") {
            zeroize::Zeroize::zeroize(s);
        }
        Ok(result?.data.ciphertext.into_bytes())
    }

    pub async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        let path = self.path("decrypt", key_ref)?;
        let ciphertext = std::str::from_utf8(wrapped)
            .ok()
            .filter(|c| c.starts_with("vault:v"))
            .ok_or_else(|| {
                KmsError::AccessDenied(format!(
                    "the stored wrapped DEK is not a Vault Transit ciphertext of key {key_ref}"
                ))
            })?;
        let body = serde_json::json!({ "ciphertext": ciphertext });
        let a: Data<PlaintextAnswer> = self.call(&path, Some(&body)).await?;
        decode_dek(&a.data.plaintext)
    }

    pub async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        let k = self.read_key(key_ref).await?;
        let state = if k.soft_deleted {
            "soft-deleted"
        } else {
            "usable"
        };
        Ok(KeyInfo {
            enabled: !k.soft_deleted,
            description: format!(
                "Transit key {key_ref} at {}: {state}, type {}, latest version {}, min decryption version {}, \
                 supports encryption {}, supports signing {}, deletion allowed {}",
                self.inner.mount,
                k.kind,
                k.latest_version,
                k.min_decryption_version,
                k.supports_encryption,
                k.supports_signing,
                k.deletion_allowed
            ),
        })
    }

    async fn read_key(&self, key_ref: &str) -> Result<KeyAnswer, KmsError> {
        let path = self.path("keys", key_ref)?;
        let a: Data<KeyAnswer> = self.call(&path, None).await?;
        self.key_types()
            .insert(key_ref.to_owned(), a.data.kind.clone());
        Ok(a.data)
    }

    fn key_types(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        // Only ever holds complete inserts; a poisoned lock is still valid.
        self.inner
            .key_types
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The key's Transit type, read once (needs `read` on `keys/<key>`).
    async fn key_type(&self, key_ref: &str) -> Result<String, KmsError> {
        if let Some(t) = self.key_types().get(key_ref) {
            return Ok(t.clone());
        }
        Ok(self.read_key(key_ref).await?.kind)
    }

    pub async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        let algorithm = self.key_type(key_ref).await?;
        let path = self.path("sign", key_ref)?;
        let body = serde_json::json!({ "input": B64.encode(msg) });
        let a: Data<SignAnswer> = self.call(&path, Some(&body)).await?;
        Ok(Signature {
            algorithm,
            bytes: a.data.signature.into_bytes(),
        })
    }

    pub async fn verify(
        &self,
        key_ref: &str,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        if sig.algorithm != self.key_type(key_ref).await? {
            return Ok(false);
        }
        let Some(signature) = std::str::from_utf8(&sig.bytes)
            .ok()
            .filter(|s| s.starts_with("vault:v"))
        else {
            return Ok(false);
        };
        let path = self.path("verify", key_ref)?;
        let body = serde_json::json!({ "input": B64.encode(msg), "signature": signature });
        match self.call::<Data<VerifyAnswer>>(&path, Some(&body)).await {
            Ok(a) => Ok(a.data.valid),
            // A malformed signature or one of a version the key no longer
            // has is a signature that does not verify, not a KMS failure.
            Err(KmsError::Config(m)) if m.to_ascii_lowercase().contains("signature") => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Keeps the token alive while the provider exists: the task holds only a
/// weak reference and ends when the provider is dropped (config reload).
fn spawn_upkeep(inner: Weak<Inner>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return; // no runtime: tokens are refreshed on demand only
    };
    rt.spawn(async move {
        loop {
            let Some(strong) = inner.upgrade() else {
                return;
            };
            let wait = strong.auth.maintain(&strong.http).await;
            drop(strong);
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => return,
            }
        }
    });
}
