//! The few Vault HTTP calls byokpg makes, on `reqwest` with rustls/ring.
//!
//! Why not `vaultrs`: its `VaultClientSettings` derives `Debug` with the
//! token in it, its builder silently takes `VAULT_TOKEN` / `VAULT_SKIP_VERIFY`
//! from the environment, changing the token needs `&mut` (renewal would need
//! a lock around the whole client), and `rustify` logs every failed call at
//! ERROR through `#[instrument(err)]`, outside byokpg's own log targets. The
//! Transit API byokpg needs is six JSON calls; owning them keeps the token
//! in a [`Secret`], marks its header sensitive, and gives full control of
//! the error text (Vault's `errors` array only).
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::config::Secret;
use crate::kms::KmsError;

const TOKEN_HEADER: HeaderName = HeaderName::from_static("x-vault-token");
const NAMESPACE_HEADER: HeaderName = HeaderName::from_static("x-vault-namespace");
/// Longest piece of a Vault error message kept (they are short; this only
/// bounds what a misbehaving server can put into a client's error).
const MAX_ERROR_TEXT: usize = 300;

/// A Vault server at one address (and namespace).
pub(super) struct Http {
    client: reqwest::Client,
    /// `<address>/v1/`, so joined paths keep any path prefix of `address`.
    base: url::Url,
    namespace: Option<HeaderValue>,
}

impl std::fmt::Debug for Http {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http")
            .field("base", &self.base.as_str())
            .finish_non_exhaustive()
    }
}

impl Http {
    /// A client for `address` (`http://` or `https://`). HTTPS trusts the
    /// system's CA store (`SSL_CERT_FILE` / `SSL_CERT_DIR` are honoured),
    /// which is where a private Vault CA goes.
    pub(super) fn new(
        address: &str,
        namespace: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, KmsError> {
        let mut base = url::Url::parse(address)
            .map_err(|e| KmsError::Config(format!("`address` {address:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(KmsError::Config(format!(
                "`address` {address:?} must be an http:// or https:// URL"
            )));
        }
        let path = format!("{}/v1/", base.path().trim_end_matches('/'));
        base.set_path(&path);
        let namespace = namespace
            .map(|ns| {
                HeaderValue::from_str(ns)
                    .map_err(|_| KmsError::Config(format!("`namespace` {ns:?} is not usable")))
            })
            .transpose()?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .no_proxy()
            .user_agent(concat!("byokpg/", env!("CARGO_PKG_VERSION")));
        if !timeout.is_zero() {
            builder = builder.timeout(timeout).connect_timeout(timeout);
        }
        let client = builder
            .build()
            .map_err(|e| KmsError::Config(format!("cannot build the Vault HTTP client: {e}")))?;
        Ok(Self {
            client,
            base,
            namespace,
        })
    }

    /// `POST /v1/<path>` with a JSON body; the answer's JSON.
    pub(super) async fn post<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        path: &str,
        token: Option<&Secret>,
        body: &B,
    ) -> Result<R, KmsError> {
        // The body may hold a DEK (encrypt): serialize into a buffer that is
        // wiped here. reqwest needs its own copy, which this module cannot
        // wipe; it lives until the request is written.
        let json = Zeroizing::new(
            serde_json::to_vec(body)
                .map_err(|e| KmsError::Config(format!("cannot encode a Vault request: {e}")))?,
        );
        let answer = self
            .send(Method::POST, path, token, Some(json.to_vec()))
            .await?;
        parse(path, &answer)
    }

    /// `GET /v1/<path>`; the answer's JSON.
    pub(super) async fn get<R: DeserializeOwned>(
        &self,
        path: &str,
        token: &Secret,
    ) -> Result<R, KmsError> {
        let answer = self.send(Method::GET, path, Some(token), None).await?;
        parse(path, &answer)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&Secret>,
        body: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        let url = self
            .base
            .join(path)
            .map_err(|e| KmsError::Config(format!("bad Vault path {path:?}: {e}")))?;
        let mut headers = HeaderMap::new();
        if let Some(token) = token {
            let mut v = HeaderValue::from_str(token.expose())
                .map_err(|_| KmsError::Config("the Vault token is not a valid header".into()))?;
            v.set_sensitive(true);
            headers.insert(TOKEN_HEADER, v);
        }
        if let Some(ns) = &self.namespace {
            headers.insert(NAMESPACE_HEADER, ns.clone());
        }
        let mut req = self.client.request(method, url).headers(headers);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let resp = req.send().await.map_err(|e| transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| transport_error(&e))?;
        let body = Zeroizing::new(bytes.to_vec());
        if status.is_success() {
            Ok(body)
        } else {
            Err(map_status(status, &body))
        }
    }
}

