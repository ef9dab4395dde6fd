use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;

use super::*;
use crate::rewrite::plan::ColumnRef;

// ------------------------------------------------------------ fixtures

/// Catalog column numbers the fake treats as a text and a bytea column.
const TEXT_COL: usize = 7;
const BYTEA_COL: usize = 9;
const TENANT: &str = "acme";

/// Deterministic, reversible stand-in for the tenant keys: text columns get
/// `byok1:<col>:<hex>`, bytea columns `\x<hex of "E" + plaintext>` (the
/// text form PostgreSQL's bytea input accepts). `need_at` makes the n-th
/// call (1-based) report a missing key once.
#[derive(Default)]
struct Fake {
    calls: usize,
    need_at: Option<usize>,
    needs: usize,
}

impl Fake {
    fn needing_at(n: usize) -> Self {
        Self {
            need_at: Some(n),
            ..Self::default()
        }
    }

    fn tick(&mut self) -> Result<(), CryptoFailure> {
        self.calls += 1;
        if self.need_at == Some(self.calls) {
            self.need_at = None;
            self.needs += 1;
            return Err(CryptoFailure::Need(Need::ActiveKey));
        }
        Ok(())
    }
}

fn fake_encrypt(column: usize, plain: &[u8]) -> Vec<u8> {
    if column == BYTEA_COL {
        let mut e = b"E".to_vec();
        e.extend_from_slice(plain);
        format!("\\x{}", hex::encode(e)).into_bytes()
    } else {
        format!("byok1:{column}:{}", hex::encode(plain)).into_bytes()
    }
}

fn corrupt(column: usize) -> CryptoFailure {
    CryptoFailure::Refuse(PgError::data_corrupted(format!(
        "byokpg: cannot decrypt column {column}"
    )))
}

impl FieldCrypto for Fake {
    fn encrypt_field(&mut self, column: usize, plain: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        self.tick()?;
        Ok(fake_encrypt(column, plain))
    }

    fn decrypt_field(&mut self, column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        self.tick()?;
        let s = std::str::from_utf8(stored).map_err(|_| corrupt(column))?;
        let plain = if column == BYTEA_COL {
            let e = s.strip_prefix("\\x").and_then(|h| hex::decode(h).ok());
            e.and_then(|e| e.strip_prefix(b"E").map(<[u8]>::to_vec))
        } else {
            let prefix = format!("byok1:{column}:");
            s.strip_prefix(&prefix).and_then(|h| hex::decode(h).ok())
        };
        plain.ok_or_else(|| corrupt(column))
    }

    fn tenant(&self) -> &str {
        TENANT
    }
}

fn text() -> CopyFormat {
    CopyFormat::Text {
        delimiter: '\t',
        null: "\\N".to_owned(),
        header: false,
    }
}

fn csv() -> CopyFormat {
    CopyFormat::Csv {
        delimiter: ',',
        quote: '"',
        escape: '"',
        null: String::new(),
        header: false,
    }
}

fn with_header(f: CopyFormat) -> CopyFormat {
    match f {
        CopyFormat::Text {
            delimiter, null, ..
        } => CopyFormat::Text {
            delimiter,
            null,
            header: true,
        },
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            ..
        } => CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            header: true,
        },
    }
}

fn plan(direction: CopyDirection, format: CopyFormat, fields: usize) -> CopyPlan {
    CopyPlan {
        direction,
        table: Some(0),
        columns: (0..fields)
            .map(|c| {
                Some(ColumnRef {
                    table: 0,
                    column: c,
                })
            })
            .collect(),
        format,
        force_not_null: Vec::new(),
        force_null: Vec::new(),
        tenant: None,
    }
}

fn rewriter(
    direction: CopyDirection,
    format: CopyFormat,
    protect: &[Option<usize>],
) -> CopyRewriter {
    CopyRewriter::new(&plan(direction, format, protect.len()), protect.to_vec())
}

fn from(format: CopyFormat, protect: &[Option<usize>]) -> CopyRewriter {
    rewriter(CopyDirection::FromStdin, format, protect)
}

fn to(format: CopyFormat, protect: &[Option<usize>]) -> CopyRewriter {
    rewriter(CopyDirection::ToStdout, format, protect)
}

/// Feed every chunk (fetching the "key" and retrying on Need, as the relay
/// does), then finish.
fn run(rw: &mut CopyRewriter, chunks: &[&[u8]], fake: &mut Fake) -> Result<Vec<u8>, CopyError> {
    let mut out = Vec::new();
    for chunk in chunks {
        loop {
            match rw.feed(chunk, fake) {
                Ok(o) => {
                    out.extend(o);
                    break;
                }
                Err(CopyError::Need(_)) => {}
                Err(e) => return Err(e),
            }
        }
    }
    loop {
        match rw.finish(fake) {
            Ok(o) => {
                out.extend(o);
                return Ok(out);
            }
            Err(CopyError::Need(_)) => {}
            Err(e) => return Err(e),
        }
    }
}

fn run1(rw: &mut CopyRewriter, data: &[u8]) -> Result<Vec<u8>, CopyError> {
    run(rw, &[data], &mut Fake::default())
}

