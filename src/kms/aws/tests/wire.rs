//! What the provider puts on the wire and reads back: request fields, the
//! encryption context, retries left to byokpg, verify answers, and STS
//! AssumeRole with an external id.
use super::*;

fn json(s: &Seen) -> serde_json::Value {
    serde_json::from_str(&s.body).expect("the SDK sends JSON")
}

fn seen(fake: &Fake) -> Vec<Seen> {
    fake.seen.lock().expect("seen lock").clone()
}

/// A well-behaved KMS for one symmetric key: fixed DEK, fixed wrapping.
fn kms_ok(s: &Seen) -> (u16, String) {
    let dek = B64.encode([7u8; 32]);
    let blob = B64.encode(b"wrapped-by-fake");
    let body = match s.target.as_str() {
        "TrentService.GenerateDataKey" => {
            serde_json::json!({ "CiphertextBlob": blob, "Plaintext": dek, "KeyId": KEY })
        }
        "TrentService.Decrypt" => serde_json::json!({
            "Plaintext": dek, "KeyId": KEY, "EncryptionAlgorithm": "SYMMETRIC_DEFAULT"
        }),
        "TrentService.Encrypt" => serde_json::json!({ "CiphertextBlob": blob, "KeyId": KEY }),
        "TrentService.DescribeKey" => serde_json::json!({ "KeyMetadata": {
            "KeyId": "1234abcd-12ab-34cd-56ef-1234567890ab", "Arn": KEY, "Enabled": false,
            "KeyState": "Disabled", "KeySpec": "SYMMETRIC_DEFAULT", "KeyUsage": "ENCRYPT_DECRYPT"
        }}),
        other => return (400, aws_error("UnknownOperationException", other)),
    };
    (200, body.to_string())
}

#[tokio::test]
async fn dek_operations_name_the_key_and_carry_the_encryption_context() {
    let (url, fake) = start(kms_ok).await;
    let kms = provider(&url, "").await;
    let dk = kms.generate_data_key(KEY).await.expect("generate");
    assert_eq!(dk.plaintext.expose_secret(), &[7u8; 32]);
    assert_eq!(dk.wrapped, b"wrapped-by-fake");
    let dek = kms.unwrap(KEY, &dk.wrapped).await.expect("unwrap");
    assert_eq!(dek.expose_secret(), &[7u8; 32]);
    let wrapped = kms
        .wrap(KEY, &Dek::from_bytes([9; 32]))
        .await
        .expect("wrap");
    assert_eq!(wrapped, b"wrapped-by-fake");
    let (ck, cv) = ENCRYPTION_CONTEXT;
    let reqs = seen(&fake);
    let targets: Vec<&str> = reqs.iter().map(|s| s.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            "TrentService.GenerateDataKey",
            "TrentService.Decrypt",
            "TrentService.Encrypt"
        ]
    );
    for r in &reqs {
        let j = json(r);
        assert_eq!(j["KeyId"], KEY, "{}", r.target);
        assert_eq!(j["EncryptionContext"][ck], cv, "{}", r.target);
        assert!(
            r.authorization
                .contains(&format!("Credential={ACCESS_KEY}/")),
            "{}",
            r.authorization
        );
    }
    assert_eq!(json(&reqs[0])["KeySpec"], "AES_256");
    assert_eq!(
        json(&reqs[1])["CiphertextBlob"],
        B64.encode(b"wrapped-by-fake")
    );
    assert_eq!(json(&reqs[2])["Plaintext"], B64.encode([9u8; 32]));
}

#[tokio::test]
async fn describe_reports_state_spec_and_region() {
    let (url, _fake) = start(kms_ok).await;
    let info = provider(&url, "")
        .await
        .describe(KEY)
        .await
        .expect("describe");
    assert!(!info.enabled);
    assert_eq!(
        info.description,
        format!(
            "AWS KMS key {KEY}: spec SYMMETRIC_DEFAULT, usage ENCRYPT_DECRYPT, state Disabled, region eu-west-1"
        )
    );
}

