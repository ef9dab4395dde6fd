//! A faithful local Azure Key Vault plus Microsoft Entra token endpoint: an
//! HTTP server speaking the wire API byokpg's `azure-keyvault` provider
//! uses, with real cryptography and real state.
//!
//! Followed:
//! - https://learn.microsoft.com/rest/api/keyvault/keys/wrap-key/wrap-key ,
//!   …/unwrap-key/unwrap-key, …/sign/sign, …/get-key/get-key (7.4):
//!   `POST {vault}/keys/{name}/{version}/wrapkey?api-version=7.4` with
//!   `{"alg", "value"}` (base64url), reply `{"kid", "value"}`; GET reply
//!   `{"key": JWK, "attributes": {"enabled", "created", "updated",
//!   "recoveryLevel"}}`.
//! - https://learn.microsoft.com/azure/key-vault/general/rest-error-codes and
//!   https://learn.microsoft.com/azure/key-vault/general/rbac-guide: error
//!   envelope `{"error": {"code", "message", "innererror": {"code"}}}`, 401
//!   "AKV10000: Request is missing a Bearer or PoP token." with a
//!   `WWW-Authenticate: Bearer authorization=..., resource=...` challenge,
//!   403 `Forbidden`/`ForbiddenByRbac` when the role assignment is gone, 403
//!   `Forbidden`/`KeyDisabled` "Operation unwrapKey is not allowed on a
//!   disabled key.", 404 `KeyNotFound`, 400 `BadParameter`.
//! - https://learn.microsoft.com/entra/identity-platform/v2-oauth2-client-creds-grant-flow:
//!   `POST {authority}/{tenant}/oauth2/v2.0/token`, form `grant_type=client_credentials`,
//!   `client_id`, `client_secret`, `scope=https://vault.azure.net/.default`;
//!   errors `invalid_client` (AADSTS7000215) / `unauthorized_client`
//!   (AADSTS700016) / `invalid_request` (AADSTS90002).
//!
//! Keys: `oct-HSM` 256-bit keys wrapping with A256KW (RFC 3394, `aes-kw`) —
//! the Managed HSM key type — instead of RSA-HSM with RSA-OAEP-256, because
//! the fake would need an RSA decryption implementation that neither ring
//! nor the crate's dependencies offer; byokpg's RSA path differs only in the
//! `alg` string it sends. Signing keys are `EC-HSM` P-256 (ES256, raw r ‖ s).
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::signature::hazmat::PrehashSigner;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

pub const TENANT_ID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
pub const CLIENT_ID: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

enum Material {
    Aes([u8; 32]),
    Ec(p256::ecdsa::SigningKey),
}

struct Key {
    version: String,
    material: Material,
    enabled: bool,
    /// "Key Vault Crypto User" assigned to byokpg's service principal.
    crypto_user: bool,
}

struct StateInner {
    client_secret: String,
    tokens: HashSet<String>,
    keys: HashMap<String, Key>,
    calls: HashMap<String, usize>,
    url: String,
}

type Shared = Arc<Mutex<StateInner>>;

/// A running fake; stopped (port closed, connections dropped) by [`AzureFake::stop`].
pub struct AzureFake {
    pub addr: SocketAddr,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("OS RNG");
    b
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

impl AzureFake {
    /// Starts on a free port; `client_secret` is the service principal's.
    pub async fn start(client_secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Key Vault");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(StateInner {
            client_secret: client_secret.to_owned(),
            tokens: HashSet::new(),
            keys: HashMap::new(),
            calls: HashMap::new(),
            url: format!("http://{addr}"),
        }));
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = rx.await;
                })
                .await
                .expect("fake Key Vault server");
        });
        Self {
            addr,
            state,
            stop: Some(tx),
            task: Some(task),
        }
    }

    fn lock(&self) -> MutexGuard<'_, StateInner> {
        self.state.lock().expect("fake state")
    }

    /// Both the vault URL and the authority host.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn create(&self, name: &str, material: Material) -> String {
        let version = hex::encode(random::<16>());
        let key = Key {
            version: version.clone(),
            material,
            enabled: true,
            crypto_user: true,
        };
        self.lock().keys.insert(name.to_owned(), key);
        format!("{name}/{version}")
    }

    /// An `oct-HSM` key; returns `NAME/VERSION`.
    pub fn create_wrapping_key(&self, name: &str) -> String {
        self.create(name, Material::Aes(random()))
    }

    /// An `EC-HSM` P-256 key; returns `NAME/VERSION`.
    pub fn create_signing_key(&self, name: &str) -> String {
        let sk = p256::ecdsa::SigningKey::from_slice(&random::<32>()).expect("P-256 key");
        self.create(name, Material::Ec(sk))
    }

    pub fn set_enabled(&self, name: &str, enabled: bool) {
        self.lock().keys.get_mut(name).expect("known key").enabled = enabled;
    }

    /// Adds or removes the "Key Vault Crypto User" role assignment.
    pub fn set_crypto_user(&self, name: &str, assigned: bool) {
        self.lock()
            .keys
            .get_mut(name)
            .expect("known key")
            .crypto_user = assigned;
    }

    /// Rotates the service principal's secret: new tokens need it, issued
    /// tokens stay valid until they expire (as in Entra ID).
    pub fn rotate_secret(&self, secret: &str) {
        secret.clone_into(&mut self.lock().client_secret);
    }

    /// Revokes every issued token (the service principal was deleted).
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn calls(&self, op: &str) -> usize {
        self.lock().calls.get(op).copied().unwrap_or(0)
    }

    /// Stops serving: the port is closed and open connections end.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(std::time::Duration::from_secs(10), task)
                .await
                .expect("fake Key Vault stops within 10 s")
                .expect("fake Key Vault task");
        }
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