fn code(r: Result<Vec<u8>, CopyError>) -> &'static str {
    match r {
        Err(CopyError::Refuse(e)) => {
            assert!(e.message.starts_with("byokpg:"), "{}", e.message);
            e.code
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn cut<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

// ---------------------------------------------- independent references

type Rows = Vec<Vec<Option<Vec<u8>>>>;
type Parse = fn(&[u8]) -> Rows;

/// COPY text the simple way: escape backslash, tab, newline, CR.
fn ref_text(rows: &[Vec<Option<String>>]) -> Vec<u8> {
    ref_text_with(rows, '\t', "\\N")
}

fn ref_text_with(rows: &[Vec<Option<String>>], delimiter: char, null: &str) -> Vec<u8> {
    let mut out = String::new();
    for row in rows {
        let fields: Vec<String> = row
            .iter()
            .map(|f| match f {
                None => null.to_owned(),
                Some(s) => s
                    .chars()
                    .map(|c| match c {
                        '\\' => "\\\\".to_owned(),
                        '\t' => "\\t".to_owned(),
                        '\n' => "\\n".to_owned(),
                        '\r' => "\\r".to_owned(),
                        c if c == delimiter => format!("\\{c}"),
                        c => c.to_string(),
                    })
                    .collect(),
            })
            .collect();
        out.push_str(&fields.join(&delimiter.to_string()));
        out.push('\n');
    }
    out.into_bytes()
}

fn ref_untext(data: &[u8]) -> Rows {
    assert!(data.is_empty() || data.ends_with(b"\n"), "{data:?}");
    let mut rows = Vec::new();
    for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let row = line
            .split(|&b| b == b'\t')
            .map(|f| (f != b"\\N").then(|| unescape(f)))
            .collect();
        rows.push(row);
    }
    rows
}

fn unescape(f: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut it = f.iter();
    while let Some(&c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        let e = *it.next().expect("escape at end");
        out.push(match e {
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'b' => 8,
            b'f' => 12,
            b'v' => 11,
            other => other,
        });
    }
    out
}

/// CSV the simple way: every non-NULL value quoted.
fn ref_csv(rows: &[Vec<Option<String>>]) -> Vec<u8> {
    let mut out = String::new();
    for row in rows {
        let fields: Vec<String> = row
            .iter()
            .map(|f| match f {
                None => String::new(),
                Some(s) => format!("\"{}\"", s.replace('"', "\"\"")),
            })
            .collect();
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out.into_bytes()
}

/// A small CSV reader: quoted or unquoted fields, `""` inside quotes,
/// unquoted empty = NULL, rows end with `\n`.
fn ref_uncsv(data: &[u8]) -> Rows {
    let mut rows = Vec::new();
    let mut i = 0;
    while i < data.len() {
        let mut row = Vec::new();
        loop {
            let mut v = Vec::new();
            let quoted = data[i] == b'"';
            if quoted {
                i += 1;
                loop {
                    if data[i] == b'"' && data.get(i + 1) == Some(&b'"') {
                        v.push(b'"');
                        i += 2;
                    } else if data[i] == b'"' {
                        i += 1;
                        break;
                    } else {
                        v.push(data[i]);
                        i += 1;
                    }
                }
            } else {
                while data[i] != b',' && data[i] != b'\n' {
                    v.push(data[i]);
                    i += 1;
                }
            }
            row.push((quoted || !v.is_empty()).then_some(v));
            i += 1;
            if data[i - 1] == b'\n' {
                break;
            }
        }
        rows.push(row);
    }
    rows
}

fn bytes_rows(rows: &[Vec<Option<String>>]) -> Rows {
    rows.iter()
        .map(|r| {
            r.iter()
                .map(|f| f.as_ref().map(|s| s.as_bytes().to_vec()))
                .collect()
        })
        .collect()
}

// ------------------------------------------------------- text format

#[test]
fn text_escapes_are_decoded_before_encryption() {
    let cases: &[(&str, &[u8])] = &[
        ("plain", b"plain"),
        ("", b""),
        ("a\\tb", b"a\tb"),
        ("a\\nb\\rc", b"a\nb\rc"),
        ("\\\\", b"\\"),
        ("\\b\\f\\v", b"\x08\x0c\x0b"),
        ("\\101\\x41\\x4", b"AA\x04"),
        ("\\1010", b"A0"),
        ("\\xg", b"xg"),
        ("\\q\\N2", b"qN2"),
        ("\\303\\251", "é".as_bytes()),
        ("\\xc3\\xa9!", "é!".as_bytes()),
        ("\\\tx", b"\tx"),
        ("日本", "日本".as_bytes()),
    ];
    for (raw, plain) in cases {
        let mut rw = from(text(), &[Some(TEXT_COL)]);
        let out = run1(&mut rw, format!("{raw}\n").as_bytes()).expect(raw);
        let mut want = fake_encrypt(TEXT_COL, plain);
        want.push(b'\n');
        assert_eq!(out, want, "{raw:?}");
    }
}

#[test]
fn text_output_is_escaped_like_postgresql() {
    // (plaintext, how it must appear in a COPY text field)
    let cases: &[(&[u8], &str)] = &[
        (b"plain", "plain"),
        (b"a\tb", "a\\tb"),
        (b"a\nb\rc", "a\\nb\\rc"),
        (b"back\\slash", "back\\\\slash"),
        (b"\\N", "\\\\N"),
        (b"\x08\x0c\x0b\x01", "\\b\\f\\v\x01"),
        ("é".as_bytes(), "é"),
    ];
    for (plain, want) in cases {
        let stored = String::from_utf8(fake_encrypt(TEXT_COL, plain)).expect("ascii");
        let mut rw = to(text(), &[Some(TEXT_COL), None]);
        let out = run1(&mut rw, format!("{stored}\tx\n").as_bytes()).expect(want);
        assert_eq!(out, format!("{want}\tx\n").into_bytes());
    }
    // A non-tab delimiter is escaped too.
    let fmt = CopyFormat::Text {
        delimiter: '|',
        null: "\\N".to_owned(),
        header: false,
    };
    let stored = String::from_utf8(fake_encrypt(TEXT_COL, b"a|b\tc")).expect("ascii");
    let out = run1(
        &mut to(fmt, &[Some(TEXT_COL)]),
        format!("{stored}\n").as_bytes(),
    );
    assert_eq!(out.expect("ok"), b"a\\|b\\tc\n");
}

#[test]
fn bytea_ciphertext_backslash_is_escaped_in_text_format() {
    let mut rw = from(text(), &[None, Some(BYTEA_COL)]);
    let out = run1(&mut rw, b"1\t\\\\x0102\n").expect("ok");
    // The plaintext is the decoded `\x0102`; the ciphertext `\x45...` must
    // reach the server as `\\x45...`.
    let ct = String::from_utf8(fake_encrypt(BYTEA_COL, b"\\x0102")).expect("ascii");
    assert!(ct.starts_with("\\x"));
    assert_eq!(out, format!("1\t\\{ct}\n").into_bytes());
    // And back.
    let back = run1(&mut to(text(), &[None, Some(BYTEA_COL)]), &out).expect("ok");
    assert_eq!(back, b"1\t\\\\x0102\n");
}

#[test]
fn unprotected_fields_pass_byte_for_byte() {
    let input = b"\\101\\x41\t\\N\tx\\\ty\t\\\\\n";
    let mut rw = from(text(), &[None, None, None, None]);
    assert_eq!(run1(&mut rw, input).expect("ok"), input);
    let input = b"\"a\"\"b\",,\"\",x\n";
    let mut rw = from(csv(), &[None, None, None, None]);
    assert_eq!(run1(&mut rw, input).expect("ok"), input);
}

#[test]
fn text_nulls() {
    let mut rw = from(text(), &[Some(TEXT_COL), Some(TEXT_COL)]);
    let out = run1(&mut rw, b"\\N\t\n").expect("ok");
    let mut want = b"\\N\t".to_vec();
    want.extend(fake_encrypt(TEXT_COL, b""));
    want.push(b'\n');
    assert_eq!(out, want, "NULL passes, empty string is encrypted");
    // `\\N` is the two characters `\N`, not NULL.
    let out = run1(&mut from(text(), &[Some(TEXT_COL)]), b"\\\\N\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b"\\N"), b"\n".to_vec()].concat()
    );
    // A custom NULL string is compared raw, before de-escaping.
    let fmt = CopyFormat::Text {
        delimiter: ',',
        null: "NULL".to_owned(),
        header: false,
    };
    let mut rw = from(fmt.clone(), &[Some(TEXT_COL), Some(TEXT_COL)]);
    let out = run1(&mut rw, b"NULL,\\NULL\n").expect("ok");
    assert_eq!(
        out,
        [
            b"NULL,".to_vec(),
            fake_encrypt(TEXT_COL, b"NULL"),
            b"\n".to_vec()
        ]
        .concat()
    );
    // Decrypting: NULL stays NULL.
    let mut rw = to(fmt, &[Some(TEXT_COL)]);
    assert_eq!(run1(&mut rw, b"NULL\n").expect("ok"), b"NULL\n");
}

#[test]
fn crlf_line_ends_are_kept() {
    let mut rw = from(text(), &[Some(TEXT_COL), None]);
    let out = run1(&mut rw, b"a\tb\r\nc\td\n").expect("ok");
    let want = [
        fake_encrypt(TEXT_COL, b"a"),
        b"\tb\r\n".to_vec(),
        fake_encrypt(TEXT_COL, b"c"),
        b"\td\n".to_vec(),
    ]
    .concat();
    assert_eq!(out, want);
    let mut rw = from(csv(), &[Some(TEXT_COL)]);
    let out = run1(&mut rw, b"\"x\r\ny\"\r\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b"x\r\ny"), b"\r\n".to_vec()].concat()
    );
}

#[test]
fn final_row_without_line_end() {
    let mut rw = from(text(), &[Some(TEXT_COL)]);
    let mut fake = Fake::default();
    assert_eq!(rw.feed(b"abc", &mut fake).expect("ok"), b"");
    assert_eq!(
        rw.finish(&mut fake).expect("ok"),
        fake_encrypt(TEXT_COL, b"abc")
    );
    let mut rw = from(csv(), &[Some(TEXT_COL)]);
    assert_eq!(
        run1(&mut rw, b"\"a\nb\"").expect("ok"),
        fake_encrypt(TEXT_COL, b"a\nb")
    );
}

#[test]
fn end_marker_passes_and_the_rest_is_dropped() {
    for fmt in [text(), csv()] {
        let mut rw = from(fmt.clone(), &[Some(TEXT_COL)]);
        let out = run1(&mut rw, b"a\n\\.\nsecret\n").expect("ok");
        assert_eq!(
            out,
            [fake_encrypt(TEXT_COL, b"a"), b"\n\\.\n".to_vec()].concat()
        );
        let mut fake = Fake::default();
        assert_eq!(rw.feed(b"more secret\n", &mut fake).expect("ok"), b"");
        assert_eq!(rw.finish(&mut fake).expect("ok"), b"");
        // `\.` without a line end at the very end is the marker too.
        let mut rw = from(fmt, &[Some(TEXT_COL)]);
        assert_eq!(run1(&mut rw, b"\\.").expect("ok"), b"\\.");
    }
    // In CSV a quoted `\.` is data.
    let mut rw = from(csv(), &[Some(TEXT_COL)]);
    let out = run1(&mut rw, b"\"\\.\"\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b"\\."), b"\n".to_vec()].concat()
    );
    // Decrypted `\.` alone on a CSV line is quoted so it is not the marker.
    let stored = fake_encrypt(TEXT_COL, b"\\.");
    let out = run1(
        &mut to(csv(), &[Some(TEXT_COL)]),
        &[stored, b"\n".to_vec()].concat(),
    );
    assert_eq!(out.expect("ok"), b"\"\\.\"\n");
}

#[test]
fn header_passes_unchanged() {
    for (fmt, input) in [
        (text(), &b"id\tsecret\n1\tx\n"[..]),
        (csv(), &b"id,\"sec\nret\"\n1,x\n"[..]),
    ] {
        let header_len = input.len() - 4;
        for dir in [CopyDirection::FromStdin, CopyDirection::ToStdout] {
            let protect = [None, Some(TEXT_COL)];
            let mut rw = rewriter(dir, with_header(fmt.clone()), &protect);
            let source = if dir == CopyDirection::FromStdin {
                input.to_vec()
            } else {
                let delim = if matches!(fmt, CopyFormat::Csv { .. }) {
                    ","
                } else {
                    "\t"
                };
                let ct = String::from_utf8(fake_encrypt(TEXT_COL, b"x")).expect("ascii");
                [&input[..header_len], format!("1{delim}{ct}\n").as_bytes()].concat()
            };
            let out = run1(&mut rw, &source).expect("ok");
            assert_eq!(&out[..header_len], &input[..header_len]);
            let rest = &out[header_len..];
            if dir == CopyDirection::FromStdin {
                assert!(rest.ends_with(&[fake_encrypt(TEXT_COL, b"x"), b"\n".to_vec()].concat()));
            } else {
                assert_eq!(rest, &input[header_len..]);
            }
        }
    }
}

// -------------------------------------------------------- CSV format

#[test]
fn csv_fields_are_dequoted_before_encryption() {
    let cases: &[(&str, Option<&[u8]>)] = &[
        ("plain", Some(b"plain")),
        ("\"a,b\"", Some(b"a,b")),
        ("\"a\"\"b\"", Some(b"a\"b")),
        ("\"\"", Some(b"")),
        ("", None),
        ("a\"b,c\"d", Some(b"ab,cd")),
        ("\"multi\nline\"", Some(b"multi\nline")),
        ("  sp  ", Some(b"  sp  ")),
        ("back\\slash", Some(b"back\\slash")),
        ("\"é,日本\"", Some("é,日本".as_bytes())),
    ];
    for (raw, plain) in cases {
        let mut rw = from(csv(), &[None, Some(TEXT_COL)]);
        let out = run1(&mut rw, format!("1,{raw}\n").as_bytes()).expect(raw);
        let field = plain.map_or_else(|| raw.as_bytes().to_vec(), |p| fake_encrypt(TEXT_COL, p));
        assert_eq!(
            out,
            [b"1,".to_vec(), field, b"\n".to_vec()].concat(),
            "{raw:?}"
        );
    }
}

#[test]
fn csv_with_a_distinct_escape_character() {
    let fmt = CopyFormat::Csv {
        delimiter: ';',
        quote: '\'',
        escape: '\\',
        null: "NULL".to_owned(),
        header: false,
    };
    let protect = [Some(TEXT_COL), Some(TEXT_COL), Some(TEXT_COL)];
    // `\'` and `\\` inside quotes are escapes; `\` elsewhere is literal;
    // a quoted `NULL` is a string.
    let input = b"'it\\'s;\\\\ \\x';a\\b;'NULL'\nNULL;'';x\n";
    let out = run1(&mut from(fmt.clone(), &protect), input).expect("ok");
    let want = [
        fake_encrypt(TEXT_COL, b"it's;\\ \\x"),
        b";".to_vec(),
        fake_encrypt(TEXT_COL, b"a\\b"),
        b";".to_vec(),
        fake_encrypt(TEXT_COL, b"NULL"),
        b"\nNULL;".to_vec(),
        fake_encrypt(TEXT_COL, b""),
        b";".to_vec(),
        fake_encrypt(TEXT_COL, b"x"),
        b"\n".to_vec(),
    ]
    .concat();
    assert_eq!(out, want);
    // Back: values needing quotes get them, with the escape character.
    let back = run1(&mut to(fmt, &protect), &out).expect("ok");
    assert_eq!(back, b"'it\\'s;\\\\ \\\\x';a\\b;'NULL'\nNULL;;x\n");
}

#[test]
fn csv_output_quoting() {
    let cases: &[(&[u8], &str)] = &[
        (b"plain", "plain"),
        (b"", "\"\""),
        (b"a,b", "\"a,b\""),
        (b"say \"hi\"", "\"say \"\"hi\"\"\""),
        (b"l1\nl2", "\"l1\nl2\""),
        (b"cr\r", "\"cr\r\""),
        (b"back\\slash", "back\\slash"),
        (b" ", " "),
    ];
    for (plain, want) in cases {
        let stored = String::from_utf8(fake_encrypt(TEXT_COL, plain)).expect("ascii");
        let mut rw = to(csv(), &[None, Some(TEXT_COL)]);
        let out = run1(&mut rw, format!("1,{stored}\n").as_bytes()).expect("ok");
        assert_eq!(out, format!("1,{want}\n").into_bytes(), "{plain:?}");
    }
}

#[test]
fn csv_force_not_null_and_force_null() {
    let mut p = plan(CopyDirection::FromStdin, csv(), 2);
    p.force_not_null = vec![0];
    p.force_null = vec![1];
    let mut rw = CopyRewriter::new(&p, vec![Some(TEXT_COL), Some(TEXT_COL)]);
    // Field 0: unquoted empty is "" (encrypted); field 1: quoted "" is NULL.
    let out = run1(&mut rw, b",\"\"\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b""), b",\"\"\n".to_vec()].concat()
    );
}

// ------------------------------------------------------------ tenant

fn tenant_plan(format: CopyFormat, fields: usize, index: usize, fill: bool) -> CopyRewriter {
    let mut p = plan(CopyDirection::FromStdin, format, fields);
    p.tenant = Some(CopyTenant { index, fill });
    let mut protect = vec![None; fields];
    protect[0] = Some(TEXT_COL);
    CopyRewriter::new(&p, protect)
}

#[test]
fn tenant_fill_appends_the_tenant() {
    let out = run1(&mut tenant_plan(text(), 3, 2, true), b"s\t1\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b"s"), b"\t1\tacme\n".to_vec()].concat()
    );
    let out = run1(&mut tenant_plan(csv(), 2, 1, true), b"s\r\n").expect("ok");
    assert_eq!(
        out,
        [fake_encrypt(TEXT_COL, b"s"), b",acme\r\n".to_vec()].concat()
    );
    // The client's rows must not carry the tenant themselves.
    assert_eq!(
        code(run1(&mut tenant_plan(text(), 3, 2, true), b"s\t1\tacme\n")),
        "22P04"
    );
}

#[test]
fn tenant_check() {
    let ok = run1(&mut tenant_plan(text(), 2, 1, false), b"s\tacme\n").expect("ok");
    assert_eq!(
        ok,
        [fake_encrypt(TEXT_COL, b"s"), b"\tacme\n".to_vec()].concat()
    );
    // Escaped or quoted spellings of the tenant are the tenant.
    assert!(run1(&mut tenant_plan(text(), 2, 1, false), b"s\t\\x61cme\n").is_ok());
    assert!(run1(&mut tenant_plan(csv(), 2, 1, false), b"s,\"acme\"\n").is_ok());
    for (fmt, ok, row) in [
        (text(), &b"s\tacme\n"[..], &b"s\tevil\n"[..]),
        (text(), b"s\tacme\n", b"s\t\\N\n"),
        (text(), b"s\tacme\n", b"s\tacme \n"),
        (csv(), b"s,acme\n", b"s,\n"),
        (csv(), b"s,acme\n", b"s,\"acm\"\n"),
    ] {
        let mut rw = tenant_plan(fmt, 2, 1, false);
        let mut fake = Fake::default();
        assert_eq!(
            code(rw.feed(&[ok, row].concat(), &mut fake)),
            "42501",
            "{row:?}"
        );
        // Nothing of the stream is forwarded, and it stays refused.
        assert_eq!(code(rw.feed(b"", &mut fake)), "42501");
    }
}

// ----------------------------------------------------------- refusals

#[test]
fn malformed_input_is_refused() {
    let cases: &[(CopyFormat, &[u8], &str)] = &[
        (csv(), b"\"unterminated\n", "22P04"),
        (csv(), b"a,\"b\"\"\n", "22P04"),
        (csv(), b"a,b,c\n", "22P04"),
        (csv(), b"a\n", "22P04"),
        (text(), b"a\tb\tc\n", "22P04"),
        (text(), b"a\n", "22P04"),
        (text(), b"a\rb\tc\n", "22P04"),
        (text(), b"a\tb\\", "22P04"),
        (text(), b"a\tb\r", "22P04"),
        (text(), b"a\tb\\.\n", "22P04"),
        (text(), b"a\t\\.x\n", "22P04"),
        (csv(), b"a,b\rc\n", "22P04"),
        (text(), b"\\0\tb\n", "22021"),
        (text(), b"\\377\tb\n", "22021"),
        (text(), b"\xff\tb\n", "22021"),
    ];
    for (fmt, input, want) in cases {
        let mut rw = from(fmt.clone(), &[Some(TEXT_COL), None]);
        assert_eq!(code(run1(&mut rw, input)), *want, "{input:?}");
    }
}

#[test]
fn refusal_messages_never_hold_values() {
    let mut rw = from(text(), &[Some(TEXT_COL), None]);
    let CopyError::Refuse(e) = rw
        .feed(b"topsecret\t\\0\tx\n", &mut Fake::default())
        .unwrap_err()
    else {
        panic!("expected a refusal")
    };
    assert!(e.message.contains("line 1"), "{}", e.message);
    assert!(!e.message.contains("topsecret"));
    assert!(!format!("{rw:?}").contains("topsecret"));
}

#[test]
fn decrypt_failure_is_xx001() {
    let mut rw = to(text(), &[Some(TEXT_COL)]);
    assert_eq!(code(run1(&mut rw, b"byok1:8:00\n")), "XX001");
    let mut rw = to(csv(), &[Some(BYTEA_COL)]);
    assert_eq!(code(run1(&mut rw, b"\\x46\n")), "XX001");
}

#[test]
fn copy_query_fields_past_the_plan_are_plain() {
    let mut rw = to(text(), &[Some(TEXT_COL)]);
    let stored = String::from_utf8(fake_encrypt(TEXT_COL, b"x")).expect("ascii");
    let out = run1(&mut rw, format!("{stored}\tplain\t\\N\n").as_bytes()).expect("ok");
    assert_eq!(out, b"x\tplain\t\\N\n");
}

#[test]
fn bad_options_are_refused() {
    let fmt = CopyFormat::Text {
        delimiter: '§',
        null: "\\N".to_owned(),
        header: false,
    };
    assert_eq!(code(run1(&mut from(fmt, &[None]), b"a\n")), "0A000");
}

#[test]
fn an_endless_row_is_refused() {
    let mut rw = from(text(), &[Some(TEXT_COL)]);
    let mut fake = Fake::default();
    let chunk = vec![b'a'; 1 << 20];
    let mut refused = None;
    for _ in 0..=(MAX_ROW >> 20) {
        if let Err(e) = rw.feed(&chunk, &mut fake) {
            refused = Some(e);
            break;
        }
    }
    assert_eq!(code(Err(refused.expect("refused"))), "54000");
    assert!(rw.pending.is_empty(), "the buffer is released");
}

// ---------------------------------------------------------------- Need

#[test]
fn need_consumes_nothing_and_the_retry_gives_the_same_output() {
    let input = b"a\tb\nc\td\ne\t";
    let protect = [Some(TEXT_COL), Some(BYTEA_COL)];
    let want = run1(&mut from(text(), &protect), input).expect("ok");
    for need_at in 1..=6 {
        let mut rw = from(text(), &protect);
        let mut fake = Fake::needing_at(need_at);
        let first = rw.feed(b"a\tb\nc", &mut fake);
        let mut out = match first {
            Ok(o) => o,
            Err(CopyError::Need(Need::ActiveKey)) => {
                assert!(rw.pending.is_empty(), "state untouched");
                assert_eq!(rw.state.line, 0);
                rw.feed(b"a\tb\nc", &mut fake).expect("retry")
            }
            Err(e) => panic!("{e:?}"),
        };
        let pending = rw.pending.clone();
        let line = rw.state.line;
        match rw.feed(b"\td\ne\t", &mut fake) {
            Ok(o) => out.extend(o),
            Err(CopyError::Need(_)) => {
                assert_eq!(rw.pending, pending, "state untouched");
                assert_eq!(rw.state.line, line);
                out.extend(rw.feed(b"\td\ne\t", &mut fake).expect("retry"));
            }
            Err(e) => panic!("{e:?}"),
        }
        match rw.finish(&mut fake) {
            Ok(o) => out.extend(o),
            Err(CopyError::Need(_)) => out.extend(rw.finish(&mut fake).expect("retry")),
            Err(e) => panic!("{e:?}"),
        }
        assert_eq!(out, want, "need at call {need_at}");
        assert_eq!(fake.needs, usize::from(need_at <= 6));
    }
}

// ------------------------------------------------------------ proptest

fn value() -> impl Strategy<Value = Option<String>> {
    let ch = prop_oneof![
        Just('\t'),
        Just('\n'),
        Just('\r'),
        Just('\\'),
        Just('"'),
        Just(','),
        Just('.'),
        Just('N'),
        Just('x'),
        Just('0'),
        Just('\u{8}'),
        any::<char>().prop_filter("no NUL", |c| *c != '\0'),
    ];
    prop::option::of(prop::collection::vec(ch, 0..10).prop_map(String::from_iter))
}

fn rows() -> impl Strategy<Value = Vec<Vec<Option<String>>>> {
    prop::collection::vec(prop::collection::vec(value(), 3), 0..6)
}

const PROTECT: [Option<usize>; 3] = [Some(TEXT_COL), None, Some(BYTEA_COL)];

/// FROM then TO through the fake, with the given chunking and a Need at
/// call `need_at`; checks the ciphertext stream too.
fn round_trip(
    rows: &[Vec<Option<String>>],
    fmt: &CopyFormat,
    cuts: &[prop::sample::Index],
    need_at: usize,
) {
    let is_csv = matches!(fmt, CopyFormat::Csv { .. });
    let (input, parse): (Vec<u8>, Parse) = if is_csv {
        (ref_csv(rows), ref_uncsv)
    } else {
        (ref_text(rows), ref_untext)
    };
    let whole = run1(&mut from(fmt.clone(), &PROTECT), &input).expect("encrypt");
    let mut fake = Fake::needing_at(need_at);
    let split = run(
        &mut from(fmt.clone(), &PROTECT),
        &cut(&input, cuts),
        &mut fake,
    );
    assert_eq!(
        split.expect("encrypt split"),
        whole,
        "chunking changes nothing"
    );

    let plain = bytes_rows(rows);
    let stored = parse(&whole);
    assert_eq!(stored.len(), plain.len());
    for (s, p) in stored.iter().zip(&plain) {
        assert_eq!(s[0], p[0].as_deref().map(|v| fake_encrypt(TEXT_COL, v)));
        assert_eq!(s[1], p[1]);
        assert_eq!(s[2], p[2].as_deref().map(|v| fake_encrypt(BYTEA_COL, v)));
    }

    let back_whole = run1(&mut to(fmt.clone(), &PROTECT), &whole).expect("decrypt");
    let mut fake = Fake::needing_at(need_at);
    let back = run(
        &mut to(fmt.clone(), &PROTECT),
        &cut(&whole, cuts),
        &mut fake,
    );
    let back = back.expect("decrypt split");
    assert_eq!(back, back_whole, "chunking changes nothing");
    assert_eq!(parse(&back), plain);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn round_trip_text(
        rows in rows(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        need_at in 1usize..20,
    ) {
        round_trip(&rows, &text(), &cuts, need_at);
    }

    #[test]
    fn round_trip_csv(
        rows in rows(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        need_at in 1usize..20,
    ) {
        round_trip(&rows, &csv(), &cuts, need_at);
    }

    /// Arbitrary bytes never panic, and chunking never changes the result.
    #[test]
    fn arbitrary_input_is_chunking_independent(
        input in prop::collection::vec(
            prop_oneof![Just(b'\t'), Just(b'\n'), Just(b'\r'), Just(b'\\'), Just(b'"'),
                        Just(b','), Just(b'.'), Just(b'N'), any::<u8>()],
            0..60),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        is_csv in any::<bool>(),
        dir_to in any::<bool>(),
    ) {
        let fmt = if is_csv { csv() } else { text() };
        let protect = [Some(TEXT_COL), None];
        let make = || if dir_to { to(fmt.clone(), &protect) } else { from(fmt.clone(), &protect) };
        let whole = run1(&mut make(), &input);
        let split = run(&mut make(), &cut(&input, &cuts), &mut Fake::default());
        match (whole, split) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(CopyError::Refuse(a)), Err(CopyError::Refuse(b))) => prop_assert_eq!(a.code, b.code),
            (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
        }
    }
}

// ------------------------------------------------- real PostgreSQL

const PG_HINT: &str = "PostgreSQL is needed at 127.0.0.1:5432 (trust auth, user postgres, \
    database `test`); start it with `pg_ctlcluster 15 main start`";

async fn connect(db: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port=5432 user=postgres dbname={db}"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap_or_else(|e| panic!("{PG_HINT} ({e})"));
    tokio::spawn(conn);
    client
}

async fn test_db() -> tokio_postgres::Client {
    let admin = connect("postgres").await;
    if let Err(e) = admin.batch_execute("CREATE DATABASE test").await {
        let code = e.code().map(|c| c.code().to_owned()).unwrap_or_default();
        assert!(
            code == "42P04" || code == "23505",
            "create database test: {e}"
        );
    }
    connect("test").await
}

fn pg_rows() -> Vec<Vec<Option<String>>> {
    let texts = [
        "",
        "plain",
        "tab\there",
        "new\nline",
        "cr\rlf\r\n",
        "back\\slash",
        "\\N",
        "\\.",
        "quote\"s 'single'",
        "comma,s;semi|pipe",
        "unicode é 漢字 🎉",
        "NULL",
        "  spaces  ",
        "\\x41",
        "\u{1}\u{8}\u{b}\u{c}\u{7f}",
    ];
    let byteas = ["\\x", "\\x00ff41", "\\x5c0a0d09", "\\xdeadbeef"];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vec![
                Some(i.to_string()),
                (i % 5 != 4).then(|| (*t).to_owned()),
                (i % 6 != 5).then(|| byteas[i % byteas.len()].to_owned()),
                (i % 7 != 6).then(|| texts[texts.len() - 1 - i].to_owned()),
            ]
        })
        .collect()
}

