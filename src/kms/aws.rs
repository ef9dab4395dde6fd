//! `aws-kms`: AWS KMS through `aws-sdk-kms`.
//!
//! - DEKs: `GenerateDataKey` (`AES_256`), `Encrypt` to wrap an existing DEK,
//!   `Decrypt` to unwrap. Every one of them carries the same
//!   [`ENCRYPTION_CONTEXT`] (`byokpg = tenant-dek-v1`): KMS binds it into the
//!   wrapping, so a ciphertext only decrypts with it, it shows in CloudTrail
//!   as `requestParameters.encryptionContext`, and a key policy can require
//!   it (`kms:EncryptionContext:byokpg`). `Decrypt` names the `KeyId`, so a
//!   DEK wrapped under another KEK is refused (`IncorrectKeyException`)
//!   rather than silently unwrapped by whichever key made it.
//! - `describe`: `DescribeKey`; enabled means `KeyState = Enabled`.
//! - `sign` / `verify`: `Sign` / `Verify` for asymmetric keys (algorithm
//!   picked from the key's `SigningAlgorithms`), `GenerateMac` /
//!   `VerifyMac` for HMAC keys. The key's usage and algorithms are fixed
//!   at creation, so the `DescribeKey` answer for them is cached per key.
//!
//! Credentials come from the standard AWS chain (environment, profile, web
//! identity, ECS, IMDS); with `assume_role_arn` they are only the base for
//! STS `AssumeRole` (with `external_id`), whose session credentials the
//! SDK's identity cache refreshes before they expire. `endpoint` overrides
//! the KMS endpoint only; STS keeps its own (or `AWS_ENDPOINT_URL_STS`).
//!
//! Each SDK call is boxed: its future type is deep enough that inlining it
//! into every caller's future (through [`super::KmsBackend`]) overflows
//! rustc's query depth limit, and one allocation per KMS call is nothing.
//!
//! The SDK's own retries and timeouts are off: [`super::retry::run`] owns
//! the deadline and the backoff, and retries only what
//! [`KmsError::is_transient`] says (see [`errors`] for the mapping).
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use aws_config::retry::RetryConfig;
use aws_config::sts::AssumeRoleProvider;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::SharedCredentialsProvider;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{DataKeySpec, KeyState, KeyUsageType};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use zeroize::Zeroizing;

use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::KmsConfig;
use crate::crypto::Dek;

mod errors;
mod signing;
#[cfg(test)]
mod tests;

use signing::SignSpec;

/// The encryption context of every DEK operation (key, value).
pub const ENCRYPTION_CONTEXT: (&str, &str) = ("byokpg", "tenant-dek-v1");

/// The `aws-kms` provider.
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    region: String,
    /// `DescribeKey` answers for signing keys (usage and algorithms only).
    sign_specs: Mutex<HashMap<String, Arc<SignSpec>>>,
}

