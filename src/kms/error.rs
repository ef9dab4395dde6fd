//! The one error set every KMS provider maps its failures to (SPEC §7).
//!
//! Each variant carries the provider's own explanation, reduced to text that
//! is safe to show a client: provider error codes and messages, key
//! references and file paths — never key material, tokens or plaintext.
//! Providers are responsible for that reduction when they build the error.

/// A normalized KMS failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// The KMS refused byokpg's identity (grant revoked, policy removed,
    /// wrong KEK for this wrapped key).
    #[error("access denied by the KMS ({0})")]
    AccessDenied(String),
    /// The KEK exists but is disabled.
    #[error("the key is disabled in the KMS ({0})")]
    KeyDisabled(String),
    /// The KEK is scheduled for deletion or already destroyed.
    #[error("the key is pending deletion or destroyed ({0})")]
    KeyDestroyed(String),
    /// No such key (wrong reference, wrong region or account).
    #[error("the key was not found in the KMS ({0})")]
    NotFound(String),
    /// The KMS asked byokpg to slow down; retried with backoff first.
    #[error("the KMS is throttling requests ({0})")]
    Throttled(String),
    /// The KMS did not answer: timeout, connection refused, 5xx, sealed.
    /// Retried with backoff first.
    #[error("the KMS is unreachable ({0})")]
    Unavailable(String),
    /// byokpg cannot use this KMS as configured (provider not available in
    /// this build, local provider without `allow_insecure_local`, malformed
    /// key file). Not retried.
    #[error("the KMS is not usable as configured ({0})")]
    Config(String),
}

impl KmsError {
    /// SQLSTATE for a statement that failed because of this error (SPEC §8):
    /// `58030` (io_error) when the KMS is unreachable, `58000`
    /// (system_error) for every key-state problem.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KmsError::Unavailable(_) => "58030",
            _ => "58000",
        }
    }

    /// Worth another attempt after a pause.
    pub fn is_transient(&self) -> bool {
        matches!(self, KmsError::Throttled(_) | KmsError::Unavailable(_))
    }

    /// The `outcome` label of `byokpg_kms_requests_total` and of the KMS
    /// log: `denied` when the key owner's decision (or the key's state)
    /// stopped the call, `error` when something failed along the way.
    pub fn outcome(&self) -> &'static str {
        match self {
            KmsError::AccessDenied(_)
            | KmsError::KeyDisabled(_)
            | KmsError::KeyDestroyed(_)
            | KmsError::NotFound(_) => "denied",
            KmsError::Throttled(_) | KmsError::Unavailable(_) | KmsError::Config(_) => "error",
        }
    }

    /// A short stable code for logs and the KMS log's `error_code` column.
    pub fn code(&self) -> &'static str {
        match self {
            KmsError::AccessDenied(_) => "access_denied",
            KmsError::KeyDisabled(_) => "key_disabled",
            KmsError::KeyDestroyed(_) => "key_destroyed",
            KmsError::NotFound(_) => "not_found",
            KmsError::Throttled(_) => "throttled",
            KmsError::Unavailable(_) => "unavailable",
            KmsError::Config(_) => "config",
        }
    }

    /// What the key owner or operator can do about it, for a HINT field.
    pub fn hint(&self) -> &'static str {
        match self {
            KmsError::AccessDenied(_) => {
                "the key owner must grant byokpg's identity access to the key again"
            }
            KmsError::KeyDisabled(_) => "the key owner must re-enable the key",
            KmsError::KeyDestroyed(_) => {
                "cancel the key deletion if it is still pending; data under a destroyed key is lost"
            }
            KmsError::NotFound(_) => "check the tenant's `key` and `kms` settings",
            KmsError::Throttled(_) => "retry later, or raise the KMS request quota",
            KmsError::Unavailable(_) => "check that the KMS is reachable from byokpg, then retry",
            KmsError::Config(_) => "fix the [kms] section of the config and reload",
        }
    }
}
