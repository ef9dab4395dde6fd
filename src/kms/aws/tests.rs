//! Unit tests of the aws-kms provider against a loopback fake of KMS (and
//! STS) that answers with AWS's real wire format: awsJson1.1 for KMS
//! (`X-Amz-Target: TrentService.*`, errors as `{"__type": ..., "message": ...}`),
//! awsQuery XML for STS. moto (the e2e tests) cannot produce these errors:
//! it does not enforce disabled keys, deletion or grants.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_credential_types::Credentials;
use aws_sdk_kms::config::SharedCredentialsProvider;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::errors::classify;
use super::{AwsKms, ENCRYPTION_CONTEXT, base_sdk_config};
use crate::config::KmsConfig;
use crate::crypto::Dek;
use crate::kms::{Kms, KmsBackend, KmsError, RetryPolicy, Signature};

const KEY: &str = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
const ACCESS_KEY: &str = "AKIDBYOKPGTEST";
const SECRET_KEY: &str = "byokpg-test-secret-key-never-shown";
const ASSUMED_KEY: &str = "ASIABYOKPGASSUMED";
const SESSION_TOKEN: &str = "byokpg-session-token-never-shown";
const EXTERNAL_ID: &str = "byokpg-ext-42";

/// One request the fake saw.
#[derive(Debug, Clone)]
struct Seen {
    /// `X-Amz-Target` (KMS) or `Action=...` (STS).
    target: String,
    body: String,
    authorization: String,
    token: Option<String>,
}

type Responder = dyn Fn(&Seen) -> (u16, String) + Send + Sync;

struct Fake {
    respond: Box<Responder>,
    seen: Mutex<Vec<Seen>>,
}

async fn handle(
    State(fake): State<Arc<Fake>>,
    headers: HeaderMap,
    body: String,
) -> axum::response::Response {
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let target = header("x-amz-target").unwrap_or_else(|| {
        url::form_urlencoded::parse(body.as_bytes())
            .find(|(k, _)| k == "Action")
            .map(|(_, v)| format!("sts.{v}"))
            .unwrap_or_default()
    });
    let seen = Seen {
        target,
        body,
        authorization: header("authorization").unwrap_or_default(),
        token: header("x-amz-security-token"),
    };
    let (status, reply) = (fake.respond)(&seen);
    fake.seen.lock().expect("seen lock").push(seen.clone());
    let content_type = if seen.target.starts_with("sts.") {
        "text/xml"
    } else {
        "application/x-amz-json-1.1"
    };
    axum::response::Response::builder()
        .status(StatusCode::from_u16(status).expect("status"))
        .header("content-type", content_type)
        .body(axum::body::Body::from(reply))
        .expect("response")
}

/// Starts the fake on a free loopback port; returns its URL.
async fn start(
    respond: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
) -> (String, Arc<Fake>) {
    let fake = Arc::new(Fake {
        respond: Box::new(respond),
        seen: Mutex::new(Vec::new()),
    });
    let app = axum::Router::new()
        .route("/", axum::routing::post(handle))
        .with_state(Arc::clone(&fake));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), fake)
}

/// An awsJson1.1 error body, as KMS sends it.
fn aws_error(code: &str, message: &str) -> String {
    serde_json::json!({ "__type": code, "message": message }).to_string()
}

fn config(endpoint: &str, extra: &str) -> KmsConfig {
    toml::from_str(&format!(
        "provider = \"aws-kms\"\nregion = \"eu-west-1\"\nendpoint = \"{endpoint}\"\n{extra}"
    ))
    .expect("kms config")
}

/// The provider pointed at `endpoint` (KMS and STS), with fixed keys.
async fn provider(endpoint: &str, extra: &str) -> AwsKms {
    let creds = Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "byokpg-tests");
    let base = base_sdk_config(
        "eu-west-1",
        Some(SharedCredentialsProvider::new(creds)),
        Some(endpoint),
    )
    .await;
    AwsKms::with_base("test", &config(endpoint, extra), "eu-west-1".into(), base).await
}

/// A provider whose every call gets `status` + `body`.
async fn failing(status: u16, body: String) -> (AwsKms, Arc<Fake>) {
    let (url, fake) = start(move |_| (status, body.clone())).await;
    (provider(&url, "").await, fake)
}

async fn unwrap_error(status: u16, body: String) -> KmsError {
    let (kms, _fake) = failing(status, body).await;
    kms.unwrap(KEY, b"wrapped-dek")
        .await
        .expect_err("the fake refuses")
}

#[tokio::test]
async fn disabled_key_is_key_disabled() {
    let msg = format!("{KEY} is disabled.");
    let e = unwrap_error(400, aws_error("DisabledException", &msg)).await;
    assert_eq!(
        e,
        KmsError::KeyDisabled(format!("Decrypt: DisabledException: {msg}"))
    );
    assert_eq!(e.sqlstate(), "58000");
}

