//! Key management services: where every tenant's KEK lives (SPEC §7).
//!
//! One [`Kms`] per `[kms.NAME]` section. It pairs a [`KmsBackend`] — an enum
//! with one variant per provider, dispatched by `match` (no boxed futures,
//! no `async_trait`) — with the section's [`RetryPolicy`]. Every operation
//! goes through [`retry::run`], which applies the deadline, retries
//! throttling and transient failures with backoff and jitter, and records
//! the call in the KMS metrics. Adding a provider is one variant, one arm
//! per operation in [`KmsBackend`], and one arm in [`Kms::from_config`].
//!
//! Key references (`key_ref`) are whatever the provider calls a key: an
//! ARN, a resource name, a key URL, a Transit key name, or a label for
//! `local`. Errors are normalized to [`KmsError`].
use std::fmt;

use crate::config::{KmsConfig, KmsProvider};
use crate::crypto::Dek;

pub mod aws;
pub mod azure;
mod error;
#[cfg(test)]
pub(crate) mod fake;
pub mod gcp;
pub(crate) mod http;
pub mod local;
mod retry;
pub mod vault;

#[cfg(test)]
mod tests;

pub use error::KmsError;
pub use local::LocalKms;
pub use retry::{KmsOp, RetryPolicy};

/// A fresh DEK: the plaintext (zeroized on drop) and the KMS's wrapping of it.
#[derive(Debug)]
pub struct DataKey {
    pub plaintext: Dek,
    pub wrapped: Vec<u8>,
}

/// What the KMS says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key can be used now.
    pub enabled: bool,
    /// Provider-specific summary (key spec, state, location), safe to show.
    pub description: String,
}

/// A signature and the algorithm that made it (e.g. `ed25519`,
/// `ECDSA_SHA_256`, `RSASSA_PSS_SHA_256`, `HMAC_SHA_256`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub algorithm: String,
    pub bytes: Vec<u8>,
}

/// The provider behind a [`Kms`].
#[derive(Debug)]
pub enum KmsBackend {
    /// `local`: a key file (development only).
    Local(LocalKms),
    /// `aws-kms`: AWS KMS.
    Aws(aws::AwsKms),
    /// `vault-transit`: HashiCorp Vault / OpenBao Transit.
    Vault(vault::VaultTransit),
    /// `gcp-kms`: Google Cloud KMS.
    Gcp(gcp::GcpKms),
    /// `azure-keyvault`: Azure Key Vault.
    Azure(azure::AzureKeyVault),
    /// Tests: a scriptable in-memory KMS that counts calls.
    #[cfg(test)]
    Fake(fake::FakeKms),
}

impl KmsBackend {
    /// The provider name used in config files and metric labels.
    pub fn provider(&self) -> &'static str {
        match self {
            KmsBackend::Local(_) => KmsProvider::Local.as_str(),
            KmsBackend::Aws(_) => KmsProvider::AwsKms.as_str(),
            KmsBackend::Vault(_) => KmsProvider::VaultTransit.as_str(),
            KmsBackend::Gcp(_) => KmsProvider::GcpKms.as_str(),
            KmsBackend::Azure(_) => KmsProvider::AzureKeyVault.as_str(),
            #[cfg(test)]
            KmsBackend::Fake(_) => "fake",
        }
    }

    async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        match self {
            KmsBackend::Local(k) => k.generate_data_key(key_ref),
            KmsBackend::Aws(k) => k.generate_data_key(key_ref).await,
            KmsBackend::Vault(k) => k.generate_data_key(key_ref).await,
            KmsBackend::Gcp(k) => k.generate_data_key(key_ref).await,
            KmsBackend::Azure(k) => k.generate_data_key(key_ref).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.generate_data_key(key_ref).await,
        }
    }

    async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        match self {
            KmsBackend::Local(k) => k.wrap(key_ref, dek),
            KmsBackend::Aws(k) => k.wrap(key_ref, dek).await,
            KmsBackend::Vault(k) => k.wrap(key_ref, dek).await,
            KmsBackend::Gcp(k) => k.wrap(key_ref, dek).await,
            KmsBackend::Azure(k) => k.wrap(key_ref, dek).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.wrap(key_ref, dek).await,
        }
    }

    async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        match self {
            KmsBackend::Local(k) => k.unwrap(key_ref, wrapped),
            KmsBackend::Aws(k) => k.unwrap(key_ref, wrapped).await,
            KmsBackend::Vault(k) => k.unwrap(key_ref, wrapped).await,
            KmsBackend::Gcp(k) => k.unwrap(key_ref, wrapped).await,
            KmsBackend::Azure(k) => k.unwrap(key_ref, wrapped).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.unwrap(key_ref, wrapped).await,
        }
    }

    async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        match self {
            KmsBackend::Local(k) => k.describe(key_ref),
            KmsBackend::Aws(k) => k.describe(key_ref).await,
            KmsBackend::Vault(k) => k.describe(key_ref).await,
            KmsBackend::Gcp(k) => k.describe(key_ref).await,
            KmsBackend::Azure(k) => k.describe(key_ref).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.describe(key_ref).await,
        }
    }

    async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        match self {
            KmsBackend::Local(k) => k.sign(key_ref, msg),
            KmsBackend::Aws(k) => k.sign(key_ref, msg).await,
            KmsBackend::Vault(k) => k.sign(key_ref, msg).await,
            KmsBackend::Gcp(k) => k.sign(key_ref, msg).await,
            KmsBackend::Azure(k) => k.sign(key_ref, msg).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.sign(key_ref, msg).await,
        }
    }

    async fn verify(&self, key_ref: &str, msg: &[u8], sig: &Signature) -> Result<bool, KmsError> {
        match self {
            KmsBackend::Local(k) => k.verify(key_ref, msg, sig),
            KmsBackend::Aws(k) => k.verify(key_ref, msg, sig).await,
            KmsBackend::Vault(k) => k.verify(key_ref, msg, sig).await,
            KmsBackend::Gcp(k) => k.verify(key_ref, msg, sig).await,
            KmsBackend::Azure(k) => k.verify(key_ref, msg, sig).await,
            #[cfg(test)]
            KmsBackend::Fake(k) => k.verify(key_ref, msg, sig).await,
        }
    }
}

