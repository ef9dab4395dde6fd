//! byokpg's Vault token: a fixed `token`, or one from an AppRole login, kept
//! alive before its lease ends.
//!
//! A renewable token is renewed (`auth/token/renew-self`) at half its TTL;
//! an AppRole token that cannot be renewed (not renewable, at its max TTL,
//! revoked) is replaced by a new login. Both happen in a background task
//! (so an idle proxy keeps a live token) and, as a fallback, on demand
//! before a call finds the token due. A fixed token whose TTL is unknown is
//! looked up once (`auth/token/lookup-self`); a TTL of 0 (root tokens,
//! periodic tokens without TTL) never needs renewing.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::http::Http;
use crate::config::Secret;
use crate::kms::KmsError;

/// After a failed renewal or login, how long the current token is used
/// before trying again (unless it expires first).
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// When nothing is known about the lease (Vault down at start), how often
/// the background task tries to learn it.
const POLL: Duration = Duration::from_secs(30);
/// A renewal that grants less than this (the token reached its max TTL) is
/// not worth keeping for an AppRole: log in again instead.
const MIN_USEFUL_TTL: Duration = Duration::from_secs(10);

/// How byokpg authenticates to Vault.
pub(super) enum Method {
    Token(Secret),
    AppRole { role_id: String, secret_id: Secret },
}

impl std::fmt::Debug for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Method::Token(_) => f.write_str("Token(***)"),
            Method::AppRole { role_id, .. } => f
                .debug_struct("AppRole")
                .field("role_id", role_id)
                .field("secret_id", &"***")
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Lease {
    obtained: Instant,
    ttl: Duration,
    renewable: bool,
}

impl Lease {
    fn renew_at(&self) -> Instant {
        self.obtained + self.ttl / 2
    }

    fn expires_at(&self) -> Instant {
        self.obtained + self.ttl
    }
}

#[derive(Default)]
struct State {
    token: Option<Secret>,
    /// `None`: not known yet (fixed token before lookup) or never expires.
    lease: Option<Lease>,
    /// A fixed token's lease was looked up (or found not to expire).
    known: bool,
    /// Do not retry a failed renewal / login before this.
    retry_at: Option<Instant>,
}

impl State {
    /// The token, unless it is due for renewal (or missing).
    fn usable(&self, now: Instant) -> Option<Secret> {
        let token = self.token.as_ref()?;
        let due = self.lease.is_some_and(|l| now >= l.renew_at());
        let waiting = self
            .retry_at
            .is_some_and(|r| now < r && self.lease.is_none_or(|l| now < l.expires_at()));
        (!due || waiting).then(|| token.clone())
    }
}

/// The token and its upkeep.
pub(super) struct Auth {
    method: Method,
    state: Mutex<State>,
    /// One renewal / login at a time; the others wait for its result.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct AuthAnswer {
    auth: AuthInfo,
}

#[derive(Deserialize)]
struct AuthInfo {
    client_token: Secret,
    #[serde(default)]
    lease_duration: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Deserialize)]
struct LookupAnswer {
    data: LookupData,
}

#[derive(Deserialize)]
struct LookupData {
    #[serde(default)]
    ttl: u64,
    #[serde(default)]
    renewable: bool,
}

#[derive(Serialize)]
struct Login<'a> {
    role_id: &'a str,
    secret_id: &'a str,
}

fn lease(ttl_secs: u64, renewable: bool) -> Option<Lease> {
    (ttl_secs > 0).then(|| Lease {
        obtained: Instant::now(),
        ttl: Duration::from_secs(ttl_secs),
        renewable,
    })
}