#[tokio::test]
async fn access_denied_is_matched_by_code() {
    // KMS spells the field `Message` for this one; the SDK reads both.
    let msg = "User: arn:aws:sts::444455556666:assumed-role/byokpg/x is not authorized to perform: kms:Decrypt on this resource because the resource does not exist in this Region, no resource-based policies allow access, or a resource-based policy explicitly denies access";
    let body = serde_json::json!({ "__type": "AccessDeniedException", "Message": msg }).to_string();
    let e = unwrap_error(400, body).await;
    assert_eq!(
        e,
        KmsError::AccessDenied(format!("Decrypt: AccessDeniedException: {msg}"))
    );
}

#[tokio::test]
async fn key_unavailable_500_is_unavailable() {
    let e = unwrap_error(
        500,
        aws_error("KeyUnavailableException", "The key is unavailable"),
    )
    .await;
    assert!(
        matches!(e, KmsError::Unavailable(ref t) if t.contains("KeyUnavailableException")),
        "{e:?}"
    );
    assert_eq!(e.sqlstate(), "58030");
}

#[tokio::test]
async fn throttling_and_limit_exceeded_are_throttled() {
    let e = unwrap_error(400, aws_error("ThrottlingException", "Rate exceeded")).await;
    assert_eq!(
        e,
        KmsError::Throttled("Decrypt: ThrottlingException: Rate exceeded".into())
    );
    let e = unwrap_error(400, aws_error("LimitExceededException", "quota")).await;
    assert!(matches!(e, KmsError::Throttled(_)), "{e:?}");
    let e = unwrap_error(429, String::new()).await;
    assert!(matches!(e, KmsError::Throttled(_)), "{e:?}");
}

#[tokio::test]
async fn invalid_state_is_destroyed_when_pending_deletion_else_disabled() {
    let pending = format!("{KEY} is pending deletion.");
    let e = unwrap_error(400, aws_error("KMSInvalidStateException", &pending)).await;
    assert_eq!(
        e,
        KmsError::KeyDestroyed(format!("Decrypt: KMSInvalidStateException: {pending}"))
    );
    let import = format!("{KEY} is pending import.");
    let e = unwrap_error(400, aws_error("KMSInvalidStateException", &import)).await;
    assert!(matches!(e, KmsError::KeyDisabled(_)), "{e:?}");
}

#[tokio::test]
async fn not_found_wrong_kek_and_bad_usage() {
    let e = unwrap_error(
        400,
        aws_error("NotFoundException", "Key 'x' does not exist"),
    )
    .await;
    assert!(matches!(e, KmsError::NotFound(_)), "{e:?}");
    for code in ["InvalidCiphertextException", "IncorrectKeyException"] {
        let e = unwrap_error(400, aws_error(code, "")).await;
        assert_eq!(
            e,
            KmsError::AccessDenied(format!("Decrypt: {code} (HTTP 400)"))
        );
    }
    let e = unwrap_error(
        400,
        aws_error("InvalidKeyUsageException", "not ENCRYPT_DECRYPT"),
    )
    .await;
    assert!(matches!(e, KmsError::Config(_)), "{e:?}");
}

#[tokio::test]
async fn unparseable_5xx_and_closed_port_are_unavailable() {
    let e = unwrap_error(503, "<html>Service Unavailable</html>".into()).await;
    assert!(matches!(e, KmsError::Unavailable(_)), "{e:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let kms = provider(&format!("http://127.0.0.1:{port}"), "").await;
    let e = kms.unwrap(KEY, b"x").await.expect_err("nothing listens");
    assert!(
        matches!(e, KmsError::Unavailable(ref t) if t.starts_with("Decrypt: cannot reach AWS KMS")),
        "{e:?}"
    );
}

#[test]
fn classify_covers_every_documented_code() {
    let cases: &[(&str, u16, &str)] = &[
        ("AccessDeniedException", 400, "access_denied"),
        ("UnrecognizedClientException", 400, "access_denied"),
        ("ExpiredTokenException", 400, "access_denied"),
        ("InvalidGrantTokenException", 400, "access_denied"),
        ("DisabledException", 400, "key_disabled"),
        ("KMSInvalidStateException", 400, "key_disabled"),
        ("NotFoundException", 400, "not_found"),
        ("InvalidArnException", 400, "not_found"),
        ("ThrottlingException", 400, "throttled"),
        ("LimitExceededException", 400, "throttled"),
        ("KeyUnavailableException", 500, "unavailable"),
        ("DependencyTimeoutException", 503, "unavailable"),
        ("KMSInternalException", 500, "unavailable"),
        ("SomethingNew", 503, "unavailable"),
        ("SomethingNew", 429, "throttled"),
        ("SomethingNew", 403, "access_denied"),
        ("SomethingNew", 400, "config"),
    ];
    for (code, status, want) in cases {
        let e = classify("Decrypt", Some(code), Some("m"), *status);
        assert_eq!(e.code(), *want, "{code} {status} → {e:?}");
        assert!(
            e.to_string().contains(&format!("Decrypt: {code}: m")),
            "{e}"
        );
    }
    let e = classify(
        "Decrypt",
        Some("KMSInvalidStateException"),
        Some("key is PendingReplicaDeletion"),
        400,
    );
    assert!(matches!(e, KmsError::KeyDestroyed(_)), "{e:?}");
}

mod wire;
