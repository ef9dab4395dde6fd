//! `azure-keyvault`: Azure Key Vault (and Managed HSM) through its REST API
//! 7.4 (https://learn.microsoft.com/rest/api/keyvault/).
//!
//! Client choice: a small REST client on `reqwest` (see [`super::http`]),
//! not `azure_security_keyvault_keys`. The SDK refuses `http://` endpoints,
//! so a fake Key Vault can only be plugged in as an in-memory transport
//! inside the proxy process — which an end-to-end test of the real
//! `byokpg serve` binary cannot do. The REST calls (token, get key, wrapkey,
//! unwrapkey, sign) are five documented JSON requests.
//!
//! - Credentials: OAuth 2.0 client credentials against Microsoft Entra ID
//!   (`authority_host`, default https://login.microsoftonline.com,
//!   `/{azure_tenant_id}/oauth2/v2.0/token`, scope `https://vault.azure.net/.default`);
//!   `azure_tenant_id` / `client_id` / `client_secret` fall back to
//!   `AZURE_TENANT_ID` / `AZURE_CLIENT_ID` / `AZURE_CLIENT_SECRET`. Managed
//!   identity is not supported by this build.
//! - `key` of a tenant: `NAME/VERSION` in `vault_url`, or the full key id
//!   `https://VAULT/keys/NAME/VERSION` (same host as `vault_url`). The version
//!   must be pinned: an unpinned name would wrap under whatever version is
//!   current, and a rotation in the portal would silently change the KEK.
//! - DEK: 32 random bytes made here, `wrapkey` with RSA-OAEP-256 (RSA keys)
//!   or A256KW (`oct-HSM` keys, Managed HSM); `unwrapkey` back. The key
//!   type comes from one GET per key (cached: a pinned version never changes).
//! - Signing: `sign` of the SHA-256 digest (ES256 for P-256 keys, PS256 for
//!   RSA keys); verification is local with the key's JWK public half.
//! - `endpoint`, when set, replaces `vault_url` as the address requests go
//!   to (a private endpoint); key ids are still checked against `vault_url`.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use zeroize::Zeroizing;

use super::http::{self, Reply, TokenCache};
use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::{KmsConfig, Secret};
use crate::crypto::Dek;

mod keys;
mod wire;

#[cfg(test)]
mod tests;

use keys::KeyMeta;

/// Microsoft Entra ID of the public cloud.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The `azure-keyvault` provider.
pub struct AzureKeyVault {
    vault_host: String,
    base: String,
    token_url: String,
    scope: String,
    client_id: String,
    client_secret: Secret,
    client: reqwest::Client,
    token: TokenCache,
    keys: Mutex<HashMap<String, Arc<KeyMeta>>>,
}

impl std::fmt::Debug for AzureKeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKeyVault")
            .field("vault", &self.vault_host)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

fn setting(value: Option<&str>, env: &str, field: &str, kms: &str) -> Result<String, KmsError> {
    value
        .map(str::to_owned)
        .or_else(|| std::env::var(env).ok())
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| KmsError::Config(format!("kms.{kms}: set `{field}` (or {env})")))
}

/// The OAuth scope of the vault's cloud: `https://vault.azure.net/.default`
/// for `*.vault.azure.net`, the matching sovereign-cloud or Managed HSM
/// audience for others.
pub fn scope_for(host: &str) -> String {
    for (marker, audience) in [(".vault.", "vault"), (".managedhsm.", "managedhsm")] {
        if let Some(pos) = host.find(marker) {
            let suffix = &host[pos + marker.len()..];
            return format!("https://{audience}.{suffix}/.default");
        }
    }
    "https://vault.azure.net/.default".to_owned()
}

impl AzureKeyVault {
    /// Builds the provider for `[kms.NAME]` (no network call; the first
    /// operation fetches a token).
    #[allow(clippy::unused_async)] // the provider interface is async
    pub async fn from_config(name: &str, cfg: &KmsConfig) -> Result<Self, KmsError> {
        let vault_url = cfg
            .vault_url
            .clone()
            .ok_or_else(|| KmsError::Config(format!("kms.{name}: set `vault_url`")))?;
        let vault = url::Url::parse(&vault_url)
            .map_err(|_| KmsError::Config(format!("kms.{name}: `vault_url` is not a URL")))?;
        let vault_host = vault.host_str().unwrap_or_default().to_owned();
        let tenant = setting(
            cfg.azure_tenant_id.as_deref(),
            "AZURE_TENANT_ID",
            "azure_tenant_id",
            name,
        )?;
        let client_id = setting(
            cfg.client_id.as_deref(),
            "AZURE_CLIENT_ID",
            "client_id",
            name,
        )?;
        let client_secret = match &cfg.client_secret {
            Some(s) => s.clone(),
            None => Secret::new(
                setting(None, "AZURE_CLIENT_SECRET", "client_secret", name).map_err(|_| {
                    KmsError::Config(format!(
                        "kms.{name}: set `client_secret` (or AZURE_CLIENT_SECRET); managed \
                         identity is not supported by this build"
                    ))
                })?,
            ),
        };
        let authority = cfg.authority_host.as_deref().unwrap_or(DEFAULT_AUTHORITY);
        let base = cfg.endpoint.as_deref().unwrap_or(&vault_url);
        Ok(Self {
            scope: scope_for(&vault_host),
            vault_host,
            base: base.trim_end_matches('/').to_owned(),
            token_url: format!(
                "{}/{tenant}/oauth2/v2.0/token",
                authority.trim_end_matches('/')
            ),
            client_id,
            client_secret,
            client: http::client(cfg.timeout)?,
            token: TokenCache::default(),
            keys: Mutex::new(HashMap::new()),
        })
    }