/// One COPY format as byokpg's plan and as the SQL options.
struct PgFormat {
    fmt: CopyFormat,
    opts: &'static str,
    header: &'static [u8],
    encode: fn(&[Vec<Option<String>>]) -> Vec<u8>,
}

/// CSV quoted with `'`, escaped with `\`, NULL spelled `NULL`.
fn custom_csv(rows: &[Vec<Option<String>>]) -> Vec<u8> {
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut out = String::new();
    for row in rows {
        let f: Vec<String> = row
            .iter()
            .map(|f| f.as_deref().map_or("NULL".to_owned(), q))
            .collect();
        out.push_str(&f.join(";"));
        out.push('\n');
    }
    out.into_bytes()
}

fn pg_formats() -> Vec<PgFormat> {
    let custom_text = CopyFormat::Text {
        delimiter: '|',
        null: "<null>".to_owned(),
        header: true,
    };
    let custom_csv_format = CopyFormat::Csv {
        delimiter: ';',
        quote: '\'',
        escape: '\\',
        null: "NULL".to_owned(),
        header: false,
    };
    vec![
        PgFormat {
            fmt: text(),
            opts: "(FORMAT text)",
            header: b"",
            encode: ref_text,
        },
        PgFormat {
            fmt: with_header(csv()),
            opts: "(FORMAT csv, HEADER true)",
            header: b"id,a,b,c\n",
            encode: ref_csv,
        },
        PgFormat {
            fmt: custom_text,
            opts: "(FORMAT text, DELIMITER '|', NULL '<null>', HEADER true)",
            header: b"id|a|b|c\n",
            encode: |rows| ref_text_with(rows, '|', "<null>"),
        },
        PgFormat {
            fmt: custom_csv_format,
            opts: "(FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\', NULL 'NULL')",
            header: b"",
            encode: custom_csv,
        },
    ]
}