/// One configured KMS (`[kms.NAME]`): a provider plus its timeout and
/// retry policy. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct Kms {
    name: String,
    policy: RetryPolicy,
    backend: KmsBackend,
}

impl fmt::Debug for Kms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kms")
            .field("name", &self.name)
            .field("provider", &self.backend.provider())
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Kms {
    /// A KMS from any backend (tests, and providers built elsewhere).
    pub fn new(name: impl Into<String>, policy: RetryPolicy, backend: KmsBackend) -> Self {
        Self {
            name: name.into(),
            policy,
            backend,
        }
    }

    /// Builds `[kms.NAME]`. Fails with [`KmsError::Config`] when the
    /// provider is not available in this build or the section is unusable
    /// (e.g. `local` without `allow_insecure_local`). Async because cloud
    /// providers load credentials (AWS config chain, token exchange) here.
    pub async fn from_config(name: &str, cfg: &KmsConfig) -> Result<Self, KmsError> {
        let backend = match cfg.provider {
            KmsProvider::Local => KmsBackend::Local(LocalKms::from_config(cfg)?),
            KmsProvider::AwsKms => KmsBackend::Aws(aws::AwsKms::from_config(name, cfg).await?),
            KmsProvider::VaultTransit => {
                KmsBackend::Vault(vault::VaultTransit::from_config(name, cfg).await?)
            }
            KmsProvider::GcpKms => KmsBackend::Gcp(gcp::GcpKms::from_config(name, cfg).await?),
            KmsProvider::AzureKeyVault => {
                KmsBackend::Azure(azure::AzureKeyVault::from_config(name, cfg).await?)
            }
        };
        Ok(Self::new(name, RetryPolicy::from_config(cfg), backend))
    }

    /// The `[kms.NAME]` name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The provider name (`local`, `aws-kms`, ...), as in metric labels.
    pub fn provider(&self) -> &'static str {
        self.backend.provider()
    }

    /// Deadline and retries applied to every call.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The provider itself, for provider-specific calls.
    pub fn backend(&self) -> &KmsBackend {
        &self.backend
    }

    /// A new 256-bit DEK and its wrapping under `key_ref` (the provider's
    /// generate-data-key, or a local random key wrapped by the KEK).
    pub async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        self.run(KmsOp::Generate, || self.backend.generate_data_key(key_ref))
            .await
    }

    /// Wraps an existing DEK under `key_ref` (rotation to a new KEK).
    pub async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        self.run(KmsOp::Wrap, || self.backend.wrap(key_ref, dek))
            .await
    }

    /// Unwraps a DEK that [`Kms::generate_data_key`] or [`Kms::wrap`] made
    /// under `key_ref`.
    pub async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        self.run(KmsOp::Unwrap, || self.backend.unwrap(key_ref, wrapped))
            .await
    }

    /// The key's state, where the provider can tell.
    pub async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        self.run(KmsOp::Describe, || self.backend.describe(key_ref))
            .await
    }

    /// Signs `msg` with the asymmetric (or MAC) key `key_ref`.
    pub async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        self.run(KmsOp::Sign, || self.backend.sign(key_ref, msg))
            .await
    }

    /// Checks a signature made by [`Kms::sign`]; `Ok(false)` when it does
    /// not match (wrong message, key or algorithm).
    pub async fn verify(
        &self,
        key_ref: &str,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        self.run(KmsOp::Verify, || self.backend.verify(key_ref, msg, sig))
            .await
    }

    async fn run<T, F, Fut>(&self, op: KmsOp, attempt: F) -> Result<T, KmsError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        retry::run(&self.policy, self.backend.provider(), op, attempt).await
    }
}