fn json_reply(code: StatusCode, body: &Value) -> Response {
    (
        code,
        [("content-type", "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn kv_error(code: StatusCode, error: &str, inner: Option<&str>, message: &str) -> Response {
    let mut e = json!({"code": error, "message": message});
    if let Some(i) = inner {
        e["innererror"] = json!({"code": i});
    }
    json_reply(code, &json!({ "error": e }))
}

fn entra_error(code: StatusCode, error: &str, aadsts: u32, description: &str) -> Response {
    json_reply(
        code,
        &json!({
            "error": error,
            "error_description": format!("AADSTS{aadsts}: {description}"),
            "error_codes": [aadsts],
            "timestamp": "2025-01-01 00:00:00Z",
            "trace_id": "00000000-0000-0000-0000-000000000000",
            "correlation_id": "00000000-0000-0000-0000-000000000000",
        }),
    )
}

fn unauthorized(message: &str) -> Response {
    let challenge = format!(
        "Bearer authorization=\"https://login.microsoftonline.com/{TENANT_ID}\", resource=\"https://vault.azure.net\""
    );
    let mut r = kv_error(StatusCode::UNAUTHORIZED, "Unauthorized", None, message);
    r.headers_mut()
        .insert("www-authenticate", challenge.parse().expect("header value"));
    r
}

// ---------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------

async fn handle(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let mut s = state.lock().expect("fake state");
    if method == Method::POST && path == format!("/{TENANT_ID}/oauth2/v2.0/token") {
        *s.calls.entry("token".into()).or_default() += 1;
        return token(&mut s, &body);
    }
    if path.ends_with("/oauth2/v2.0/token") {
        let tenant = path.trim_start_matches('/').split('/').next().unwrap_or("");
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            90002,
            &format!(
                "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID."
            ),
        );
    }
    let Some(rest) = path.strip_prefix("/keys/") else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "NotFound",
            None,
            "The requested resource was not found.",
        );
    };
    let api = uri.query().unwrap_or("");
    if !api
        .split('&')
        .any(|p| p == "api-version=7.4" || p == "api-version=7.5")
    {
        return kv_error(
            StatusCode::BAD_REQUEST,
            "BadParameter",
            None,
            "The request URI contains an invalid or missing api-version.",
        );
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match bearer {
        None => return unauthorized("AKV10000: Request is missing a Bearer or PoP token."),
        Some(t) if !s.tokens.contains(t) => {
            return unauthorized(
                "AKV10022: Invalid audience or token. The token is expired or not issued for this vault.",
            );
        }
        Some(_) => {}
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let (name, version, op) = match (method.as_str(), parts.as_slice()) {
        ("GET", &[n, v]) => (n, v, "get"),
        ("POST", &[n, v, op @ ("wrapkey" | "unwrapkey" | "sign")]) => (n, v, op),
        _ => {
            return kv_error(
                StatusCode::BAD_REQUEST,
                "BadParameter",
                None,
                "The request URI is not valid.",
            );
        }
    };
    *s.calls.entry(op.to_owned()).or_default() += 1;
    let url = s.url.clone();
    let Some(key) = s.keys.get(name).filter(|k| k.version == version) else {
        return kv_error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            None,
            &format!(
                "A key with (name/id) {name}/{version} was not found in this key vault. If you recently deleted this key you may be able to recover it using the correct recovery command. For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182"
            ),
        );
    };
    let kid = format!("{url}/keys/{name}/{version}");
    if !key.crypto_user {
        let action = match op {
            "get" => "read",
            "wrapkey" => "wrap/action",
            "unwrapkey" => "unwrap/action",
            _ => "sign/action",
        };
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("ForbiddenByRbac"),
            &format!(
                "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nCaller: appid={CLIENT_ID};oid=5f3c1e2a-0000-0000-0000-000000000000;iss=https://sts.windows.net/{TENANT_ID}/\r\nAction: 'Microsoft.KeyVault/vaults/keys/{action}'\r\nResource: '/subscriptions/x/resourcegroups/byokpg/providers/microsoft.keyvault/vaults/fake/keys/{name}'\r\nAssignment: (not found)\r\nDenyAssignmentId: null\r\nDecisionReason: null \r\nVault: fake;location=westeurope\r\n"
            ),
        );
    }
    if !key.enabled {
        let opname = match op {
            "get" => "get",
            "wrapkey" => "wrapKey",
            "unwrapkey" => "unwrapKey",
            _ => "sign",
        };
        return kv_error(
            StatusCode::FORBIDDEN,
            "Forbidden",
            Some("KeyDisabled"),
            &format!("Operation {opname} is not allowed on a disabled key."),
        );
    }
    if op == "get" {
        return json_reply(StatusCode::OK, &bundle(key, &kid));
    }
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return bad_parameter("The request body is not valid JSON."),
    };
    key_operation(key, &kid, op, &req)
}

