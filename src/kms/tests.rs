#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fake::FakeKms;
use super::*;

const KEK_A: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const KEK_B: &str = "ff0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn write_key(path: &Path, hex: &str) {
    // Write then rename: a new inode, as an editor or `mv` would produce.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("  {hex}\n")).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn local_kms(dir: &tempfile::TempDir) -> (Kms, std::path::PathBuf) {
    let path = dir.path().join("kek.hex");
    write_key(&path, KEK_A);
    let kms = Kms::new(
        "dev",
        RetryPolicy::default(),
        KmsBackend::Local(LocalKms::open(&path)),
    );
    (kms, path)
}

fn fake_kms(policy: RetryPolicy) -> Kms {
    Kms::new("fake", policy, KmsBackend::Fake(FakeKms::default()))
}

fn fake(kms: &Kms) -> &FakeKms {
    match kms.backend() {
        KmsBackend::Fake(f) => f,
        _ => unreachable!("built as a fake"),
    }
}

fn quick_policy(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(30),
        max_retries,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
    }
}

#[tokio::test]
async fn local_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, _) = local_kms(&dir);
    let dk = kms.generate_data_key("acme").await.unwrap();
    assert_eq!(dk.wrapped.len(), local::WRAPPED_LEN);
    assert_eq!(dk.wrapped[0], local::WRAP_VERSION);
    let back = kms.unwrap("acme", &dk.wrapped).await.unwrap();
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());
    // Random nonce: wrapping the same DEK twice gives two different blobs.
    let again = kms.wrap("acme", &dk.plaintext).await.unwrap();
    assert_ne!(again, dk.wrapped);
    let back = kms.unwrap("acme", &again).await.unwrap();
    assert_eq!(back.expose_secret(), dk.plaintext.expose_secret());
    let info = kms.describe("acme").await.unwrap();
    assert!(info.enabled);
    assert!(info.description.contains("label acme"), "{info:?}");
    assert!(!format!("{dk:?}").contains(&hex::encode(dk.plaintext.expose_secret())));
}

#[tokio::test]
async fn local_wrong_label_or_tampering_is_denied() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, _) = local_kms(&dir);
    let dk = kms.generate_data_key("acme").await.unwrap();
    let e = kms.unwrap("globex", &dk.wrapped).await.unwrap_err();
    assert_eq!(
        e,
        KmsError::AccessDenied("local KEK cannot unwrap this DEK".to_owned())
    );
    assert_eq!(e.sqlstate(), "58000");
    let mut bad = dk.wrapped.clone();
    bad[20] ^= 1;
    assert!(matches!(
        kms.unwrap("acme", &bad).await,
        Err(KmsError::AccessDenied(_))
    ));
    let e = kms.unwrap("acme", &dk.wrapped[..10]).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("not a DEK wrapped by the local provider"),
        "{e}"
    );
}

#[tokio::test]
async fn local_key_file_changes_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, path) = local_kms(&dir);
    let dk = kms.generate_data_key("acme").await.unwrap();
    write_key(&path, KEK_B);
    let e = kms.unwrap("acme", &dk.wrapped).await.unwrap_err();
    assert!(matches!(e, KmsError::AccessDenied(_)), "{e:?}");
    write_key(&path, KEK_A);
    kms.unwrap("acme", &dk.wrapped).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let e = kms.unwrap("acme", &dk.wrapped).await.unwrap_err();
    assert!(matches!(e, KmsError::KeyDestroyed(_)), "{e:?}");
    assert!(e.to_string().contains("is gone"), "{e}");
    assert!(matches!(
        kms.describe("acme").await,
        Err(KmsError::KeyDestroyed(_))
    ));
    std::fs::write(&path, "not hex at all").unwrap();
    let e = kms.unwrap("acme", &dk.wrapped).await.unwrap_err();
    assert!(matches!(e, KmsError::Config(_)), "{e:?}");
    assert!(!e.to_string().contains("not hex at all"), "{e}");
}

#[tokio::test]
async fn local_needs_allow_insecure_local() {
    let mut cfg: crate::config::KmsConfig =
        toml::from_str("provider = \"local\"\nkey_file = \"k\"\n").unwrap();
    let e = Kms::from_config("dev", &cfg).await.unwrap_err();
    assert!(matches!(e, KmsError::Config(_)), "{e:?}");
    assert!(e.to_string().contains("allow_insecure_local"), "{e}");
    cfg.allow_insecure_local = true;
    let kms = Kms::from_config("dev", &cfg).await.unwrap();
    assert_eq!((kms.name(), kms.provider()), ("dev", "local"));
    assert_eq!(kms.policy().timeout, cfg.timeout);
    cfg.key_file = None;
    assert!(matches!(
        Kms::from_config("dev", &cfg).await,
        Err(KmsError::Config(_))
    ));
    // The cloud providers are built without contacting anything.
    let aws: crate::config::KmsConfig =
        toml::from_str("provider = \"aws-kms\"\nregion = \"eu-west-1\"\n").unwrap();
    let kms = Kms::from_config("prod", &aws).await.unwrap();
    assert_eq!(kms.provider(), "aws-kms");
}