impl Auth {
    pub(super) fn new(method: Method) -> Self {
        let token = match &method {
            Method::Token(t) => Some(t.clone()),
            Method::AppRole { .. } => None,
        };
        Self {
            method,
            state: Mutex::new(State {
                token,
                ..State::default()
            }),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half
        // written (every update is one assignment), so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A token to call Vault with, renewed or logged in first when due.
    pub(super) async fn token(&self, http: &Http) -> Result<Secret, KmsError> {
        if let Some(t) = self.state().usable(Instant::now()) {
            return Ok(t);
        }
        let _one = self.refresh.lock().await;
        if let Some(t) = self.state().usable(Instant::now()) {
            return Ok(t);
        }
        self.refresh(http).await
    }

    /// Vault refused `used`: if it is still the current token, make it due
    /// so the next call renews or logs in again (a revoked AppRole token is
    /// replaced; a removed policy is not worked around — the new token has
    /// the same policies). Not more often than every [`RETRY_AFTER`].
    pub(super) fn denied(&self, used: &Secret) {
        if !matches!(self.method, Method::AppRole { .. }) {
            return;
        }
        let mut s = self.state();
        let now = Instant::now();
        let same = s
            .token
            .as_ref()
            .is_some_and(|t| t.ct_eq(used.expose().as_bytes()));
        if same && s.retry_at.is_none_or(|r| now >= r) {
            if let Some(l) = &mut s.lease {
                l.ttl = Duration::ZERO;
            } else {
                s.lease = lease(1, false);
            }
            s.retry_at = Some(now + RETRY_AFTER);
        }
    }

    async fn refresh(&self, http: &Http) -> Result<Secret, KmsError> {
        let (current, lease) = {
            let s = self.state();
            (s.token.clone(), s.lease)
        };
        if let (Some(token), Some(l)) = (&current, lease)
            && l.renewable
            && Instant::now() < l.expires_at()
        {
            match self.renew(http, token).await {
                Ok(new) if matches!(self.method, Method::Token(_)) => return Ok(new),
                Ok(new) if lease_left(&self.state()) >= MIN_USEFUL_TTL => return Ok(new),
                Ok(_) => {} // AppRole token at its max TTL: log in again.
                Err(e) => {
                    tracing::warn!(target: "byokpg::kms", provider = "vault-transit", error = %e, "byokpg: Vault token renewal failed");
                }
            }
        }
        match &self.method {
            Method::AppRole { role_id, secret_id } => {
                match self.login(http, role_id, secret_id).await {
                    Ok(t) => Ok(t),
                    Err(e) => self.keep_current(current, e),
                }
            }
            Method::Token(t) => {
                // A fixed token that cannot be renewed: keep using it, Vault
                // will say when it has expired.
                let mut s = self.state();
                s.retry_at = Some(Instant::now() + RETRY_AFTER);
                if lease.is_some_and(|l| !l.renewable) {
                    tracing::warn!(target: "byokpg::kms", provider = "vault-transit", "byokpg: the Vault token is not renewable and will expire; configure a renewable token or AppRole");
                    s.lease = None;
                }
                Ok(t.clone())
            }
        }
    }

    /// After a failed login: the old token while it lasts, else the error.
    fn keep_current(&self, current: Option<Secret>, e: KmsError) -> Result<Secret, KmsError> {
        tracing::warn!(target: "byokpg::kms", provider = "vault-transit", error = %e, "byokpg: Vault AppRole login failed");
        let mut s = self.state();
        let now = Instant::now();
        let alive = s.lease.is_none_or(|l| now < l.expires_at());
        match current {
            Some(t) if alive => {
                s.retry_at = Some(now + RETRY_AFTER);
                Ok(t)
            }
            _ => Err(e),
        }
    }

    async fn renew(&self, http: &Http, token: &Secret) -> Result<Secret, KmsError> {
        let a: AuthAnswer = http
            .post("auth/token/renew-self", Some(token), &serde_json::json!({}))
            .await?;
        let mut s = self.state();
        s.lease = lease(a.auth.lease_duration, a.auth.renewable);
        s.retry_at = None;
        s.token = Some(a.auth.client_token.clone());
        tracing::debug!(target: "byokpg::kms", provider = "vault-transit", ttl_secs = a.auth.lease_duration, "Vault token renewed");
        Ok(a.auth.client_token)
    }

    async fn login(
        &self,
        http: &Http,
        role_id: &str,
        secret_id: &Secret,
    ) -> Result<Secret, KmsError> {
        let body = Login {
            role_id,
            secret_id: secret_id.expose(),
        };
        let a: AuthAnswer = http.post("auth/approle/login", None, &body).await?;
        let mut s = self.state();
        s.lease = lease(a.auth.lease_duration, a.auth.renewable);
        s.retry_at = None;
        s.token = Some(a.auth.client_token.clone());
        tracing::info!(target: "byokpg::kms", provider = "vault-transit", ttl_secs = a.auth.lease_duration, "byokpg: logged in to Vault with AppRole");
        Ok(a.auth.client_token)
    }

    /// One round of upkeep for the background task; returns how long to
    /// sleep before the next, or `None` when nothing will ever be due.
    pub(super) async fn maintain(&self, http: &Http) -> Option<Duration> {
        let (token, lease, known) = {
            let s = self.state();
            (s.token.clone(), s.lease, s.known)
        };
        match (&self.method, token) {
            (Method::Token(t), _) if !known => match self.lookup(http, t).await {
                Ok(()) => Some(Duration::ZERO),
                Err(e) => {
                    tracing::warn!(target: "byokpg::kms", provider = "vault-transit", error = %e, "byokpg: cannot look up the Vault token's TTL; retrying");
                    Some(POLL)
                }
            },
            (Method::AppRole { .. }, None) => match self.token(http).await {
                Ok(_) => Some(Duration::ZERO),
                Err(_) => Some(POLL),
            },
            (_, _) => match lease {
                None => None,
                Some(l) => {
                    let now = Instant::now();
                    if now >= l.renew_at() {
                        let _ = self.token(http).await;
                        Some(next_wait(&self.state(), now))
                    } else {
                        Some(l.renew_at() - now)
                    }
                }
            },
        }
    }

    async fn lookup(&self, http: &Http, token: &Secret) -> Result<(), KmsError> {
        let a: LookupAnswer = http.get("auth/token/lookup-self", token).await?;
        let mut s = self.state();
        s.lease = lease(a.data.ttl, a.data.renewable);
        s.known = true;
        Ok(())
    }
}

/// What is left of the current lease (`MAX` when it does not expire).
fn lease_left(s: &State) -> Duration {
    s.lease.map_or(Duration::MAX, |l| {
        l.expires_at().saturating_duration_since(Instant::now())
    })
}

/// Sleep until the next renewal, or the retry pause after a failure.
fn next_wait(s: &State, now: Instant) -> Duration {
    let at = match (s.lease, s.retry_at) {
        (_, Some(r)) if r > now => r,
        (Some(l), _) if l.renew_at() > now => l.renew_at(),
        _ => now + RETRY_AFTER,
    };
    at.saturating_duration_since(Instant::now())
        .max(Duration::from_millis(200))
}