impl fmt::Debug for AwsKms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKms")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl AwsKms {
    /// Builds the provider for `[kms.NAME]`. Loads the credential chain
    /// (lazily: nothing is fetched until the first call) and contacts
    /// nothing, so an unreachable KMS does not stop byokpg from starting.
    pub async fn from_config(name: &str, cfg: &KmsConfig) -> Result<Self, KmsError> {
        let region = cfg
            .region
            .clone()
            .filter(|r| !r.trim().is_empty())
            .ok_or_else(|| KmsError::Config(format!("kms.{name}: aws-kms needs `region`")))?;
        if let Some(ep) = &cfg.endpoint {
            url::Url::parse(ep).map_err(|e| {
                KmsError::Config(format!("kms.{name}: `endpoint` is not a URL ({e})"))
            })?;
        }
        if cfg.external_id.is_some() && cfg.assume_role_arn.is_none() {
            return Err(KmsError::Config(format!(
                "kms.{name}: `external_id` needs `assume_role_arn`"
            )));
        }
        let base = base_sdk_config(&region, None, None).await;
        Ok(Self::with_base(name, cfg, region, base).await)
    }

    /// The provider over an already loaded SDK config (tests give one with
    /// fixed credentials instead of the environment's chain).
    async fn with_base(name: &str, cfg: &KmsConfig, region: String, base: SdkConfig) -> Self {
        let sdk = match &cfg.assume_role_arn {
            None => base,
            Some(arn) => with_assumed_role(base, name, arn, cfg.external_id.as_deref()).await,
        };
        let mut kms = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(ep) = &cfg.endpoint {
            kms = kms.endpoint_url(ep);
        }
        Self {
            client: aws_sdk_kms::Client::from_conf(kms.build()),
            region,
            sign_specs: Mutex::new(HashMap::new()),
        }
    }

    pub async fn generate_data_key(&self, key_ref: &str) -> Result<DataKey, KmsError> {
        let (k, v) = ENCRYPTION_CONTEXT;
        let mut out = Box::pin(
            self.client
                .generate_data_key()
                .key_id(key_ref)
                .key_spec(DataKeySpec::Aes256)
                .encryption_context(k, v)
                .send(),
        )
        .await
        .map_err(|e| errors::from_sdk("GenerateDataKey", &e))?;
        let plaintext = dek_from_blob("GenerateDataKey", out.plaintext.take())?;
        let wrapped = out
            .ciphertext_blob
            .take()
            .map(Blob::into_inner)
            .ok_or_else(|| missing("GenerateDataKey", "CiphertextBlob"))?;
        Ok(DataKey { plaintext, wrapped })
    }

    pub async fn wrap(&self, key_ref: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        let (k, v) = ENCRYPTION_CONTEXT;
        let out = Box::pin(
            self.client
                .encrypt()
                .key_id(key_ref)
                .plaintext(Blob::new(dek.expose_secret().to_vec()))
                .encryption_context(k, v)
                .send(),
        )
        .await
        .map_err(|e| errors::from_sdk("Encrypt", &e))?;
        out.ciphertext_blob
            .map(Blob::into_inner)
            .ok_or_else(|| missing("Encrypt", "CiphertextBlob"))
    }

    pub async fn unwrap(&self, key_ref: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        let (k, v) = ENCRYPTION_CONTEXT;
        let mut out = Box::pin(
            self.client
                .decrypt()
                .key_id(key_ref)
                .ciphertext_blob(Blob::new(wrapped))
                .encryption_context(k, v)
                .send(),
        )
        .await
        .map_err(|e| errors::from_sdk("Decrypt", &e))?;
        dek_from_blob("Decrypt", out.plaintext.take())
    }

    pub async fn describe(&self, key_ref: &str) -> Result<KeyInfo, KmsError> {
        let out = Box::pin(self.client.describe_key().key_id(key_ref).send())
            .await
            .map_err(|e| errors::from_sdk("DescribeKey", &e))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| missing("DescribeKey", "KeyMetadata"))?;
        let state = meta.key_state.clone();
        let spec = meta.key_spec.as_ref().map_or("unknown", |s| s.as_str());
        let usage = meta.key_usage.as_ref().map_or("unknown", |u| u.as_str());
        let state_str = state.as_ref().map_or("unknown", |s| s.as_str());
        Ok(KeyInfo {
            enabled: state == Some(KeyState::Enabled),
            description: format!(
                "AWS KMS key {}: spec {spec}, usage {usage}, state {state_str}, region {}",
                meta.arn.as_deref().unwrap_or(&meta.key_id),
                self.region
            ),
        })
    }

    pub async fn sign(&self, key_ref: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        let spec = self.sign_spec(key_ref).await?;
        match spec.usage {
            KeyUsageType::GenerateVerifyMac => self.generate_mac(key_ref, &spec, msg).await,
            _ => self.sign_asymmetric(key_ref, &spec, msg).await,
        }
    }

    pub async fn verify(
        &self,
        key_ref: &str,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        let spec = self.sign_spec(key_ref).await?;
        match spec.usage {
            KeyUsageType::GenerateVerifyMac => self.verify_mac(key_ref, &spec, msg, sig).await,
            _ => self.verify_asymmetric(key_ref, &spec, msg, sig).await,
        }
    }

    /// The signing facts of `key_ref`, from the cache or `DescribeKey`.
    async fn sign_spec(&self, key_ref: &str) -> Result<Arc<SignSpec>, KmsError> {
        if let Some(s) = self.specs().get(key_ref) {
            return Ok(Arc::clone(s));
        }
        let out = Box::pin(self.client.describe_key().key_id(key_ref).send())
            .await
            .map_err(|e| errors::from_sdk("DescribeKey", &e))?;
        let meta = out
            .key_metadata
            .ok_or_else(|| missing("DescribeKey", "KeyMetadata"))?;
        let spec = Arc::new(SignSpec::from_metadata(&meta)?);
        self.specs().insert(key_ref.to_string(), Arc::clone(&spec));
        Ok(spec)
    }

    fn specs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SignSpec>>> {
        // The map holds plain data: a panic elsewhere cannot leave it torn.
        self.sign_specs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn sign_asymmetric(
        &self,
        key_ref: &str,
        spec: &SignSpec,
        msg: &[u8],
    ) -> Result<Signature, KmsError> {
        let alg = spec.signing_algorithm()?;
        let (message, kind) = signing::message_for(&alg, msg)?;
        let out = Box::pin(
            self.client
                .sign()
                .key_id(key_ref)
                .signing_algorithm(alg.clone())
                .message_type(kind)
                .message(Blob::new(message))
                .send(),
        )
        .await
        .map_err(|e| errors::from_sdk("Sign", &e))?;
        let bytes = out
            .signature
            .map(Blob::into_inner)
            .ok_or_else(|| missing("Sign", "Signature"))?;
        Ok(Signature {
            algorithm: alg.as_str().to_string(),
            bytes,
        })
    }

    async fn verify_asymmetric(
        &self,
        key_ref: &str,
        spec: &SignSpec,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        let Some(alg) = spec.signing_algorithm_named(&sig.algorithm) else {
            return Ok(false);
        };
        let (message, kind) = signing::message_for(&alg, msg)?;
        let result = Box::pin(
            self.client
                .verify()
                .key_id(key_ref)
                .signing_algorithm(alg)
                .message_type(kind)
                .message(Blob::new(message))
                .signature(Blob::new(sig.bytes.clone()))
                .send(),
        )
        .await;
        match result {
            Ok(out) => Ok(out.signature_valid),
            Err(e) if errors::is_code(&e, "KMSInvalidSignatureException") => Ok(false),
            Err(e) => Err(errors::from_sdk("Verify", &e)),
        }
    }

    async fn generate_mac(
        &self,
        key_ref: &str,
        spec: &SignSpec,
        msg: &[u8],
    ) -> Result<Signature, KmsError> {
        let alg = spec.mac_algorithm()?;
        signing::check_mac_len(msg)?;
        let out = Box::pin(
            self.client
                .generate_mac()
                .key_id(key_ref)
                .mac_algorithm(alg.clone())
                .message(Blob::new(msg))
                .send(),
        )
        .await
        .map_err(|e| errors::from_sdk("GenerateMac", &e))?;
        let bytes = out
            .mac
            .map(Blob::into_inner)
            .ok_or_else(|| missing("GenerateMac", "Mac"))?;
        Ok(Signature {
            algorithm: alg.as_str().to_string(),
            bytes,
        })
    }

    async fn verify_mac(
        &self,
        key_ref: &str,
        spec: &SignSpec,
        msg: &[u8],
        sig: &Signature,
    ) -> Result<bool, KmsError> {
        let Some(alg) = spec.mac_algorithm_named(&sig.algorithm) else {
            return Ok(false);
        };
        signing::check_mac_len(msg)?;
        let result = Box::pin(
            self.client
                .verify_mac()
                .key_id(key_ref)
                .mac_algorithm(alg)
                .message(Blob::new(msg))
                .mac(Blob::new(sig.bytes.clone()))
                .send(),
        )
        .await;
        match result {
            Ok(out) => Ok(out.mac_valid),
            Err(e) if errors::is_code(&e, "KMSInvalidMacException") => Ok(false),
            Err(e) => Err(errors::from_sdk("VerifyMac", &e)),
        }
    }
}

