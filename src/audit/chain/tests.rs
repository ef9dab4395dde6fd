use sha2::{Digest as _, Sha256};

use super::*;

const NAMES: [&str; 4] = ["id", "note", "empty", "txt"];
/// Vectors computed independently (Python hashlib, struct.pack('>I')).
const ENCODED: &str = "000000026964000000013100000005656d707479000000000000000374787400000002c3a9";
const HASH_1: &str = "3ed2fdf94245d180de1dff10c6cf5c2a9064e5b575560d8f52944dfac941221a";
const HASH_2: &str = "a6b5149697c3144f29e39343d7bac2c34d2084679273f672f4c99b115c38e46e";

fn values() -> Vec<Option<String>> {
    vec![
        Some("1".into()),
        None,
        Some(String::new()),
        Some("é".into()),
    ]
}

fn encoded() -> Vec<u8> {
    encode_row(
        NAMES
            .iter()
            .copied()
            .zip(values().iter().map(Option::as_deref)),
    )
}

#[test]
fn encoding_matches_the_documented_vector() {
    assert_eq!(hex::encode(encoded()), ENCODED);
    assert_eq!(row_hash(ZERO_HASH, &encoded()), HASH_1);
    assert_eq!(row_hash(HASH_1, &encoded()), HASH_2);
}

#[test]
fn null_empty_and_boundaries_are_distinct() {
    let enc = |v: &[(&'static str, Option<&'static str>)]| encode_row(v.iter().copied());
    assert_ne!(enc(&[("a", None)]), enc(&[("a", Some(""))]));
    // A column added later, NULL in older rows, leaves them as they were.
    assert_eq!(
        enc(&[("a", Some("x"))]),
        enc(&[("a", Some("x")), ("new", None)])
    );
    assert_ne!(enc(&[("a", Some("bc"))]), enc(&[("ab", Some("c"))]));
    assert_ne!(
        enc(&[("a", Some("x")), ("b", Some("y"))]),
        enc(&[("b", Some("y")), ("a", Some("x"))])
    );
}

#[test]
fn attestation_message_is_tagged_and_length_prefixed() {
    let m = attestation_message(
        "public.audit_log",
        "acme",
        42,
        HASH_1,
        "2025-01-02T03:04:05.000006Z",
    );
    assert!(m.starts_with(b"byokpg attestation v1\n"));
    assert_eq!(
        hex::encode(Sha256::digest(&m)),
        "c9975fde4332d1b808702327109fb3f8d0c176b91c4a8d83262a1cb007b3f3a5"
    );
}

fn row(seq: i64, prev: &str, hash: &str) -> StoredRow {
    StoredRow {
        seq: Some(seq),
        prev_hash: Some(prev.into()),
        row_hash: Some(hash.into()),
        values: values(),
    }
}

fn walk() -> Walk {
    Walk::new(
        NAMES.iter().map(|s| (*s).to_owned()).collect(),
        1,
        ZERO_HASH.into(),
    )
}

#[test]
fn an_intact_chain_walks() {
    let mut w = walk();
    w.step(&row(1, ZERO_HASH, HASH_1)).expect("row 1");
    w.step(&row(2, HASH_1, HASH_2)).expect("row 2");
    assert_eq!((w.rows(), w.expected()), (2, 3));
}

#[test]
fn tampering_is_located() {
    let mut changed = row(1, ZERO_HASH, HASH_1);
    changed.values[0] = Some("2".into());
    let b = walk().step(&changed).expect_err("changed");
    assert_eq!(b.seq, 1);
    assert!(b.reason.starts_with("row changed"), "{}", b.reason);

    let b = walk().step(&row(2, HASH_1, HASH_2)).expect_err("missing");
    assert_eq!(b.seq, 1);
    assert!(b.reason.starts_with("row missing"), "{}", b.reason);

    // Row 2 stored as 1: its own hash is fine, its link is not.
    let b = walk().step(&row(1, HASH_1, HASH_2)).expect_err("reordered");
    assert!(b.reason.starts_with("row reordered"), "{}", b.reason);

    let mut w = walk();
    w.step(&row(1, ZERO_HASH, HASH_1)).expect("row 1");
    let b = w.step(&row(1, ZERO_HASH, HASH_1)).expect_err("dup");
    assert_eq!(b.seq, 2);
    let mut unchained = row(2, HASH_1, HASH_2);
    unchained.seq = None;
    assert!(w.step(&unchained).is_err());
}