    async fn fetch_token(&self) -> Result<(Secret, std::time::Duration), KmsError> {
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
            ("client_secret", self.client_secret.expose()),
            ("scope", self.scope.as_str()),
        ];
        let what = "Entra ID token";
        let reply = http::send(self.client.post(&self.token_url).form(&form), what).await?;
        http::token_reply(&reply, what)
    }

    /// One authenticated call to `{base}/keys/{name}/{version}[/{op}]`. A
    /// 401 drops the cached token and tries once more with a new one.
    async fn call(&self, what: &str, path: &str, body: Option<&[u8]>) -> Result<Reply, KmsError> {
        let url = format!(
            "{}/keys/{path}?api-version={}",
            self.base,
            wire::API_VERSION
        );
        let mut fresh = false;
        loop {
            let token = self.token.get(|| self.fetch_token()).await?;
            let req = match body {
                Some(b) => self
                    .client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(b.to_vec()),
                None => self.client.get(&url),
            };
            let reply = http::send(req.bearer_auth(token.expose()), what).await?;
            if reply.ok() {
                return Ok(reply);
            }
            if reply.status == 401 {
                self.token.clear().await;
                if !fresh {
                    fresh = true;
                    continue;
                }
            }
            return Err(wire::map_error(what, &reply));
        }
    }

    /// wrapkey / unwrapkey / sign on a pinned key: base64url in, out.
    async fn key_op(
        &self,
        path: &str,
        op: &str,
        alg: &str,
        value: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let what = format!("Key Vault {op}");
        let encoded = Zeroizing::new(B64URL.encode(value));
        let body = Zeroizing::new(
            serde_json::to_vec(&wire::KeyOperation {
                alg,
                value: &encoded,
            })
            .map_err(|e| KmsError::Config(format!("{what}: {e}")))?,
        );
        let reply = self
            .call(&what, &format!("{path}/{op}"), Some(&body))
            .await?;
        let out: wire::KeyOperationResult = reply.json(&what)?;
        let trimmed = out.value.expose().trim_end_matches('=');
        B64URL.decode(trimmed).map(Zeroizing::new).map_err(|_| {
            KmsError::Unavailable(format!("{what}: `value` in the reply is not base64url"))
        })
    }

    /// The key's type and public half (one GET per pinned key).
    async fn meta(&self, key_ref: &str) -> Result<(String, Arc<KeyMeta>), KmsError> {
        let path = keys::key_path(key_ref, &self.vault_host)?;
        if let Some(m) = self.keys.lock().ok().and_then(|k| k.get(&path).cloned()) {
            return Ok((path, m));
        }
        let bundle = self.get(&path).await?;
        let meta = Arc::new(KeyMeta::from_jwk(bundle.key));
        if let Ok(mut keys) = self.keys.lock() {
            keys.insert(path.clone(), Arc::clone(&meta));
        }
        Ok((path, meta))
    }

    async fn get(&self, path: &str) -> Result<wire::KeyBundle, KmsError> {
        let what = "Key Vault get key";
        self.call(what, path, None).await?.json(what)
    }

    pub async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        let plaintext = Dek::generate();
        let wrapped = self.wrap(key_ref, &plaintext).await?;
        Ok(DataKey { plaintext, wrapped })
    }

    pub async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        let (path, meta) = self.meta(key_ref).await?;
        let alg = meta.wrap_alg()?;
        let out = self
            .key_op(&path, "wrapkey", alg, dek.expose_secret())
            .await?;
        Ok(out.to_vec())
    }

    pub async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        let (path, meta) = self.meta(key_ref).await?;
        let alg = meta.wrap_alg()?;
        let out = self.key_op(&path, "unwrapkey", alg, wrapped).await?;
        Dek::from_slice(&out).map_err(|_| {
            KmsError::AccessDenied(format!(
                "Key Vault unwrapkey: the result is {} bytes, not a byokpg data key",
                out.len()
            ))
        })
    }

    pub async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        let path = keys::key_path(key_ref, &self.vault_host)?;
        let bundle = self.get(&path).await?;
        let enabled = bundle.attributes.enabled.unwrap_or(false);
        Ok(KeyInfo {
            enabled,
            description: format!(
                "Key Vault key {path} ({}, ops {}, {}, recovery {})",
                bundle.key.kty,
                bundle.key.key_ops.join(","),
                if enabled { "enabled" } else { "disabled" },
                bundle.attributes.recovery_level.as_deref().unwrap_or("?")
            ),
        })
    }

    pub async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        let (path, meta) = self.meta(key_ref).await?;
        let alg = meta.sign_alg()?;
        let digest = ring::digest::digest(&ring::digest::SHA256, msg);
        let sig = self.key_op(&path, "sign", alg, digest.as_ref()).await?;
        Ok(Signature {
            algorithm: alg.to_owned(),
            bytes: sig.to_vec(),
        })
    }

    pub async fn verify(
        &self,
        key_ref: &str,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        let (_, meta) = self.meta(key_ref).await?;
        meta.verify(&sig.algorithm, msg, &sig.bytes)
    }
}
