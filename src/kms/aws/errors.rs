//! AWS KMS failures → [`KmsError`].
//!
//! | AWS error (`__type` / what happened) | [`KmsError`] |
//! |---|---|
//! | `AccessDeniedException`, bad or expired credentials (`UnrecognizedClientException`, `InvalidSignatureException`, `ExpiredTokenException`, ...), `InvalidGrantTokenException` | `AccessDenied` |
//! | `InvalidCiphertextException`, `IncorrectKeyException` (the wrapped DEK is not this KEK's, or its context differs) | `AccessDenied` |
//! | `DisabledException` | `KeyDisabled` |
//! | `KMSInvalidStateException` whose message says *pending deletion* (`PendingDeletion`, `PendingReplicaDeletion`) | `KeyDestroyed` |
//! | any other `KMSInvalidStateException` (`Disabled`, `PendingImport`, `Unavailable`, `Creating`, ...) | `KeyDisabled` |
//! | `NotFoundException`, `InvalidArnException` | `NotFound` |
//! | `ThrottlingException`, `LimitExceededException`, HTTP 429 | `Throttled` |
//! | `KeyUnavailableException`, `DependencyTimeoutException`, `KMSInternalException`, HTTP 5xx, no connection, timeout | `Unavailable` |
//! | `InvalidKeyUsageException`, other 4xx, a request that cannot be built | `Config` |
//!
//! KMS reports a key that is scheduled for deletion only through the text of
//! `KMSInvalidStateException` (`"... is pending deletion."`); the state
//! name is not a separate field, hence the message check.
//!
//! With `assume_role_arn`, credentials come from STS inside the KMS call;
//! an STS refusal (wrong external id, trust policy changed, role deleted)
//! is found in the error's source chain and mapped the same way, prefixed
//! with `AssumeRole`.
//!
//! Only AWS's error code and message (and, for network failures, the
//! connection error) go into the text — never a request or its body.
use std::error::Error as StdError;

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_sts::operation::assume_role::AssumeRoleError;

use crate::kms::KmsError;

/// Longest AWS message kept in an error (they are short; this bounds a
/// misbehaving endpoint).
const MAX_MESSAGE: usize = 400;

/// Maps a failed KMS call (`op` is the API name, e.g. `Decrypt`).
pub fn from_sdk<E>(op: &str, err: &SdkError<E>) -> KmsError
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    match err {
        SdkError::ServiceError(ctx) => classify(
            op,
            ctx.err().code(),
            ctx.err().message(),
            ctx.raw().status().as_u16(),
        ),
        SdkError::TimeoutError(_) => KmsError::Unavailable(format!("{op}: timed out")),
        SdkError::DispatchFailure(_) => from_credentials(op, err).unwrap_or_else(|| {
            KmsError::Unavailable(format!("{op}: cannot reach AWS KMS ({})", chain(err)))
        }),
        SdkError::ResponseError(ctx) => {
            let status = ctx.raw().status().as_u16();
            let text = format!("{op}: unreadable answer (HTTP {status})");
            if status == 429 {
                KmsError::Throttled(text)
            } else {
                KmsError::Unavailable(text)
            }
        }
        SdkError::ConstructionFailure(_) => KmsError::Config(format!(
            "{op}: the request could not be built ({})",
            chain(err)
        )),
        _ => KmsError::Unavailable(format!("{op}: {}", chain(err))),
    }
}

/// True when `err` is a service error with this AWS error code.
pub fn is_code<E: ProvideErrorMetadata>(err: &SdkError<E>, code: &str) -> bool {
    matches!(err, SdkError::ServiceError(ctx) if ctx.err().code() == Some(code))
}

