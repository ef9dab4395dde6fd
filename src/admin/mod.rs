//! Admin HTTP server (SPEC §9, §3 `admin_listen` / `admin_token`, §7 evict).
//!
//! Routes:
//! - `GET /metrics` — Prometheus text exposition.
//! - `GET /healthz` — 200 `ok` while the process serves.
//! - `GET /readyz` — 200 `ready` when every region is reachable, else 503
//!   with one reason per line.
//! - `POST /admin/reload` — re-read the config file.
//! - `POST /admin/tenants/{tenant}/evict` — drop the tenant's cached DEKs.
//!
//! Admin POSTs need `Authorization: Bearer <admin_token>` and answer JSON.
//! The server owns no state: everything it acts on goes through
//! [`AdminHooks`], which the server module implements over the live config.

mod auth;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use auth::AuthError;

/// What the admin server needs from the running proxy.
pub trait AdminHooks: Send + Sync + 'static {
    /// Ok when every region is reachable; Err(list of "region: reason").
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), Vec<String>>> + Send + '_>>;
    /// Re-read the config file; Err(message) when refused.
    fn reload(&self) -> Result<(), String>;
    /// Drop the tenant's cached keys; Err if unknown tenant. (returns number of entries dropped)
    fn evict_tenant(&self, tenant: &str) -> Result<usize, String>;
    /// Current admin token (it can change on reload); None = admin API disabled.
    fn admin_token(&self) -> Option<String>;
}

/// Errors the admin API answers with; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("byokpg: unknown tenant: {0}")]
    UnknownTenant(String),
    #[error("byokpg: reload refused, the previous configuration stays: {0}")]
    ReloadRefused(String),
    #[error("byokpg: reload failed: {0}")]
    Internal(String),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Auth(AuthError::Missing) => StatusCode::UNAUTHORIZED,
            AdminError::Auth(_) => StatusCode::FORBIDDEN,
            AdminError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            // The request is fine; the file it points at is not.
            AdminError::ReloadRefused(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut resp = json_response(status, &json!({ "error": self.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3: a 401 tells the client which scheme to use.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"byokpg\""),
            );
        }
        resp
    }
}

/// A readiness check that hangs (a region black-holing SYNs) must still give
/// the orchestrator an answer well inside its probe timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

type Hooks = Arc<dyn AdminHooks>;

/// Serve the admin API on `listener` until `shutdown` resolves; in-flight
/// requests are allowed to finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    hooks: Arc<dyn AdminHooks>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    crate::metrics::install();
    axum::serve(listener, router(hooks))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The admin router, exposed so it can be mounted or tested on its own.
pub fn router(hooks: Arc<dyn AdminHooks>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/admin/reload", post(reload))
        .route("/admin/tenants/{tenant}/evict", post(evict))
        .fallback(not_found)
        .with_state(hooks)
}

async fn metrics_text() -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)],
        crate::metrics::render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(hooks): State<Hooks>) -> Response {
    match tokio::time::timeout(READY_TIMEOUT, hooks.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready").into_response(),
        Ok(Err(reasons)) => {
            let mut body = String::from("not ready\n");
            for reason in reasons {
                body.push_str(&reason);
                body.push('\n');
            }
            (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready\nreadiness check timed out after {}s\n",
                READY_TIMEOUT.as_secs()
            ),
        )
            .into_response(),
    }
}

async fn reload(State(hooks): State<Hooks>, headers: HeaderMap) -> Result<Response, AdminError> {
    authorize(hooks.as_ref(), &headers, "reload")?;
    // Re-reading and validating the config is blocking file I/O.
    let worker = Arc::clone(&hooks);
    let outcome = tokio::task::spawn_blocking(move || worker.reload())
        .await
        .map_err(|e| AdminError::Internal(e.to_string()))?;
    match outcome {
        Ok(()) => {
            tracing::info!("byokpg: configuration reloaded via admin API");
            Ok(json_response(StatusCode::OK, &json!({ "ok": true })))
        }
        Err(msg) => {
            tracing::warn!("byokpg: admin reload refused: {msg}");
            Err(AdminError::ReloadRefused(msg))
        }
    }
}

async fn evict(
    State(hooks): State<Hooks>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AdminError> {
    authorize(hooks.as_ref(), &headers, "evict")?;
    match hooks.evict_tenant(&tenant) {
        Ok(evicted) => {
            tracing::info!(tenant = %tenant, evicted, "byokpg: tenant keys evicted via admin API");
            let body = json!({ "ok": true, "tenant": tenant, "evicted": evicted });
            Ok(json_response(StatusCode::OK, &body))
        }
        Err(msg) => {
            tracing::warn!(tenant = %tenant, "byokpg: admin evict refused: {msg}");
            Err(AdminError::UnknownTenant(tenant))
        }
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "byokpg: not found\n").into_response()
}

/// Check the bearer token, logging refusals (never the token itself).
fn authorize(hooks: &dyn AdminHooks, headers: &HeaderMap, action: &str) -> Result<(), AdminError> {
    let expected = hooks.admin_token().map(zeroize::Zeroizing::new);
    auth::check(headers, expected.as_deref().map(String::as_str)).map_err(|e| {
        tracing::warn!(action, "byokpg: admin request refused: {e}");
        AdminError::Auth(e)
    })
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests;
