//! The small HTTP/JSON layer shared by the REST providers (`gcp-kms`,
//! `azure-keyvault`).
//!
//! Why a hand-written REST client on `reqwest` rather than the vendors'
//! SDKs: the proxy must reach the configured `endpoint` / `vault_url` /
//! `authority_host` over plain HTTP in tests (a fake is a separate HTTP
//! server, the proxy a separate process). Azure's SDK refuses `http://`
//! endpoints, the gRPC `google-cloud-kms` crate cannot be pointed at a local
//! endpoint, and Google's REST SDK is a heavy build for five calls. The five
//! calls each provider needs are small, documented JSON requests, so a
//! client of ~300 lines per provider talks the real wire API with one HTTP
//! stack (`reqwest` on rustls with ring, the TLS stack the rest of byokpg
//! uses) and no second crypto provider.
//!
//! This module owns what both providers share: the client (timeouts, no
//! redirects), turning transport failures into [`KmsError::Unavailable`]
//! with text safe to show, bounded reply bodies, and the OAuth access-token
//! cache.
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::KmsError;
use crate::config::Secret;

/// Replies larger than this are refused: every answer of these APIs is a
/// few kilobytes, and a proxy must not buffer whatever a broken endpoint
/// sends.
const MAX_REPLY: usize = 1 << 20;

/// A token is refreshed this long before the provider says it expires, so
/// a request never leaves with a token that dies in flight.
const TOKEN_MARGIN: Duration = Duration::from_mins(1);

/// An HTTP client for one `[kms.NAME]`: `timeout` bounds one request (the
/// retry layer bounds the whole call), no redirects are followed (a KMS
/// never redirects; following one could send the bearer token elsewhere).
pub fn client(timeout: Duration) -> Result<reqwest::Client, KmsError> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("byokpg/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| KmsError::Config(format!("cannot build the HTTP client: {}", root_cause(&e))))
}

/// A reply: status, body and the `Retry-After` header if any.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: bytes::Bytes,
    pub retry_after: Option<String>,
}

impl Reply {
    /// ` (Retry-After: N)` when the service said when to come back. Only
    /// shown: the retry policy's own backoff and deadline still decide.
    pub fn retry_note(&self) -> String {
        self.retry_after
            .as_deref()
            .map(|v| format!(" (Retry-After: {})", clip(v)))
            .unwrap_or_default()
    }

    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as `T`; a body that does not parse is the service
    /// misbehaving, reported as unavailable (retried) with the reason.
    pub fn json<T: DeserializeOwned>(&self, what: &str) -> Result<T, KmsError> {
        serde_json::from_slice(&self.body).map_err(|e| {
            KmsError::Unavailable(format!(
                "{what}: unexpected reply (HTTP {}): {e}",
                self.status
            ))
        })
    }
}

/// Sends `req` and reads the reply. Connection refused, DNS failure, TLS
/// failure and timeouts become [`KmsError::Unavailable`] naming `what` and
/// the cause (never the request, which may carry a token or key material).
pub async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<Reply, KmsError> {
    let resp = req.send().await.map_err(|e| transport(what, &e))?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if resp.content_length().is_some_and(|n| n > MAX_REPLY as u64) {
        return Err(KmsError::Unavailable(format!(
            "{what}: reply larger than {MAX_REPLY} bytes"
        )));
    }
    let body = resp.bytes().await.map_err(|e| transport(what, &e))?;
    if body.len() > MAX_REPLY {
        return Err(KmsError::Unavailable(format!(
            "{what}: reply larger than {MAX_REPLY} bytes"
        )));
    }
    Ok(Reply {
        status,
        body,
        retry_after,
    })
}

fn transport(what: &str, e: &reqwest::Error) -> KmsError {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    KmsError::Unavailable(format!("{what}: {kind}: {}", root_cause(e)))
}

/// The innermost cause ("Connection refused (os error 111)"): the useful
/// part, and free of the URL reqwest puts in its own message.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Shortens provider text before it goes into an error (the KMS log and
/// client messages keep it whole otherwise).
pub fn clip(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// An OAuth 2.0 access token and when to stop using it.
struct Token {
    value: Secret,
    refresh_at: Instant,
}

/// One cached access token. Callers that find it stale queue on the async
/// lock, so a cold or expired token is fetched once, not once per waiting
/// statement.
#[derive(Default)]
pub struct TokenCache {
    slot: tokio::sync::Mutex<Option<Token>>,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenCache(***)")
    }
}

impl TokenCache {
    /// The cached token, or a new one from `fetch` (which returns the token
    /// and its lifetime, `expires_in`).
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Secret, KmsError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Secret, Duration), KmsError>>,
    {
        let mut slot = self.slot.lock().await;
        if let Some(t) = slot.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.value.clone());
        }
        let (value, lifetime) = fetch().await?;
        // Short-lived tokens (under two margins) are used for half their life.
        let margin = TOKEN_MARGIN.min(lifetime / 2);
        *slot = Some(Token {
            value: value.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(margin),
        });
        Ok(value)
    }

    /// Forgets the token, after the service rejected it (401): revoked
    /// or expired early.
    pub async fn clear(&self) {
        *self.slot.lock().await = None;
    }
}

/// The OAuth 2.0 token reply (RFC 6749 §5.1), as both Google and Microsoft
/// Entra send it.
#[derive(serde::Deserialize)]
pub struct TokenReply {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The OAuth 2.0 error reply (RFC 6749 §5.2).
#[derive(serde::Deserialize, Default)]
pub struct OAuthError {
    #[serde(default)]
    pub error: String,
    #[serde(default)]
    pub error_description: String,
}

/// Reads a token-endpoint reply: the token and its lifetime, or the
/// error mapped like any KMS error (a refused credential is
/// `AccessDenied`: the key owner's side no longer accepts byokpg).
pub fn token_reply(reply: &Reply, what: &str) -> Result<(Secret, Duration), KmsError> {
    if reply.ok() {
        let t: TokenReply = reply.json(what)?;
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3600));
        return Ok((Secret::new(t.access_token), lifetime));
    }
    let e: OAuthError = serde_json::from_slice(&reply.body).unwrap_or_default();
    let text = clip(&format!(
        "{what}: HTTP {}: {} {}",
        reply.status, e.error, e.error_description
    ));
    Err(match reply.status {
        429 => KmsError::Throttled(text),
        s if s >= 500 => KmsError::Unavailable(text),
        _ => KmsError::AccessDenied(text),
    })
}