/// An AWS error code (and message, HTTP status) → [`KmsError`].
pub fn classify(op: &str, code: Option<&str>, message: Option<&str>, status: u16) -> KmsError {
    let text = describe(op, code, message, status);
    let Some(code) = code else {
        return by_status(status, text);
    };
    match code {
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "MissingAuthenticationToken"
        | "InvalidGrantTokenException"
        | "InvalidCiphertextException"
        | "IncorrectKeyException" => KmsError::AccessDenied(text),
        "KMSInvalidStateException" if pending_deletion(message) => KmsError::KeyDestroyed(text),
        "DisabledException" | "KMSInvalidStateException" => KmsError::KeyDisabled(text),
        "NotFoundException" | "InvalidArnException" => KmsError::NotFound(text),
        "ThrottlingException" | "Throttling" | "LimitExceededException" => {
            KmsError::Throttled(text)
        }
        "KeyUnavailableException"
        | "DependencyTimeoutException"
        | "KMSInternalException"
        | "InternalFailure"
        | "ServiceUnavailable" => KmsError::Unavailable(text),
        "InvalidKeyUsageException" | "ValidationException" | "UnsupportedOperationException" => {
            KmsError::Config(text)
        }
        _ => by_status(status, text),
    }
}

/// An error code byokpg does not know, judged by its HTTP status.
fn by_status(status: u16, text: String) -> KmsError {
    match status {
        429 => KmsError::Throttled(text),
        401 | 403 => KmsError::AccessDenied(text),
        s if s >= 500 => KmsError::Unavailable(text),
        _ => KmsError::Config(text),
    }
}

fn pending_deletion(message: Option<&str>) -> bool {
    let m = message.unwrap_or_default().to_ascii_lowercase();
    m.contains("pending deletion")
        || m.contains("pendingdeletion")
        || m.contains("pending replica deletion")
        || m.contains("pendingreplicadeletion")
}

fn describe(op: &str, code: Option<&str>, message: Option<&str>, status: u16) -> String {
    let code = code.unwrap_or("no error code");
    match message.map(str::trim).filter(|m| !m.is_empty()) {
        Some(m) => format!("{op}: {code}: {}", clip(m)),
        None => format!("{op}: {code} (HTTP {status})"),
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// A credential failure hidden in a dispatch failure's source chain (the
/// SDK resolves credentials just before sending).
fn from_credentials(op: &str, err: &(dyn StdError + 'static)) -> Option<KmsError> {
    let creds = sources(err).find_map(|e| e.downcast_ref::<CredentialsError>())?;
    if let Some(sts) = sources(creds).find_map(|e| e.downcast_ref::<SdkError<AssumeRoleError>>()) {
        let inner = from_sdk("AssumeRole", sts);
        return Some(prefix(op, inner));
    }
    let text = format!("{op}: AWS credentials: {}", chain(creds));
    Some(match creds {
        CredentialsError::CredentialsNotLoaded(_) | CredentialsError::InvalidConfiguration(_) => {
            KmsError::Config(text)
        }
        _ => KmsError::Unavailable(text),
    })
}

/// `op: ` in front of the text of `e`, same variant.
fn prefix(op: &str, e: KmsError) -> KmsError {
    match e {
        KmsError::AccessDenied(t) => KmsError::AccessDenied(format!("{op}: {t}")),
        KmsError::KeyDisabled(t) => KmsError::KeyDisabled(format!("{op}: {t}")),
        KmsError::KeyDestroyed(t) => KmsError::KeyDestroyed(format!("{op}: {t}")),
        KmsError::NotFound(t) => KmsError::NotFound(format!("{op}: {t}")),
        KmsError::Throttled(t) => KmsError::Throttled(format!("{op}: {t}")),
        KmsError::Unavailable(t) => KmsError::Unavailable(format!("{op}: {t}")),
        KmsError::Config(t) => KmsError::Config(format!("{op}: {t}")),
    }
}

/// `err` and everything under it.
fn sources<'a>(
    err: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn StdError + 'static)| (*e).source())
}

/// The messages of `err`'s source chain, `: `-joined, repeats dropped
/// (the SDK's wrappers often repeat their cause).
fn chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    for e in sources(err) {
        let s = e.to_string();
        if !s.is_empty() && !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    clip(&parts.join(": ")).to_string()
}