fn bad_parameter(message: &str) -> Response {
    kv_error(StatusCode::BAD_REQUEST, "BadParameter", None, message)
}

fn bundle(key: &Key, kid: &str) -> Value {
    let t = now();
    let jwk = match &key.material {
        Material::Aes(_) => {
            json!({"kid": kid, "kty": "oct-HSM", "key_ops": ["wrapKey", "unwrapKey"]})
        }
        Material::Ec(sk) => {
            let point = sk.verifying_key().to_sec1_point(false);
            let bytes = point.as_bytes();
            json!({
                "kid": kid, "kty": "EC-HSM", "crv": "P-256", "key_ops": ["sign", "verify"],
                "x": B64URL.encode(&bytes[1..33]), "y": B64URL.encode(&bytes[33..65]),
            })
        }
    };
    json!({
        "key": jwk,
        "attributes": {"enabled": key.enabled, "created": t, "updated": t,
                       "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90},
    })
}

fn key_operation(key: &Key, kid: &str, op: &str, req: &Value) -> Response {
    let alg = req["alg"].as_str().unwrap_or("");
    let Some(value) = req["value"]
        .as_str()
        .and_then(|v| B64URL.decode(v.trim_end_matches('=')).ok())
    else {
        return bad_parameter("Property 'value' is required and must be base64url.");
    };
    let out = match (&key.material, op, alg) {
        (Material::Aes(k), "wrapkey", "A256KW") => {
            if value.len() % 8 != 0 || value.len() < 16 {
                return bad_parameter("The parameter is incorrect.");
            }
            let mut buf = vec![0u8; value.len() + 8];
            let kw = <aes_kw::KwAes256 as aes_kw::KeyInit>::new(k.into());
            kw.wrap_key(&value, &mut buf).expect("AES-KW wrap").to_vec()
        }
        (Material::Aes(k), "unwrapkey", "A256KW") => {
            if value.len() % 8 != 0 || value.len() < 24 {
                return bad_parameter("The parameter is incorrect.");
            }
            let mut buf = vec![0u8; value.len() - 8];
            let kw = <aes_kw::KwAes256 as aes_kw::KeyInit>::new(k.into());
            match kw.unwrap_key(&value, &mut buf) {
                Ok(pt) => pt.to_vec(),
                Err(_) => return bad_parameter("The parameter is incorrect."),
            }
        }
        (Material::Ec(sk), "sign", "ES256") => {
            if value.len() != 32 {
                return bad_parameter("Invalid digest length for ES256; expected 32 bytes.");
            }
            let sig: p256::ecdsa::Signature = sk.sign_prehash(&value).expect("sign digest");
            sig.to_bytes().to_vec()
        }
        _ => {
            return bad_parameter(&format!(
                "Algorithm '{alg}' is not supported by operation {op} on this key type."
            ));
        }
    };
    json_reply(
        StatusCode::OK,
        &json!({"kid": kid, "value": B64URL.encode(out)}),
    )
}

// ---------------------------------------------------------------------------
// Entra ID client credentials
// ---------------------------------------------------------------------------

fn token(s: &mut StateInner, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let get = |k: &str| form.get(k).map_or("", String::as_str);
    if get("grant_type") != "client_credentials" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if get("client_id") != CLIENT_ID {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            700_016,
            &format!(
                "Application with identifier '{}' was not found in the directory.",
                get("client_id")
            ),
        );
    }
    if get("client_secret") != s.client_secret {
        return entra_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7_000_215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID.",
        );
    }
    if get("scope") != "https://vault.azure.net/.default" {
        return entra_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            1_002_012,
            "The provided value for scope is not valid.",
        );
    }
    let token = format!("eyJ0eXAiOiJKV1QifQ.fake-{}", hex::encode(random::<16>()));
    s.tokens.insert(token.clone());
    json_reply(
        StatusCode::OK,
        &json!({"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}),
    )
}
