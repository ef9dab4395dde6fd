//! A faithful local Cloud KMS: an HTTP server speaking the REST v1 wire API
//! byokpg's `gcp-kms` provider uses, with real cryptography and real state.
//!
//! Followed:
//! - https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys/encrypt
//!   (…/decrypt, …/get): paths `v1/{name}:encrypt`, base64 `plaintext` /
//!   `ciphertext` / `additionalAuthenticatedData`, response `name`,
//!   `ciphertext`, `plaintext`, `usedPrimary`, `protectionLevel`.
//! - https://cloud.google.com/kms/docs/reference/rest/v1/projects.locations.keyRings.cryptoKeys.cryptoKeyVersions/asymmetricSign
//!   (…/getPublicKey, …/get): `digest.sha256`, `signature`, `pem`, `algorithm`.
//! - https://cloud.google.com/apis/design/errors: `{"error": {"code",
//!   "message", "status"}}` with the canonical codes; messages copied from
//!   what Cloud KMS answers (e.g. "... is not enabled, current state is:
//!   DISABLED.", "Permission '...' denied on resource '...' (or it may not
//!   exist).", "Decryption failed: the ciphertext is invalid.").
//! - https://developers.google.com/identity/protocols/oauth2/service-account#httprest
//!   and RFC 7523: `POST token_uri` with `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and an RS256 `assertion` whose signature is checked with the service
//!   account's public key; errors `{"error": "invalid_grant", ...}`.
//! - IAM roles https://cloud.google.com/kms/docs/reference/permissions-and-roles:
//!   cryptoKeyEncrypterDecrypter (useToEncrypt/useToDecrypt), signerVerifier
//!   (useToSign, viewPublicKey), viewer (cryptoKeys.get / cryptoKeyVersions.get).
//!
//! Symmetric versions hold an AES-256-GCM key; the ciphertext is opaque to
//! the client (`FKMS` ‖ version ‖ nonce ‖ sealed), as Google's is. Signing
//! versions are EC_SIGN_P256_SHA256 (p256, signing the digest given).
//! Not modelled: CRC32C integrity fields, key rotation schedules, IAM
//! conditions, regional routing.
#![allow(dead_code)]
// Handlers return a ready error reply as `Err`; its size does not matter here.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::pkcs8::{EncodePublicKey, LineEnding};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{Value, json};

/// IAM roles on a key, as granted to the one service account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    EncrypterDecrypter,
    SignerVerifier,
    Viewer,
}

enum Material {
    Aes([u8; 32]),
    Ec(p256::ecdsa::SigningKey),
}

struct Version {
    state: String,
    material: Material,
}

struct Key {
    purpose: &'static str,
    versions: Vec<Version>,
    primary: usize,
    roles: HashSet<Role>,
}

struct StateInner {
    token_url: String,
    sa_email: String,
    /// RSAPublicKey DER of the service account's key.
    sa_public: Vec<u8>,
    sa_enabled: bool,
    tokens: HashSet<String>,
    keys: HashMap<String, Key>,
    calls: HashMap<String, usize>,
}

type Shared = Arc<Mutex<StateInner>>;

/// A running fake; stopped (port closed, connections dropped) by [`GcpFake::stop`].
pub struct GcpFake {
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

impl GcpFake {
    /// Starts on a free port; `sa_public` is the RSAPublicKey DER of the
    /// only service account it knows.
    pub async fn start(sa_email: &str, sa_public: Vec<u8>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Cloud KMS");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(StateInner {
            token_url: format!("http://{addr}/token"),
            sa_email: sa_email.to_owned(),
            sa_public,
            sa_enabled: true,
            tokens: HashSet::new(),
            keys: HashMap::new(),
            calls: HashMap::new(),
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
                .expect("fake Cloud KMS server");
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

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// A symmetric ENCRYPT_DECRYPT key with one ENABLED version, with
    /// `roles` granted to the service account.
    pub fn create_symmetric_key(&self, name: &str, roles: &[Role]) {
        let key = Key {
            purpose: "ENCRYPT_DECRYPT",
            versions: vec![Version {
                state: "ENABLED".into(),
                material: Material::Aes(random()),
            }],
            primary: 0,
            roles: roles.iter().copied().collect(),
        };
        self.lock().keys.insert(name.to_owned(), key);
    }

    /// An ASYMMETRIC_SIGN EC_SIGN_P256_SHA256 key; returns its version 1 name.
    pub fn create_signing_key(&self, name: &str, roles: &[Role]) -> String {
        let sk = p256::ecdsa::SigningKey::from_slice(&random::<32>()).expect("P-256 key");
        let key = Key {
            purpose: "ASYMMETRIC_SIGN",
            versions: vec![Version {
                state: "ENABLED".into(),
                material: Material::Ec(sk),
            }],
            primary: 0,
            roles: roles.iter().copied().collect(),
        };
        self.lock().keys.insert(name.to_owned(), key);
        format!("{name}/cryptoKeyVersions/1")
    }

    /// Sets the state of version 1 (`ENABLED`, `DISABLED`, `DESTROY_SCHEDULED`).
    pub fn set_state(&self, key: &str, state: &str) {
        let mut s = self.lock();
        let k = s.keys.get_mut(key).expect("known key");
        state.clone_into(&mut k.versions[0].state);
    }

    pub fn grant(&self, key: &str, role: Role) {
        self.lock()
            .keys
            .get_mut(key)
            .expect("known key")
            .roles
            .insert(role);
    }

    pub fn revoke(&self, key: &str, role: Role) {
        self.lock()
            .keys
            .get_mut(key)
            .expect("known key")
            .roles
            .remove(&role);
    }

    /// Disables the service account: no new tokens, issued ones rejected.
    pub fn disable_service_account(&self) {
        let mut s = self.lock();
        s.sa_enabled = false;
        s.tokens.clear();
    }

    /// How many requests reached `op` (`token`, `encrypt`, `decrypt`, ...),
    /// successful or not.
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
                .expect("fake Cloud KMS stops within 10 s")
                .expect("fake Cloud KMS task");
        }
    }
}

