//! The test vectors printed in docs/FORMAT.md, checked against the code at
//! test time so the document and the implementation cannot drift apart.

use std::collections::BTreeMap;

use super::envelope::associated_data;
use super::field::derive_column_key;
use super::text::encode_text;
use super::*;

const FORMAT_MD: &str = include_str!("../../docs/FORMAT.md");

/// Every ```` ```text ```` block whose first line is `vector = NAME`, as
/// key → value maps.
fn parse_vectors(doc: &str) -> Vec<BTreeMap<String, String>> {
    let mut out = Vec::new();
    let mut current: Option<BTreeMap<String, String>> = None;
    for line in doc.lines() {
        let line = line.trim();
        if line.starts_with("```") {
            out.extend(current.take());
            continue;
        }
        let Some((k, v)) = line.split_once(" = ") else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "vector" {
            out.extend(current.take());
            current = Some(BTreeMap::new());
        }
        if let Some(map) = current.as_mut() {
            map.insert(k.to_string(), v.to_string());
        }
    }
    out.extend(current);
    out
}

fn field<'m>(v: &'m BTreeMap<String, String>, k: &str) -> &'m str {
    v.get(k)
        .unwrap_or_else(|| panic!("vector {:?} lacks `{k}`", v.get("vector")))
}

fn hexf(v: &BTreeMap<String, String>, k: &str) -> Vec<u8> {
    hex::decode(field(v, k)).unwrap_or_else(|e| panic!("`{k}` is not hex: {e}"))
}

fn mode_of(v: &BTreeMap<String, String>) -> Mode {
    match field(v, "mode") {
        "deterministic" => Mode::Deterministic,
        "randomized" => Mode::Randomized,
        other => panic!("unknown mode {other}"),
    }
}

fn check_vector(v: &BTreeMap<String, String>) {
    let name = field(v, "vector");
    let dek = Dek::from_slice(&hexf(v, "dek")).unwrap();
    let version: u32 = field(v, "dek_version").parse().unwrap();
    let col = ColumnId {
        tenant: field(v, "tenant"),
        schema: field(v, "schema"),
        table: field(v, "table"),
        column: field(v, "column"),
    };
    let mode = mode_of(v);
    let plaintext = field(v, "plaintext").as_bytes();

    let mut info = mode.kdf_label().to_vec();
    col.encode_into(&mut info);
    assert_eq!(
        hex::encode(&info),
        field(v, "hkdf_info"),
        "{name}: hkdf_info"
    );

    let mut key = vec![0u8; hexf(v, "column_key").len()];
    derive_column_key(&dek, &col, mode, &mut key);
    assert_eq!(
        hex::encode(&key),
        field(v, "column_key"),
        "{name}: column_key"
    );

    let header = EnvelopeHeader {
        format: FORMAT_VERSION,
        mode,
        dek_version: version,
    };
    assert_eq!(
        hex::encode(associated_data(header, &col)),
        field(v, "aad"),
        "{name}: aad"
    );

    let c = FieldCipher::new(&dek, version, &col, mode);
    let env = match mode {
        Mode::Deterministic => c.encrypt(plaintext),
        Mode::Randomized => {
            let nonce: [u8; 12] = hexf(v, "nonce").try_into().unwrap();
            c.encrypt_with_nonce(&nonce, plaintext).unwrap()
        }
    };
    assert_eq!(hex::encode(&env), field(v, "envelope"), "{name}: envelope");
    assert_eq!(encode_text(&env), field(v, "text"), "{name}: text");
    assert_eq!(c.decrypt(&env).unwrap().as_slice(), plaintext);
    assert_eq!(
        c.decrypt_text(field(v, "text").as_bytes())
            .unwrap()
            .as_slice(),
        plaintext
    );
}

#[test]
fn format_md_vectors_match_the_code() {
    let vectors = parse_vectors(FORMAT_MD);
    let names: Vec<&str> = vectors.iter().map(|v| field(v, "vector")).collect();
    assert!(
        names.contains(&"deterministic-1"),
        "vectors found: {names:?}"
    );
    assert!(names.contains(&"randomized-1"), "vectors found: {names:?}");
    for v in &vectors {
        check_vector(v);
    }
}

#[test]
fn format_md_states_the_constants() {
    for needle in [
        "byokpg-field-v1",
        TEXT_CIPHERTEXT_REGEX,
        &bytea_check_sql("\"doc\""),
        &text_check_sql("email"),
    ] {
        assert!(FORMAT_MD.contains(needle), "docs/FORMAT.md lacks {needle}");
    }
}

/// Prints the vector blocks for docs/FORMAT.md:
/// `cargo test --lib crypto::vectors::print -- --ignored --nocapture`.
#[test]
#[ignore = "generator for docs/FORMAT.md, not a check"]
fn print_vectors() {
    let dek_bytes: Vec<u8> = (0u8..32).collect();
    let dek = Dek::from_slice(&dek_bytes).unwrap();
    let col = ColumnId {
        tenant: "acme",
        schema: "public",
        table: "customers",
        column: "email",
    };
    let pt = b"alice@example.com";
    let nonce: [u8; 12] = core::array::from_fn(|i| 0xa0 + u8::try_from(i).unwrap());
    for (name, mode, key_len) in [
        ("deterministic-1", Mode::Deterministic, 64),
        ("randomized-1", Mode::Randomized, 32),
    ] {
        let c = FieldCipher::new(&dek, 1, &col, mode);
        let env = match mode {
            Mode::Deterministic => c.encrypt(pt),
            Mode::Randomized => c.encrypt_with_nonce(&nonce, pt).unwrap(),
        };
        let mut info = mode.kdf_label().to_vec();
        col.encode_into(&mut info);
        let mut key = vec![0u8; key_len];
        derive_column_key(&dek, &col, mode, &mut key);
        let header = EnvelopeHeader {
            format: 1,
            mode,
            dek_version: 1,
        };
        println!("vector      = {name}");
        println!("dek         = {}", hex::encode(&dek_bytes));
        println!("dek_version = 1\ntenant      = acme\nschema      = public");
        println!(
            "table       = customers\ncolumn      = email\nmode        = {}",
            mode.as_str()
        );
        println!("plaintext   = alice@example.com");
        if mode == Mode::Randomized {
            println!("nonce       = {}", hex::encode(nonce));
        }
        println!("hkdf_info   = {}", hex::encode(&info));
        println!("column_key  = {}", hex::encode(&key));
        println!(
            "aad         = {}",
            hex::encode(associated_data(header, &col))
        );
        println!("envelope    = {}", hex::encode(&env));
        println!("text        = {}\n", encode_text(&env));
    }
}