#[tokio::test]
async fn retries_are_byokpgs_not_the_sdks() {
    let (kms, fake) = failing(500, aws_error("KeyUnavailableException", "down")).await;
    let policy = RetryPolicy {
        timeout: Duration::from_secs(10),
        max_retries: 2,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    let kms = Kms::new("aws", policy, KmsBackend::Aws(kms));
    let e = kms.unwrap(KEY, b"x").await.expect_err("always 500");
    assert!(matches!(e, KmsError::Unavailable(_)), "{e:?}");
    // One request per byokpg attempt: the SDK's own 3 retries are off.
    assert_eq!(seen(&fake).len(), 3);
}

/// An ECC signing key whose Verify says a signature is invalid the way
/// KMS does: with KMSInvalidSignatureException.
fn signer(s: &Seen) -> (u16, String) {
    let body = match s.target.as_str() {
        "TrentService.DescribeKey" => serde_json::json!({ "KeyMetadata": {
            "KeyId": "k", "Arn": KEY, "KeyState": "Enabled", "KeySpec": "ECC_NIST_P256",
            "KeyUsage": "SIGN_VERIFY", "SigningAlgorithms": ["ECDSA_SHA_256"]
        }}),
        "TrentService.Sign" => serde_json::json!({
            "KeyId": KEY, "Signature": B64.encode(b"sig"), "SigningAlgorithm": "ECDSA_SHA_256"
        }),
        "TrentService.Verify" if json(s)["Signature"] == B64.encode(b"sig") => {
            serde_json::json!({ "KeyId": KEY, "SignatureValid": true, "SigningAlgorithm": "ECDSA_SHA_256" })
        }
        "TrentService.Verify" => return (400, aws_error("KMSInvalidSignatureException", "")),
        other => return (400, aws_error("UnknownOperationException", other)),
    };
    (200, body.to_string())
}

#[tokio::test]
async fn sign_and_verify_with_a_cached_key_description() {
    let (url, fake) = start(signer).await;
    let kms = provider(&url, "").await;
    let sig = kms.sign(KEY, b"chain head").await.expect("sign");
    assert_eq!(
        sig,
        Signature {
            algorithm: "ECDSA_SHA_256".into(),
            bytes: b"sig".to_vec()
        }
    );
    assert!(kms.verify(KEY, b"chain head", &sig).await.expect("verify"));
    let forged = Signature {
        bytes: b"forged".to_vec(),
        ..sig.clone()
    };
    assert!(
        !kms.verify(KEY, b"chain head", &forged)
            .await
            .expect("invalid is Ok(false)")
    );
    let other_alg = Signature {
        algorithm: "RSASSA_PSS_SHA_256".into(),
        ..sig
    };
    assert!(
        !kms.verify(KEY, b"chain head", &other_alg)
            .await
            .expect("wrong algorithm")
    );
    // A long message goes as its SHA-256 digest.
    kms.sign(KEY, &[1u8; 5000]).await.expect("sign digest");
    let reqs = seen(&fake);
    let describes = reqs
        .iter()
        .filter(|s| s.target == "TrentService.DescribeKey")
        .count();
    assert_eq!(describes, 1, "DescribeKey is cached per key");
    let last = json(reqs.last().expect("requests"));
    assert_eq!(last["MessageType"], "DIGEST");
    assert_eq!(
        last["Message"]
            .as_str()
            .map(|m| B64.decode(m).expect("b64").len()),
        Some(32)
    );
    assert_eq!(json(&reqs[1])["MessageType"], "RAW");
}

/// STS that grants a session only with the right external id, and a KMS
/// that only accepts that session's credentials.
fn sts_and_kms(s: &Seen) -> (u16, String) {
    if s.target == "sts.AssumeRole" {
        let form: Vec<(String, String)> = url::form_urlencoded::parse(s.body.as_bytes())
            .into_owned()
            .collect();
        let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if get("ExternalId") != Some(EXTERNAL_ID) {
            return (403, sts_denied());
        }
        assert_eq!(get("RoleSessionName"), Some("byokpg-test"));
        return (200, sts_credentials());
    }
    let session_ok = s
        .authorization
        .contains(&format!("Credential={ASSUMED_KEY}/"))
        && s.token.as_deref() == Some(SESSION_TOKEN);
    if !session_ok {
        return (
            400,
            aws_error(
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            ),
        );
    }
    kms_ok(s)
}

fn sts_credentials() -> String {
    format!(
        r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>{ASSUMED_KEY}</AccessKeyId>
      <SecretAccessKey>assumed-secret</SecretAccessKey>
      <SessionToken>{SESSION_TOKEN}</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <AssumedRoleId>AROAEXAMPLE:byokpg-test</AssumedRoleId>
      <Arn>arn:aws:sts::111122223333:assumed-role/byokpg/byokpg-test</Arn>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>"#
    )
}

fn sts_denied() -> String {
    r#"<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>AccessDenied</Code>
    <Message>User: arn:aws:iam::444455556666:user/byokpg is not authorized to perform: sts:AssumeRole on resource: arn:aws:iam::111122223333:role/byokpg</Message>
  </Error>
  <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
</ErrorResponse>"#
        .to_string()
}

const ROLE: &str = "assume_role_arn = \"arn:aws:iam::111122223333:role/byokpg\"";

#[tokio::test]
async fn assume_role_with_external_id_signs_kms_calls_with_the_session() {
    let (url, fake) = start(sts_and_kms).await;
    let kms = provider(&url, &format!("{ROLE}\nexternal_id = \"{EXTERNAL_ID}\"")).await;
    kms.generate_data_key(KEY)
        .await
        .expect("generate with the assumed role");
    kms.unwrap(KEY, b"wrapped-by-fake").await.expect("unwrap");
    let targets: Vec<String> = seen(&fake).into_iter().map(|s| s.target).collect();
    // One AssumeRole: the session is cached until shortly before it expires.
    assert_eq!(
        targets,
        [
            "sts.AssumeRole",
            "TrentService.GenerateDataKey",
            "TrentService.Decrypt"
        ]
    );
}

#[tokio::test]
async fn assume_role_refused_is_access_denied() {
    let (url, _fake) = start(sts_and_kms).await;
    let kms = provider(&url, &format!("{ROLE}\nexternal_id = \"wrong\"")).await;
    let e = kms.unwrap(KEY, b"x").await.expect_err("STS refuses");
    let KmsError::AccessDenied(text) = &e else {
        panic!("expected AccessDenied, got {e:?}");
    };
    assert!(
        text.starts_with(
            "Decrypt: AssumeRole: AccessDenied: User: arn:aws:iam::444455556666:user/byokpg"
        ),
        "{text}"
    );
    for secret in [SECRET_KEY, SESSION_TOKEN, "wrong"] {
        assert!(!text.contains(secret), "{text}");
    }
}

#[tokio::test]
async fn config_errors_and_debug_show_no_secret() {
    let bad = |extra: &str| {
        toml::from_str::<KmsConfig>(&format!("provider = \"aws-kms\"\n{extra}")).expect("toml")
    };
    let e = AwsKms::from_config("k", &bad(""))
        .await
        .expect_err("no region");
    assert_eq!(e, KmsError::Config("kms.k: aws-kms needs `region`".into()));
    let e = AwsKms::from_config(
        "k",
        &bad("region = \"eu-west-1\"\nendpoint = \"not a url\""),
    )
    .await
    .expect_err("bad endpoint");
    assert!(
        matches!(e, KmsError::Config(ref t) if t.contains("`endpoint` is not a URL")),
        "{e:?}"
    );
    let e = AwsKms::from_config("k", &bad("region = \"eu-west-1\"\nexternal_id = \"x\""))
        .await
        .expect_err("external id alone");
    assert!(matches!(e, KmsError::Config(_)), "{e:?}");
    let kms = provider("http://127.0.0.1:9", "").await;
    let debug = format!("{kms:?}");
    assert!(
        !debug.contains(SECRET_KEY) && debug.contains("eu-west-1"),
        "{debug}"
    );
}