// ---------------------------------------------------------------------------
// Replies
// ---------------------------------------------------------------------------

fn google(code: StatusCode, status: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code.as_u16(), "message": message, "status": status}});
    (
        code,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: &Value) -> Response {
    (
        StatusCode::OK,
        [("content-type", "application/json; charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn oauth_error(error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn unauthenticated() -> Response {
    google(
        StatusCode::UNAUTHORIZED,
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, \
         login cookie or other valid authentication credential. \
         See https://developers.google.com/identity/sign-in/web/devconsole-project.",
    )
}

fn denied(permission: &str, resource: &str) -> Response {
    google(
        StatusCode::FORBIDDEN,
        "PERMISSION_DENIED",
        &format!(
            "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
        ),
    )
}

fn invalid(message: &str) -> Response {
    google(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
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
    if path == "/token" && method == Method::POST {
        count(&mut s, "token");
        return token(&mut s, &body);
    }
    let Some(rest) = path.strip_prefix("/v1/") else {
        return google(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("The requested URL {path} was not found on this server."),
        );
    };
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !bearer.is_some_and(|t| s.tokens.contains(t)) {
        return unauthenticated();
    }
    let (resource, verb) = match rest.rsplit_once(':') {
        Some((r, v)) if !v.contains('/') => (r.to_owned(), Some(v.to_owned())),
        _ => (rest.to_owned(), None),
    };
    let req: Value = if method == Method::POST {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return invalid(&format!("Invalid JSON payload received. {e}")),
        }
    } else {
        Value::Null
    };
    match (method.as_str(), verb.as_deref()) {
        ("POST", Some("encrypt")) => guarded(&mut s, "encrypt", &resource, |k, name| {
            encrypt(k, name, &req)
        }),
        ("POST", Some("decrypt")) => guarded(&mut s, "decrypt", &resource, |k, name| {
            decrypt(k, name, &req)
        }),
        ("POST", Some("asymmetricSign")) => {
            guarded(&mut s, "asymmetricSign", &resource, |k, name| {
                sign(k, name, &req)
            })
        }
        ("GET", None) if resource.ends_with("/publicKey") => {
            let version = resource.trim_end_matches("/publicKey").to_owned();
            guarded(&mut s, "getPublicKey", &version, public_key)
        }
        ("GET", None) => guarded(&mut s, "get", &resource, get),
        _ => google(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("The requested URL {path} was not found on this server."),
        ),
    }
}

fn count(s: &mut StateInner, op: &str) {
    *s.calls.entry(op.to_owned()).or_default() += 1;
}

/// The IAM permission each method checks, and the role holding it.
fn permission(op: &str) -> (&'static str, Role) {
    match op {
        "encrypt" => (
            "cloudkms.cryptoKeyVersions.useToEncrypt",
            Role::EncrypterDecrypter,
        ),
        "decrypt" => (
            "cloudkms.cryptoKeyVersions.useToDecrypt",
            Role::EncrypterDecrypter,
        ),
        "asymmetricSign" => ("cloudkms.cryptoKeyVersions.useToSign", Role::SignerVerifier),
        "getPublicKey" => (
            "cloudkms.cryptoKeyVersions.viewPublicKey",
            Role::SignerVerifier,
        ),
        _ => ("cloudkms.cryptoKeys.get", Role::Viewer),
    }
}

/// Resolves `resource` (a key, or `KEY/cryptoKeyVersions/N`), checks the
/// service account's role on the key, then runs `f` on the key and the
/// version index (None = the key itself).
fn guarded(
    state: &mut StateInner,
    op: &str,
    resource: &str,
    method: impl FnOnce(&Key, (&str, Option<usize>)) -> Response,
) -> Response {
    count(state, op);
    let (key_name, version) = match resource.split_once("/cryptoKeyVersions/") {
        Some((name, number)) => match number.parse::<usize>() {
            Ok(n) if n >= 1 => (name, Some(n - 1)),
            _ => {
                return invalid(&format!(
                    "Resource name [{resource}] does not match any known type."
                ));
            }
        },
        None => (resource, None),
    };
    let Some(key) = state.keys.get(key_name) else {
        let kind = if version.is_some() {
            "CryptoKeyVersion"
        } else {
            "CryptoKey"
        };
        return google(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("{kind} {resource} not found."),
        );
    };
    let (perm, role) = permission(op);
    if !key.roles.contains(&role) {
        return denied(perm, resource);
    }
    if version.is_some_and(|v| v >= key.versions.len()) {
        return google(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("CryptoKeyVersion {resource} not found."),
        );
    }
    method(key, (key_name, version))
}

// ---------------------------------------------------------------------------
// OAuth 2.0 JWT bearer grant
// ---------------------------------------------------------------------------

fn token(s: &mut StateInner, body: &[u8]) -> Response {
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    if form.get("grant_type").map(String::as_str)
        != Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
    {
        return oauth_error("unsupported_grant_type", "Invalid grant_type: ");
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    if let Err(why) = check_assertion(s, assertion) {
        return oauth_error("invalid_grant", why);
    }
    let token = format!("ya29.fake-{}", hex::encode(random::<16>()));
    s.tokens.insert(token.clone());
    ok(&json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
}

fn check_assertion(s: &StateInner, jwt: &str) -> Result<(), &'static str> {
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else {
        return Err("Invalid JWT: Token must be a short-lived token and in a reasonable timeframe");
    };
    let dec = |p: &str| {
        URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| "Invalid JWT: malformed base64")
    };
    let header: Value = serde_json::from_slice(&dec(h)?).map_err(|_| "Invalid JWT header")?;
    if header["alg"] != "RS256" {
        return Err("Invalid JWT: unsupported algorithm");
    }
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &s.sa_public,
    );
    key.verify(format!("{h}.{c}").as_bytes(), &dec(sig)?)
        .map_err(|_| "Invalid JWT Signature.")?;
    let claims: Value = serde_json::from_slice(&dec(c)?).map_err(|_| "Invalid JWT claims")?;
    if claims["iss"] != s.sa_email.as_str() || !s.sa_enabled {
        return Err("Invalid grant: account not found");
    }
    if claims["aud"] != s.token_url.as_str() {
        return Err("Invalid JWT: audience does not match the token endpoint");
    }
    if !claims["scope"].as_str().is_some_and(|sc| {
        sc.split(' ')
            .any(|x| x == "https://www.googleapis.com/auth/cloudkms")
    }) {
        return Err("Invalid JWT: missing the cloudkms scope");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap_or(0),
        claims["exp"].as_u64().unwrap_or(0),
    );
    if exp <= now || iat > now + 60 || exp - iat > 3600 {
        return Err(
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------

fn field(req: &Value, name: &str) -> Result<Vec<u8>, Response> {
    match &req[name] {
        Value::Null => Ok(Vec::new()),
        Value::String(s) => B64.decode(s).map_err(|_| {
            invalid(&format!(
                "Invalid value at '{name}' (TYPE_BYTES), Base64 decoding failed"
            ))
        }),
        _ => Err(invalid(&format!("Invalid value at '{name}' (TYPE_BYTES)"))),
    }
}

fn version_name(key: &str, index: usize) -> String {
    format!("{key}/cryptoKeyVersions/{}", index + 1)
}

fn not_enabled(key: &str, index: usize, state: &str) -> Response {
    google(
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION",
        &format!(
            "{} is not enabled, current state is: {state}.",
            version_name(key, index)
        ),
    )
}

fn encrypt(k: &Key, (name, version): (&str, Option<usize>), req: &Value) -> Response {
    if k.purpose != "ENCRYPT_DECRYPT" {
        return invalid(&format!(
            "{name} is not a symmetric key (purpose is {}).",
            k.purpose
        ));
    }
    let (plaintext, aad) = match (
        field(req, "plaintext"),
        field(req, "additionalAuthenticatedData"),
    ) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let index = version.unwrap_or(k.primary);
    let v = &k.versions[index];
    if v.state != "ENABLED" {
        return not_enabled(name, index, &v.state);
    }
    let Material::Aes(key) = &v.material else {
        return invalid("not a symmetric key version");
    };
    let nonce = random::<12>();
    let sealed = Aes256Gcm::new(key.into())
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: &plaintext,
                aad: &aad,
            },
        )
        .expect("AES-GCM seal");
    let mut ct = b"FKMS".to_vec();
    ct.extend(u32::try_from(index).expect("small").to_be_bytes());
    ct.extend(nonce);
    ct.extend(sealed);
    ok(&json!({
        "name": version_name(name, index),
        "ciphertext": B64.encode(ct),
        "protectionLevel": "SOFTWARE",
    }))
}

fn decrypt(k: &Key, (name, version): (&str, Option<usize>), req: &Value) -> Response {
    if version.is_some() {
        return invalid(&format!(
            "Resource name [{name}/cryptoKeyVersions/...] does not match a CryptoKey."
        ));
    }
    let (ct, aad) = match (
        field(req, "ciphertext"),
        field(req, "additionalAuthenticatedData"),
    ) {
        (Ok(p), Ok(a)) => (p, a),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let failed = || invalid("Decryption failed: the ciphertext is invalid.");
    if ct.len() < 4 + 4 + 12 + 16 || &ct[..4] != b"FKMS" {
        return failed();
    }
    let index = u32::from_be_bytes(ct[4..8].try_into().expect("4 bytes")) as usize;
    let Some(v) = k.versions.get(index) else {
        return failed();
    };
    if v.state != "ENABLED" {
        return not_enabled(name, index, &v.state);
    }
    let Material::Aes(key) = &v.material else {
        return failed();
    };
    match Aes256Gcm::new(key.into()).decrypt(
        &Nonce::try_from(&ct[8..20]).expect("12 bytes"),
        Payload {
            msg: &ct[20..],
            aad: &aad,
        },
    ) {
        Ok(pt) => ok(&json!({
            "plaintext": B64.encode(pt),
            "usedPrimary": index == k.primary,
            "protectionLevel": "SOFTWARE",
        })),
        Err(_) => failed(),
    }
}

fn sign(k: &Key, (name, version): (&str, Option<usize>), req: &Value) -> Response {
    let Some(index) = version else {
        return invalid(&format!(
            "Resource name [{name}] does not match a CryptoKeyVersion."
        ));
    };
    let v = &k.versions[index];
    if v.state != "ENABLED" {
        return not_enabled(name, index, &v.state);
    }
    let Material::Ec(sk) = &v.material else {
        return invalid(&format!(
            "{} is not an asymmetric signing key.",
            version_name(name, index)
        ));
    };
    let digest = match req["digest"]["sha256"].as_str().map(|d| B64.decode(d)) {
        Some(Ok(d)) if d.len() == 32 => d,
        _ => {
            return invalid(
                "The request digest must be a SHA-256 digest (32 bytes) for algorithm EC_SIGN_P256_SHA256.",
            );
        }
    };
    let sig: p256::ecdsa::Signature = sk.sign_prehash(&digest).expect("sign digest");
    ok(&json!({
        "signature": B64.encode(sig.to_der().as_bytes()),
        "name": version_name(name, index),
        "protectionLevel": "SOFTWARE",
    }))
}

fn public_key(k: &Key, (name, version): (&str, Option<usize>)) -> Response {
    let Some(index) = version else {
        return invalid("getPublicKey needs a CryptoKeyVersion.");
    };
    let Material::Ec(sk) = &k.versions[index].material else {
        return google(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &format!("{} is not an asymmetric key.", version_name(name, index)),
        );
    };
    let pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("PEM");
    ok(&json!({
        "pem": pem,
        "algorithm": "EC_SIGN_P256_SHA256",
        "name": version_name(name, index),
        "protectionLevel": "SOFTWARE",
    }))
}

fn version_json(k: &Key, name: &str, index: usize) -> Value {
    let algorithm = match k.versions[index].material {
        Material::Aes(_) => "GOOGLE_SYMMETRIC_ENCRYPTION",
        Material::Ec(_) => "EC_SIGN_P256_SHA256",
    };
    json!({
        "name": version_name(name, index),
        "state": k.versions[index].state,
        "protectionLevel": "SOFTWARE",
        "algorithm": algorithm,
    })
}

fn get(k: &Key, (name, version): (&str, Option<usize>)) -> Response {
    if let Some(index) = version {
        return ok(&version_json(k, name, index));
    }
    let mut body = json!({"name": name, "purpose": k.purpose});
    if k.purpose == "ENCRYPT_DECRYPT" {
        body["primary"] = version_json(k, name, k.primary);
    }
    ok(&body)
}
