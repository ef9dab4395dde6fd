//! `gcp-kms`: not built yet — a placeholder with the provider interface every
//! module under `kms/` implements. `from_config` refuses, so no value of
//! this type ever exists.
use std::convert::Infallible;

use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::config::KmsConfig;
use crate::crypto::Dek;

/// The `gcp-kms` provider.
#[derive(Debug)]
pub struct GcpKms {
    never: Infallible,
}

#[allow(clippy::unused_async)]
impl GcpKms {
    /// Builds the provider for `[kms.NAME]`.
    pub async fn from_config(name: &str, _cfg: &KmsConfig) -> Result<Self, KmsError> {
        Err(KmsError::Config(format!(
            "provider gcp-kms (kms.{name}) is not available in this build"
        )))
    }

    pub async fn generate_data_key(&self, _key_ref: &str) -> Result<DataKey, KmsError> {
        match self.never {}
    }

    pub async fn wrap(&self, _key_ref: &str, _dek: &Dek) -> Result<Vec<u8>, KmsError> {
        match self.never {}
    }

    pub async fn unwrap(&self, _key_ref: &str, _wrapped: &[u8]) -> Result<Dek, KmsError> {
        match self.never {}
    }

    pub async fn describe(&self, _key_ref: &str) -> Result<KeyInfo, KmsError> {
        match self.never {}
    }

    pub async fn sign(&self, _key_ref: &str, _msg: &[u8]) -> Result<Signature, KmsError> {
        match self.never {}
    }

    pub async fn verify(
        &self,
        _key_ref: &str,
        _msg: &[u8],
        _sig: &Signature,
    ) -> Result<bool, KmsError> {
        match self.never {}
    }
}