/// rustls with the `ring` provider (as everywhere in byokpg) and the
/// system's roots.
fn tls_config() -> Result<rustls::ClientConfig, KmsError> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .map_err(|e| KmsError::Config(format!("TLS for Vault: {e}")))
}

fn parse<R: DeserializeOwned>(path: &str, body: &[u8]) -> Result<R, KmsError> {
    // serde's message names the field that did not fit, never its value.
    serde_json::from_slice(body).map_err(|e| {
        KmsError::Unavailable(format!(
            "unexpected answer from Vault to {}: {e}",
            op_of(path)
        ))
    })
}

/// The path without the key name, for messages (`transit/decrypt`).
fn op_of(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(head, _)| head)
}

/// Why a request got no HTTP answer: always `Unavailable` (retried).
fn transport_error(e: &reqwest::Error) -> KmsError {
    // The innermost cause says what happened ("Connection refused"); the
    // outer ones only repeat the URL.
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let what = if e.is_timeout() {
        "no answer in time".to_owned()
    } else if e.is_connect() {
        format!("cannot connect: {cause}")
    } else {
        format!("request failed: {cause}")
    };
    let at = e
        .url()
        .map(|u| format!(" at {}", u.origin().ascii_serialization()))
        .unwrap_or_default();
    KmsError::Unavailable(format!("Vault{at}: {what}"))
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<String>,
}

/// Vault's `{"errors": [...]}`, reduced to one safe line.
fn error_text(body: &[u8]) -> String {
    let errors = serde_json::from_slice::<ErrorBody>(body)
        .map(|b| b.errors)
        .unwrap_or_default();
    let mut text = errors
        .iter()
        .map(|e| e.trim().replace(['\n', '\r', '\t'], " "))
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.len() > MAX_ERROR_TEXT {
        let mut end = MAX_ERROR_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push('…');
    }
    text
}

/// Maps a Vault error answer to the normalized set. The message decides
/// first where Vault's status codes are ambiguous (a failed AEAD check is a
/// 400 on some versions and a 500 on others), then the status.
pub(super) fn map_status(status: StatusCode, body: &[u8]) -> KmsError {
    let errors = error_text(body);
    let text = if errors.is_empty() {
        format!("vault: HTTP {}", status.as_u16())
    } else {
        format!("vault: HTTP {}: {errors}", status.as_u16())
    };
    let lower = errors.to_ascii_lowercase();
    let has = |needle: &str| lower.contains(needle);
    if has("message authentication failed") || has("invalid ciphertext") || has("unable to decrypt")
    {
        // The wrapped DEK was not made by this key (or was altered).
        return KmsError::AccessDenied(text);
    }
    if has("sealed") {
        return KmsError::Unavailable(text);
    }
    match status.as_u16() {
        401 | 403 => KmsError::AccessDenied(text),
        404 => KmsError::NotFound(text),
        429 => KmsError::Throttled(text),
        400 if has("not found") || has("no existing key") => KmsError::NotFound(text),
        400 if has("invalid role") || has("invalid secret") || has("permission denied") => {
            KmsError::AccessDenied(text)
        }
        // OpenBao's soft delete (undone by soft-delete-restore).
        400 if has("soft-deleted") || has("soft deleted") => KmsError::KeyDestroyed(text),
        400 if has("disallowed by policy") || has("min_decryption_version") => {
            KmsError::KeyDisabled(text)
        }
        // 412: a performance standby has not caught up yet.
        412 | 500..=599 => KmsError::Unavailable(text),
        _ => KmsError::Config(text),
    }
}