/// The rewriter's output goes straight into PostgreSQL (no proxy): it must
/// be valid COPY data holding exactly the fake ciphertexts; and what COPY TO
/// returns, decrypted, must load back into PostgreSQL as the original rows.
async fn postgres_accepts(client: &tokio_postgres::Client, f: &PgFormat) {
    client
        .batch_execute(
            "DROP TABLE IF EXISTS pg_temp.copy_scratch, pg_temp.copy_plain;
             CREATE TEMP TABLE copy_scratch (id int, a text, b bytea, c text, tenant text);
             CREATE TEMP TABLE copy_plain (id int, a text, b text, c text)",
        )
        .await
        .expect("scratch tables");
    let rows = pg_rows();
    let input = [f.header.to_vec(), (f.encode)(&rows)].concat();
    let protect = [None, Some(TEXT_COL), Some(BYTEA_COL), None, None];
    let mut p = plan(CopyDirection::FromStdin, f.fmt.clone(), 5);
    p.tenant = Some(CopyTenant {
        index: 4,
        fill: true,
    });
    let data = run1(&mut CopyRewriter::new(&p, protect.to_vec()), &input).expect("rewrite");
    let sql = format!(
        "COPY copy_scratch (id, a, b, c, tenant) FROM STDIN WITH {}",
        f.opts
    );
    assert_eq!(copy_in(client, &sql, data).await, rows.len(), "{}", f.opts);
    check_stored(client, &rows, f.opts).await;

    let sql = format!("COPY copy_scratch (id, a, b, c) TO STDOUT WITH {}", f.opts);
    let out = decrypt_out(client, &sql, to(f.fmt.clone(), &protect[..4])).await;
    assert!(out.starts_with(f.header), "the header passes");
    let sql = format!("COPY copy_plain (id, a, b, c) FROM STDIN WITH {}", f.opts);
    assert_eq!(copy_in(client, &sql, out).await, rows.len());
    let back = client
        .query(
            "SELECT id::text, a, b, c FROM copy_plain ORDER BY copy_plain.id",
            &[],
        )
        .await
        .expect("select");
    let back: Vec<Vec<Option<String>>> = back
        .iter()
        .map(|r| (0..4).map(|i| r.get(i)).collect())
        .collect();
    assert_eq!(back, rows, "{}", f.opts);
}

