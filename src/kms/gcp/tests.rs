use base64::Engine as _;
use rustls_pki_types::pem::PemObject as _;

use super::wire::map_error;
use super::*;
use crate::kms::http::Reply;

const TEST_KEY: &str = include_str!("../../../tests/fixtures/gcp-test-sa-key.pem");

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        status,
        body: bytes::Bytes::from(body.to_owned()),
        retry_after: None,
    }
}

fn google(code: u16, status: &str, message: &str) -> Reply {
    let body = serde_json::json!({"error": {"code": code, "message": message, "status": status}});
    reply(code, &body.to_string())
}

#[test]
fn google_errors_map_to_the_kms_error_set() {
    let cases = [
        (
            google(
                403,
                "PERMISSION_DENIED",
                "Permission 'cloudkms.cryptoKeyVersions.useToDecrypt' denied on resource",
            ),
            "access_denied",
        ),
        (
            google(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials.",
            ),
            "access_denied",
        ),
        (
            google(
                400,
                "FAILED_PRECONDITION",
                "projects/p/.../cryptoKeyVersions/1 is not enabled, current state is: DISABLED.",
            ),
            "key_disabled",
        ),
        (
            google(
                400,
                "FAILED_PRECONDITION",
                "projects/p/.../cryptoKeyVersions/1 is not enabled, current state is: DESTROYED.",
            ),
            "key_destroyed",
        ),
        (
            google(
                400,
                "FAILED_PRECONDITION",
                "projects/p/.../cryptoKeyVersions/1 is not enabled, current state is: DESTROY_SCHEDULED.",
            ),
            "key_destroyed",
        ),
        (
            google(
                404,
                "NOT_FOUND",
                "CryptoKey projects/p/locations/l/keyRings/r/cryptoKeys/k not found.",
            ),
            "not_found",
        ),
        (
            google(429, "RESOURCE_EXHAUSTED", "Quota exceeded"),
            "throttled",
        ),
        (
            google(503, "UNAVAILABLE", "The service is currently unavailable."),
            "unavailable",
        ),
        (google(500, "INTERNAL", "Internal error"), "unavailable"),
        (
            google(
                400,
                "INVALID_ARGUMENT",
                "Decryption failed: the ciphertext is invalid.",
            ),
            "access_denied",
        ),
        (
            google(400, "INVALID_ARGUMENT", "Invalid resource name"),
            "config",
        ),
        (reply(502, "<html>Bad Gateway</html>"), "unavailable"),
        (reply(429, ""), "throttled"),
        (reply(404, "not json"), "not_found"),
    ];
    for (r, code) in cases {
        let e = map_error("op", &r);
        assert_eq!(e.code(), code, "{e} from HTTP {}", r.status);
    }
    let e = map_error(
        "Cloud KMS decrypt",
        &google(403, "PERMISSION_DENIED", "denied on resource X"),
    );
    assert_eq!(
        e.to_string(),
        "access denied by the KMS (Cloud KMS decrypt: PERMISSION_DENIED denied on resource X)"
    );
}

#[test]
fn key_names_are_checked() {
    let key = "projects/p-1/locations/europe-west1/keyRings/r_1/cryptoKeys/k.1";
    assert_eq!(resource(key), Ok(Resource::Key));
    let version = format!("{key}/cryptoKeyVersions/3");
    assert_eq!(resource(&version), Ok(Resource::Version));
    assert_eq!(crypto_key(&version), key);
    assert_eq!(crypto_key(key), key);
    for bad in [
        "",
        "alias/foo",
        "projects/p/locations/l/keyRings/r/cryptoKeys/",
        "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions",
        "projects/p/locations/l/keyRings/r/cryptoKeys/k?x=1",
        "projects/p/locations/l/keyRings/../cryptoKeys/k#",
        "projects/p/regions/l/keyRings/r/cryptoKeys/k",
    ] {
        assert_eq!(
            resource(bad).map_err(|e| e.code()),
            Err("not_found"),
            "{bad}"
        );
    }
}

