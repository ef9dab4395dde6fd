use std::time::Duration;

use reqwest::StatusCode;

use super::http::{Http, map_status};
use super::{VaultTransit, key_segment};
use crate::config::KmsConfig;
use crate::kms::KmsError;

fn errors(list: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "errors": list })).expect("json")
}

fn mapped(status: u16, list: &[&str]) -> KmsError {
    map_status(StatusCode::from_u16(status).expect("status"), &errors(list))
}

#[test]
fn vault_errors_map_to_the_normalized_set() {
    let cases: &[(u16, &str, &str)] = &[
        (403, "permission denied", "access_denied"),
        (
            403,
            "2 errors occurred:\n\t* permission denied\n\n",
            "access_denied",
        ),
        (400, "encryption key not found", "not_found"),
        (404, "", "not_found"),
        (400, "invalid ciphertext: no prefix", "access_denied"),
        (
            400,
            "cipher: message authentication failed",
            "access_denied",
        ),
        (
            500,
            "cipher: message authentication failed",
            "access_denied",
        ),
        (400, "invalid role or secret ID", "access_denied"),
        (
            400,
            "ciphertext or signature version is disallowed by policy (too old)",
            "key_disabled",
        ),
        (
            429,
            "request path \"transit/decrypt/k\": rate limit quota exceeded",
            "throttled",
        ),
        (503, "Vault is sealed", "unavailable"),
        (500, "internal error", "unavailable"),
        (502, "", "unavailable"),
        (412, "required index state not present", "unavailable"),
        (
            400,
            "signing not supported for key type aes256-gcm96",
            "config",
        ),
    ];
    for (status, text, code) in cases {
        let e = mapped(*status, &[text]);
        assert_eq!(e.code(), *code, "{status} {text:?} → {e}");
        assert!(e.to_string().contains(&format!("HTTP {status}")), "{e}");
    }
}

#[test]
fn error_text_is_vaults_errors_only_bounded_and_on_one_line() {
    let e = mapped(403, &["permission denied", "line\nbreak"]);
    assert_eq!(
        e,
        KmsError::AccessDenied("vault: HTTP 403: permission denied; line break".into())
    );
    let long = "x".repeat(1000);
    let e = mapped(400, &[&long]);
    assert!(e.to_string().len() < 400, "{e}");
    // A body that is not Vault's JSON is not echoed.
    let e = map_status(
        StatusCode::BAD_GATEWAY,
        b"<html>secret-looking proxy page</html>",
    );
    assert_eq!(e, KmsError::Unavailable("vault: HTTP 502".into()));
}

#[test]
fn key_names_are_single_path_segments() {
    for ok in ["acme-kek", "acme_kek.v2", "K1"] {
        assert_eq!(key_segment(ok).expect("valid"), ok);
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../sys/seal",
        "k?x",
        "k#",
        "k%2f",
        "k y",
    ] {
        let e = key_segment(bad).expect_err("invalid");
        assert_eq!(e.code(), "not_found", "{bad:?}");
    }
}

fn cfg(body: &str) -> KmsConfig {
    toml::from_str(&format!("provider = \"vault-transit\"\n{body}")).expect("kms section")
}

#[tokio::test]
async fn config_needs_address_and_exactly_one_auth_method() {
    let refused = [
        ("token = \"t\"", "needs `address`"),
        ("address = \"http://127.0.0.1:1\"", "needs `token`"),
        (
            "address = \"http://127.0.0.1:1\"\ntoken = \"\"",
            "needs `token`",
        ),
        (
            "address = \"http://127.0.0.1:1\"\nrole_id = \"r\"",
            "needs `token`",
        ),
        (
            "address = \"http://127.0.0.1:1\"\ntoken = \"t\"\nrole_id = \"r\"\nsecret_id = \"s\"",
            "not both",
        ),
        (
            "address = \"ftp://x\"\ntoken = \"t\"",
            "http:// or https://",
        ),
        ("address = \"not a url\"\ntoken = \"t\"", "not a URL"),
        (
            "address = \"http://x\"\ntoken = \"t\"\nmount = \"/\"",
            "`mount` is empty",
        ),
    ];
    for (body, why) in refused {
        let e = VaultTransit::from_config("v", &cfg(body))
            .await
            .expect_err(body);
        assert!(matches!(e, KmsError::Config(_)), "{body}: {e}");
        assert!(e.to_string().contains(why), "{body}: {e}");
    }
    for body in [
        "address = \"https://vault.internal:8200\"\ntoken = \"t\"",
        "address = \"http://127.0.0.1:8200/prefix/\"\nrole_id = \"r\"\nsecret_id = \"s\"\nmount = \"/kv/transit/\"\nnamespace = \"team-a\"",
    ] {
        VaultTransit::from_config("v", &cfg(body))
            .await
            .unwrap_or_else(|e| panic!("{body}: {e}"));
    }
}

#[tokio::test]
async fn debug_output_never_shows_the_token_or_secret_id() {
    let token = "hvs.SUPERSECRETTOKENVALUE";
    let secret_id = "9f1c-SECRET-ID-VALUE";
    let a = VaultTransit::from_config(
        "v",
        &cfg(&format!(
            "address = \"http://127.0.0.1:1\"\ntoken = \"{token}\""
        )),
    )
    .await
    .expect("token config");
    let b = VaultTransit::from_config(
        "v",
        &cfg(&format!(
            "address = \"http://127.0.0.1:1\"\nrole_id = \"role-1\"\nsecret_id = \"{secret_id}\""
        )),
    )
    .await
    .expect("approle config");
    let shown = format!("{a:?} {b:?} {a:#?} {b:#?}");
    assert!(!shown.contains("SUPERSECRET"), "{shown}");
    assert!(!shown.contains("SECRET-ID"), "{shown}");
    assert!(
        shown.contains("role-1") && shown.contains("127.0.0.1"),
        "{shown}"
    );
}

#[tokio::test]
async fn a_closed_port_is_unavailable_and_names_the_address_only() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let v = VaultTransit::from_config(
        "v",
        &cfg(&format!(
            "address = \"http://127.0.0.1:{port}\"\ntoken = \"hvs.TOKENVALUE\"\ntimeout = \"2s\""
        )),
    )
    .await
    .expect("config");
    let e = v
        .unwrap("k", b"vault:v1:abcd")
        .await
        .expect_err("closed port");
    assert_eq!(e.code(), "unavailable", "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(
        !text.contains("TOKENVALUE") && !text.contains("/v1/"),
        "{text}"
    );
    // Not a Vault ciphertext: refused before any request.
    let e = v.unwrap("k", b"\x01\x02").await.expect_err("garbage");
    assert_eq!(e.code(), "access_denied", "{e}");
    assert!(Http::new("http://127.0.0.1:1", Some("bad\nns"), Duration::ZERO).is_err());
}