#[tokio::test]
async fn local_sign_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (kms, path) = local_kms(&dir);
    let sig = kms.sign("acme", b"chain head 42").await.unwrap();
    assert_eq!(sig.algorithm, "ed25519");
    assert_eq!(sig.bytes.len(), 64);
    // Ed25519 is deterministic: the same key signs the same message alike.
    assert_eq!(kms.sign("acme", b"chain head 42").await.unwrap(), sig);
    assert!(kms.verify("acme", b"chain head 42", &sig).await.unwrap());
    assert!(!kms.verify("acme", b"chain head 43", &sig).await.unwrap());
    assert!(!kms.verify("globex", b"chain head 42", &sig).await.unwrap());
    let other_alg = Signature {
        algorithm: "ECDSA_SHA_256".to_owned(),
        ..sig.clone()
    };
    assert!(
        !kms.verify("acme", b"chain head 42", &other_alg)
            .await
            .unwrap()
    );
    write_key(&path, KEK_B);
    assert!(!kms.verify("acme", b"chain head 42", &sig).await.unwrap());
}

#[test]
fn errors_map_to_sqlstates_and_outcomes() {
    let m = || "m".to_owned();
    let cases = [
        (KmsError::AccessDenied(m()), "58000", "denied"),
        (KmsError::KeyDisabled(m()), "58000", "denied"),
        (KmsError::KeyDestroyed(m()), "58000", "denied"),
        (KmsError::NotFound(m()), "58000", "denied"),
        (KmsError::Throttled(m()), "58000", "error"),
        (KmsError::Unavailable(m()), "58030", "error"),
        (KmsError::Config(m()), "58000", "error"),
    ];
    for (e, state, outcome) in cases {
        assert_eq!(e.sqlstate(), state, "{e:?}");
        assert_eq!(e.outcome(), outcome, "{e:?}");
        assert_eq!(
            e.is_transient(),
            matches!(e, KmsError::Throttled(_) | KmsError::Unavailable(_))
        );
        assert!(e.to_string().ends_with("(m)"), "{e}");
        assert!(!e.hint().is_empty());
        assert!(!e.code().is_empty());
    }
    assert_eq!(
        KmsError::AccessDenied("local KEK cannot unwrap this DEK".to_owned()).to_string(),
        "access denied by the KMS (local KEK cannot unwrap this DEK)"
    );
}

#[test]
fn backoff_grows_and_is_capped() {
    let p = RetryPolicy {
        timeout: Duration::from_secs(5),
        max_retries: 10,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    assert_eq!(p.backoff(0, 0.0), Duration::from_millis(50));
    assert_eq!(p.backoff(0, 1.0), Duration::from_millis(100));
    assert_eq!(p.backoff(2, 0.0), Duration::from_millis(200));
    assert_eq!(p.backoff(2, 1.0), Duration::from_millis(400));
    assert_eq!(p.backoff(9, 1.0), Duration::from_secs(1));
    assert_eq!(p.backoff(u32::MAX, 0.5), Duration::from_millis(750));
    for attempt in 0..6 {
        let lo = p.backoff(attempt, 0.0);
        let hi = p.backoff(attempt, 1.0);
        assert!(lo <= p.backoff(attempt, 0.3) && p.backoff(attempt, 0.3) <= hi);
    }
}

#[tokio::test]
async fn throttling_is_retried_until_it_clears() {
    let kms = fake_kms(quick_policy(3));
    let f = fake(&kms);
    f.fail_next.lock().unwrap().extend([
        KmsError::Throttled("slow down".to_owned()),
        KmsError::Unavailable("503".to_owned()),
        KmsError::Throttled("slow down".to_owned()),
    ]);
    let dk = kms.generate_data_key("k").await.unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 4);
    kms.unwrap("k", &dk.wrapped).await.unwrap();
    assert_eq!(f.calls.load(Ordering::SeqCst), 5);
    let text = crate::metrics::render();
    assert!(
        text.contains(
            r#"byokpg_kms_requests_total{provider="fake",op="generate",outcome="success"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn retries_stop_after_max_retries() {
    let kms = fake_kms(quick_policy(2));
    let f = fake(&kms);
    f.fail_with(Some(KmsError::Throttled("slow down".to_owned())));
    let e = kms.describe("k").await.unwrap_err();
    assert_eq!(e, KmsError::Throttled("slow down".to_owned()));
    assert_eq!(f.calls.load(Ordering::SeqCst), 3);
    let text = crate::metrics::render();
    assert!(
        text.contains(
            r#"byokpg_kms_requests_total{provider="fake",op="describe",outcome="error"}"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn denials_are_not_retried() {
    let kms = fake_kms(quick_policy(5));
    let f = fake(&kms);
    f.fail_with(Some(KmsError::AccessDenied("grant revoked".to_owned())));
    let e = kms.sign("k", b"x").await.unwrap_err();
    assert!(matches!(e, KmsError::AccessDenied(_)));
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
    let text = crate::metrics::render();
    assert!(
        text.contains(r#"byokpg_kms_requests_total{provider="fake",op="sign",outcome="denied"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_hanging_kms_times_out_as_unavailable() {
    let policy = RetryPolicy {
        timeout: Duration::from_millis(200),
        ..quick_policy(3)
    };
    let kms = fake_kms(policy);
    fake(&kms).close_gate();
    let e = kms.unwrap("k", b"whatever").await.unwrap_err();
    assert!(matches!(e, KmsError::Unavailable(_)), "{e:?}");
    assert_eq!(e.sqlstate(), "58030");
    assert!(e.to_string().contains("no answer within 200ms"), "{e}");
}