/// The database holds the fake ciphertexts, the plain column and the tenant.
async fn check_stored(client: &tokio_postgres::Client, rows: &[Vec<Option<String>>], opts: &str) {
    let stored = client
        .query(
            "SELECT id, a, b, c, tenant FROM copy_scratch ORDER BY id",
            &[],
        )
        .await
        .expect("select");
    assert_eq!(stored.len(), rows.len());
    for (row, want) in stored.iter().zip(rows) {
        let (a, b, c): (Option<String>, Option<Vec<u8>>, Option<String>) =
            (row.get(1), row.get(2), row.get(3));
        let enc = |col, v: &Option<String>| v.as_deref().map(|v| fake_encrypt(col, v.as_bytes()));
        assert_eq!(Some(row.get::<_, i32>(0).to_string()), want[0]);
        assert_eq!(a.map(String::into_bytes), enc(TEXT_COL, &want[1]), "{opts}");
        let b_want = want[2].as_ref().map(|v| [b"E", v.as_bytes()].concat());
        assert_eq!(
            b, b_want,
            "bytea holds the fake ciphertext's bytes ({opts})"
        );
        assert_eq!(c, want[3], "{opts}");
        assert_eq!(row.get::<_, String>(4), TENANT);
    }
}

async fn copy_in(client: &tokio_postgres::Client, sql: &str, data: Vec<u8>) -> usize {
    let sink = client.copy_in(sql).await.expect("copy in");
    let mut sink = std::pin::pin!(sink);
    sink.send(bytes::Bytes::from(data)).await.expect("send");
    let n = sink
        .as_mut()
        .finish()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL rejects the rows of {sql}: {e}"));
    usize::try_from(n).expect("count")
}

/// COPY TO through the rewriter, chunk by chunk as the server sends them.
async fn decrypt_out(client: &tokio_postgres::Client, sql: &str, mut rw: CopyRewriter) -> Vec<u8> {
    let stream = client.copy_out(sql).await.expect("copy out");
    let mut stream = std::pin::pin!(stream);
    let mut fake = Fake::default();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend(
            rw.feed(&chunk.expect("copy data"), &mut fake)
                .expect("decrypt"),
        );
    }
    out.extend(rw.finish(&mut fake).expect("decrypt"));
    out
}

#[tokio::test]
async fn postgresql_accepts_rewritten_text_and_csv() {
    let client = test_db().await;
    for f in pg_formats() {
        postgres_accepts(&client, &f).await;
    }
}