/// Region, credential chain and a ring-based rustls HTTPS client (no
/// aws-lc), with the SDK's retries and timeouts off. `credentials` and
/// `endpoint` replace the standard chain's (tests only).
async fn base_sdk_config(
    region: &str,
    credentials: Option<SharedCredentialsProvider>,
    endpoint: Option<&str>,
) -> SdkConfig {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(TimeoutConfig::disabled());
    if let Some(c) = credentials {
        loader = loader.credentials_provider(c);
    }
    if let Some(e) = endpoint {
        loader = loader.endpoint_url(e);
    }
    loader.load().await
}

/// `base` with its credentials replaced by an STS `AssumeRole` session
/// made from them. The SDK config's identity cache keeps the session and
/// renews it shortly before it expires.
async fn with_assumed_role(
    base: SdkConfig,
    name: &str,
    arn: &str,
    external_id: Option<&str>,
) -> SdkConfig {
    let mut builder = AssumeRoleProvider::builder(arn)
        .session_name(session_name(name))
        .configure(&base);
    if let Some(id) = external_id {
        builder = builder.external_id(id);
    }
    let provider = builder.build().await;
    base.into_builder()
        .credentials_provider(SharedCredentialsProvider::new(provider))
        .build()
}

/// `byokpg-NAME`, reduced to what STS allows in a session name
/// (`[\w+=,.@-]`, at most 64 characters). It names byokpg in the key
/// owner's CloudTrail (`userIdentity.arn` ends with it).
fn session_name(kms_name: &str) -> String {
    let clean: String = kms_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut s = format!("byokpg-{clean}");
    s.truncate(64);
    s
}

/// A DEK from a KMS plaintext blob; the blob's bytes are wiped after the copy.
fn dek_from_blob(op: &str, blob: Option<Blob>) -> Result<Dek, KmsError> {
    let bytes = Zeroizing::new(blob.ok_or_else(|| missing(op, "Plaintext"))?.into_inner());
    Dek::from_slice(&bytes).map_err(|_| {
        KmsError::Config(format!(
            "{op} returned a {}-byte key, not a 256-bit one (is the key symmetric?)",
            bytes.len()
        ))
    })
}

fn missing(op: &str, field: &str) -> KmsError {
    KmsError::Unavailable(format!("{op}: the answer has no {field}"))
}
