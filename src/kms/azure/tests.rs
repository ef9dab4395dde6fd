use super::keys::{KeyMeta, key_path};
use super::wire::{Jwk, map_error};
use super::*;
use crate::kms::http::Reply;

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: bytes::Bytes::from(body.to_owned()),
        retry_after: None,
    }
}

fn kv(status: u16, code: &str, inner: Option<&str>, message: &str) -> Reply {
    let mut error = serde_json::json!({"code": code, "message": message});
    if let Some(i) = inner {
        error["innererror"] = serde_json::json!({"code": i});
    }
    reply(status, &serde_json::json!({ "error": error }).to_string())
}

#[test]
fn key_vault_errors_map_to_the_kms_error_set() {
    let rbac = "Caller is not authorized to perform action on resource.\r\nIf role assignments, deny assignments or role definitions were changed recently, please observe propagation time.\r\nAction: 'Microsoft.KeyVault/vaults/keys/unwrap/action'";
    let cases = [
        (
            kv(
                401,
                "Unauthorized",
                None,
                "AKV10000: Request is missing a Bearer or PoP token.",
            ),
            "access_denied",
        ),
        (
            kv(403, "Forbidden", Some("ForbiddenByRbac"), rbac),
            "access_denied",
        ),
        (
            kv(
                403,
                "Forbidden",
                Some("ForbiddenByPolicy"),
                "The user, group or application does not have keys unwrapKey permission",
            ),
            "access_denied",
        ),
        (
            kv(
                403,
                "Forbidden",
                Some("KeyDisabled"),
                "Operation unwrapKey is not allowed on a disabled key.",
            ),
            "key_disabled",
        ),
        (
            kv(
                403,
                "Forbidden",
                None,
                "Operation wrapKey is not allowed on a disabled key.",
            ),
            "key_disabled",
        ),
        (
            kv(
                404,
                "KeyNotFound",
                None,
                "A key with (name/id) k was not found in this key vault. If you recently deleted this key you may be able to recover it",
            ),
            "not_found",
        ),
        (
            kv(
                409,
                "Conflict",
                Some("ObjectIsDeletedButRecoverable"),
                "Key k is currently in a deleted but recoverable state",
            ),
            "key_destroyed",
        ),
        (
            kv(
                429,
                "Throttled",
                None,
                "Request was not processed because too many requests were received.",
            ),
            "throttled",
        ),
        (kv(500, "InternalServerError", None, "boom"), "unavailable"),
        (
            kv(503, "ServiceUnavailable", None, "try later"),
            "unavailable",
        ),
        (reply(502, "<html>Bad Gateway</html>"), "unavailable"),
    ];
    for (r, code) in cases {
        let e = map_error("Key Vault get key", &r);
        assert_eq!(e.code(), code, "{e} from HTTP {}", r.status);
    }
    let bad = kv(400, "BadParameter", None, "The parameter is incorrect.");
    assert_eq!(
        map_error("Key Vault unwrapkey", &bad).code(),
        "access_denied"
    );
    assert_eq!(map_error("Key Vault wrapkey", &bad).code(), "config");
    let e = map_error(
        "Key Vault unwrapkey",
        &kv(403, "Forbidden", Some("ForbiddenByRbac"), rbac),
    );
    assert!(!e.to_string().contains('\r'), "{e}");
    assert!(e.to_string().contains("Forbidden/ForbiddenByRbac"), "{e}");
    let mut throttled = kv(429, "Throttled", None, "slow down");
    throttled.retry_after = Some("7".into());
    assert!(
        map_error("x", &throttled)
            .to_string()
            .contains("Retry-After: 7")
    );
}

#[test]
fn key_references_must_be_pinned_and_in_the_vault() {
    let host = "contoso.vault.azure.net";
    assert_eq!(
        key_path("tenant-a/0123abcd", host).as_deref(),
        Ok("tenant-a/0123abcd")
    );
    assert_eq!(
        key_path(
            "https://contoso.vault.azure.net/keys/tenant-a/0123abcd",
            host
        )
        .as_deref(),
        Ok("tenant-a/0123abcd")
    );
    assert_eq!(
        key_path("tenant-a", host).map_err(|e| e.code()),
        Err("config")
    );
    assert_eq!(
        key_path("https://evil.example/keys/tenant-a/1", host).map_err(|e| e.code()),
        Err("config")
    );
    for bad in [
        "",
        "a/b/c",
        "a/../b",
        "a/b?x=1",
        "a b/c",
        "https://contoso.vault.azure.net/secrets/a/b",
    ] {
        assert!(key_path(bad, host).is_err(), "{bad}");
    }
}

#[test]
fn scope_follows_the_vault_cloud() {
    assert_eq!(
        scope_for("contoso.vault.azure.net"),
        "https://vault.azure.net/.default"
    );
    assert_eq!(
        scope_for("contoso.vault.azure.cn"),
        "https://vault.azure.cn/.default"
    );
    assert_eq!(
        scope_for("hsm1.managedhsm.azure.net"),
        "https://managedhsm.azure.net/.default"
    );
    assert_eq!(scope_for("127.0.0.1"), "https://vault.azure.net/.default");
}

#[test]
fn algorithms_follow_the_key_type() {
    let meta = |kty: &str, crv: Option<&str>| {
        KeyMeta::from_jwk(Jwk {
            kty: kty.into(),
            crv: crv.map(Into::into),
            ..Jwk::default()
        })
    };
    assert_eq!(meta("RSA-HSM", None).wrap_alg(), Ok("RSA-OAEP-256"));
    assert_eq!(meta("oct-HSM", None).wrap_alg(), Ok("A256KW"));
    assert!(meta("EC", Some("P-256")).wrap_alg().is_err());
    assert_eq!(meta("EC-HSM", Some("P-256")).sign_alg(), Ok("ES256"));
    assert_eq!(meta("RSA", None).sign_alg(), Ok("PS256"));
    assert!(meta("EC", Some("P-384")).sign_alg().is_err());
}

#[test]
fn es256_verifies_locally_with_the_jwk() {
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("gen");
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
        .expect("pair");
    let point = pair.public_key().as_ref();
    let enc = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let meta = KeyMeta::from_jwk(Jwk {
        kty: "EC-HSM".into(),
        crv: Some("P-256".into()),
        x: Some(enc(&point[1..33])),
        y: Some(enc(&point[33..])),
        ..Jwk::default()
    });
    let sig = pair.sign(&rng, b"msg").expect("sign");
    assert_eq!(meta.verify("ES256", b"msg", sig.as_ref()), Ok(true));
    assert_eq!(meta.verify("ES256", b"other", sig.as_ref()), Ok(false));
    assert_eq!(meta.verify("PS256", b"msg", sig.as_ref()), Ok(false));
}