#[test]
fn service_account_file_is_parsed_and_signs_a_verifiable_jwt() {
    let json = serde_json::json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "kid-1",
        "private_key": TEST_KEY,
        "client_email": "byokpg@p.iam.gserviceaccount.com",
        "token_uri": "http://127.0.0.1:9/token",
    });
    let sa = ServiceAccount::parse(&json.to_string()).expect("valid key file");
    let jwt = sa.assertion().expect("signs");
    let parts: Vec<&str> = jwt.split('.').collect();
    assert_eq!(parts.len(), 3);
    let dec = |s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .expect("base64url")
    };
    let claims: serde_json::Value = serde_json::from_slice(&dec(parts[1])).expect("json");
    assert_eq!(claims["iss"], "byokpg@p.iam.gserviceaccount.com");
    assert_eq!(claims["aud"], "http://127.0.0.1:9/token");
    assert_eq!(claims["scope"], auth::SCOPE);
    let header: serde_json::Value = serde_json::from_slice(&dec(parts[0])).expect("json");
    assert_eq!(header["kid"], "kid-1");
    assert_eq!(header["alg"], "RS256");
    // The signature verifies with the key's public half.
    let der =
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("pem");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("rsa");
    let public = ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        pair.public().as_ref(),
    );
    let signed = format!("{}.{}", parts[0], parts[1]);
    public
        .verify(signed.as_bytes(), &dec(parts[2]))
        .expect("signature verifies");
    // Debug shows who, not the key.
    let dbg = format!("{sa:?}");
    assert!(
        dbg.contains("byokpg@p.iam") && !dbg.contains("PRIVATE"),
        "{dbg}"
    );
}

#[test]
fn unusable_key_files_are_refused_without_echoing_them() {
    let user =
        serde_json::json!({"type": "authorized_user", "client_email": "x", "private_key": "y"});
    let e = ServiceAccount::parse(&user.to_string()).expect_err("user creds");
    assert!(e.contains("authorized_user"), "{e}");
    let broken = serde_json::json!({"type": "service_account", "client_email": "x", "private_key": "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n"});
    let e = ServiceAccount::parse(&broken.to_string()).expect_err("bad key");
    assert!(!e.contains("c2VjcmV0"), "{e}");
    assert!(ServiceAccount::parse("{not json").is_err());
}

#[test]
fn spki_parsing_extracts_the_key() {
    let der =
        rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(TEST_KEY.as_bytes()).expect("pem");
    let pair = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("rsa");
    // SPKI of an RSA key = SEQ { SEQ { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }.
    let rsa_pub = pair.public().as_ref().to_vec();
    let alg = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0x03, 0x82];
    bits.extend(u16::try_from(rsa_pub.len() + 1).expect("len").to_be_bytes());
    bits.push(0);
    bits.extend(&rsa_pub);
    let mut spki = vec![0x30, 0x82];
    spki.extend(
        u16::try_from(alg.len() + bits.len())
            .expect("len")
            .to_be_bytes(),
    );
    spki.extend(alg);
    spki.extend(&bits);
    assert_eq!(pubkey::spki_key(&spki), Some(rsa_pub.as_slice()));
    assert_eq!(pubkey::spki_key(&spki[..spki.len() - 1]), None, "truncated");
    assert_eq!(pubkey::spki_key(&[0x30, 0x00]), None);
}

#[test]
fn describe_reads_the_primary_state() {
    let key: wire::KeyResource = serde_json::from_value(serde_json::json!({
        "name": "projects/p/locations/l/keyRings/r/cryptoKeys/k",
        "purpose": "ENCRYPT_DECRYPT",
        "primary": {"name": "projects/p/locations/l/keyRings/r/cryptoKeys/k/cryptoKeyVersions/2", "state": "DISABLED", "algorithm": "GOOGLE_SYMMETRIC_ENCRYPTION"}
    })).expect("json");
    let info = describe_resource(Resource::Key, &key);
    assert!(!info.enabled);
    assert!(
        info.description.contains("primary version 2 DISABLED"),
        "{}",
        info.description
    );
    let v: wire::KeyResource = serde_json::from_value(
        serde_json::json!({"state": "ENABLED", "algorithm": "EC_SIGN_P256_SHA256"}),
    )
    .expect("json");
    assert!(describe_resource(Resource::Version, &v).enabled);
}
