//! Property tests of the wire codec and the relay against arbitrary and
//! adversarial input: every decoder answers `Ok`/`Err` and never panics,
//! framing never consumes bytes it did not report, encoders and decoders
//! agree (also with `postgres-protocol`'s independent encoders), and the
//! relay state machine stays in step with a model of PostgreSQL's answers.
//!
//! The cargo-fuzz targets in `fuzz/` drive the same entry points for much
//! longer runs; these keep a modest case count so `cargo test` stays fast.

use std::sync::LazyLock;

use bytes::{BufMut, BytesMut};
use postgres_protocol::IsNull;
use postgres_protocol::message::frontend;
use proptest::collection::vec;
use proptest::prelude::*;

use super::frame::{MAX_MESSAGE_LEN, frame_len};
use super::messages;
use super::scram::{ScramServer, Verifier};
use super::startup::{self, StartupPacket};
use super::{PgError, next_frame};
use crate::metrics::SessionMetrics;
use crate::rewrite::{Classifier, CryptoFailure, Need, ProtectedColumns, RowHook};
use crate::session::registry::RowMarks;
use crate::session::relay::{Ctx, Relay, RelayError};

const CASES: u32 = 512;

/// Frontend message tags: everything a client may send in a session.
const CLIENT_TAGS: &[u8] = b"QPBDECSFXHdcfp";
/// Backend message tags PostgreSQL sends during a session.
const BACKEND_TAGS: &[u8] = b"DTn123CIsEZNSAGHWdctvVKR";
/// A table the relay's classifier treats as protected.
const PROTECTED_TABLE: &str = "secrets";
const PROTECTED_OID: u32 = 16_400;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// Bytes without NUL (names and SQL text of C strings).
fn cbytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(1u8..=255, 0..max)
}

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(body.len() + 5);
    b.push(tag);
    b.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn body_of(frame: &[u8]) -> &[u8] {
    let mut buf = BytesMut::from(frame);
    let f = next_frame(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "encoder wrote trailing bytes");
    &frame[frame.len() - f.body().len()..]
}

/// Split `all` into consecutive chunks of the given sizes (the last chunk
/// takes whatever is left).
fn chunks<'a>(all: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = all;
    for &n in sizes {
        if rest.is_empty() {
            break;
        }
        let (a, b) = rest.split_at(n.min(rest.len()));
        out.push(a);
        rest = b;
    }
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

// ---------------------------------------------------------------- framing

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_len_is_bounded_by_the_input(buf in bytes(64)) {
        if let Ok(Some(n)) = frame_len(&buf) {
            prop_assert!((5..=buf.len()).contains(&n));
            prop_assert!(n <= MAX_MESSAGE_LEN);
        }
    }

    /// `next_frame` takes exactly the frames it returns, in order, and leaves
    /// the buffer untouched when it answers "need more" or an error.
    #[test]
    fn next_frame_consumes_exactly_what_it_reports(input in bytes(256)) {
        let mut buf = BytesMut::from(&input[..]);
        let mut taken = Vec::new();
        loop {
            let before = buf.len();
            let Ok(Some(f)) = next_frame(&mut buf) else {
                prop_assert_eq!(before, buf.len());
                break;
            };
            let declared = i32::from_be_bytes([f.raw[1], f.raw[2], f.raw[3], f.raw[4]]);
            prop_assert_eq!(f.raw.len(), usize::try_from(declared).unwrap() + 1);
            prop_assert_eq!(f.tag, f.raw[0]);
            prop_assert_eq!(before - buf.len(), f.raw.len());
            taken.extend_from_slice(&f.raw);
        }
        taken.extend_from_slice(&buf);
        prop_assert_eq!(taken, input);
    }

    #[test]
    fn well_framed_sequences_split_back_into_their_frames(
        frames in vec((any::<u8>(), bytes(40)), 0..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let all: Vec<u8> = frames.iter().flat_map(|(t, b)| framed(*t, b)).collect();
        let cut = cut.index(all.len() + 1);
        let mut buf = BytesMut::from(&all[..cut]);
        let mut seen = Vec::new();
        while let Some(f) = next_frame(&mut buf).unwrap() {
            seen.push((f.tag, f.body().to_vec()));
        }
        // Only complete frames come out, in order; the partial rest stays.
        prop_assert_eq!(&frames[..seen.len()], &seen[..]);
        let used: usize = seen.iter().map(|(_, b)| b.len() + 5).sum();
        prop_assert_eq!(buf.len(), cut - used);
    }
}

// ---------------------------------------------------------------- decoders

/// Valid message bodies of every decoded kind, to be mutated.
fn valid_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        (cbytes(8), cbytes(24), vec(any::<u32>(), 0..4))
            .prop_map(|(n, s, t)| encode(|o| messages::parse(o, &n, &s, &t))),
        (cbytes(8), cbytes(8), bind_params())
            .prop_map(|(p, s, (f, v, r))| bind_frame(&p, &s, &f, &v, &r)),
        (cbytes(8), any::<i32>()).prop_map(|(p, l)| encode(|o| messages::execute(o, &p, l))),
        cbytes(24).prop_map(|s| encode(|o| messages::query(o, &s))),
        (prop::sample::select(b"SPX".to_vec()), cbytes(8)).prop_map(|(k, n)| {
            let mut b = vec![k];
            b.extend_from_slice(&n);
            b.push(0);
            framed(b'D', &b)
        }),
        vec(row_field(), 0..4).prop_map(|f| framed(b'T', &row_description(&f))),
        vec(prop::option::of(bytes(12)), 0..4).prop_map(|v| framed(b'D', &data_row(&v))),
    ]
    .prop_map(|frame| body_of(&frame).to_vec())
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(prop::sample::Index),
    Flip(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        (any::<prop::sample::Index>(), 1u8..).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        bytes(8).prop_map(Mutation::Append),
    ]
}

fn mutate(mut body: Vec<u8>, m: &Mutation) -> Vec<u8> {
    match m {
        Mutation::Truncate(i) => body.truncate(i.index(body.len() + 1)),
        Mutation::Flip(i, x) if !body.is_empty() => {
            let i = i.index(body.len());
            body[i] ^= x;
        }
        Mutation::Flip(..) => {}
        Mutation::Insert(i, x) => body.insert(i.index(body.len() + 1), *x),
        Mutation::Append(extra) => body.extend_from_slice(extra),
    }
    body
}

/// Run every decoder on `body`; they may fail but must not panic.
fn decode_all(body: &[u8]) {
    let _ = messages::parse_parse(body);
    let _ = messages::parse_bind(body);
    let _ = messages::parse_bind_head(body);
    let _ = messages::parse_target(body, "Describe");
    let _ = messages::parse_execute(body);
    let _ = messages::parse_query(body);
    let _ = messages::parse_row_description(body);
    let _ = messages::parse_data_row(body);
    let _ = startup::parse_startup(body);
    let _ = super::errors::error_fields(body);
    let _ = super::errors::error_summary(body);
}

/// libpq `options` text: arbitrary, or assembled from the tokens that matter.
fn option_text() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "-c",
        "--",
        "-c ",
        " ",
        "\\",
        "\\ ",
        "\t",
        "=",
        "byokpg.tenant",
        "BYOKPG.Tenant",
        "x",
        "é",
        "\u{a0}",
    ]);
    prop_oneof!["\\PC{0,60}", vec(token, 0..16).prop_map(|t| t.concat()),]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(body in bytes(128)) {
        decode_all(&body);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_bodies(
        body in valid_body(),
        muts in vec(mutation(), 1..4),
    ) {
        let body = muts.iter().fold(body, mutate);
        decode_all(&body);
    }

    /// Every decoder requires the body to be used up exactly: decoders read
    /// sequentially, so a body that decoded gets the same reads plus
    /// leftover bytes when something is appended.
    #[test]
    fn decoders_reject_trailing_bytes(body in valid_body(), extra in vec(any::<u8>(), 1..4)) {
        let mut longer = body.clone();
        longer.extend_from_slice(&extra);
        if messages::parse_parse(&body).is_ok() {
            prop_assert!(messages::parse_parse(&longer).is_err());
        }
        if messages::parse_bind(&body).is_ok() {
            prop_assert!(messages::parse_bind(&longer).is_err());
        }
        if messages::parse_execute(&body).is_ok() {
            prop_assert!(messages::parse_execute(&longer).is_err());
        }
        if messages::parse_query(&body).is_ok() {
            prop_assert!(messages::parse_query(&longer).is_err());
        }
        if messages::parse_target(&body, "Describe").is_ok() {
            prop_assert!(messages::parse_target(&longer, "Describe").is_err());
        }
        if messages::parse_row_description(&body).is_ok() {
            prop_assert!(messages::parse_row_description(&longer).is_err());
        }
        if messages::parse_data_row(&body).is_ok() {
            prop_assert!(messages::parse_data_row(&longer).is_err());
        }
    }

    #[test]
    fn startup_len_and_parse_startup_never_panic(buf in bytes(96), code in any::<i32>()) {
        if let Ok(Some(n)) = startup::startup_len(&buf) {
            prop_assert!((8..=startup::MAX_STARTUP_LEN).contains(&n));
            if buf.len() >= n {
                let _ = startup::parse_startup(&buf[..n]);
            }
        }
        let _ = startup::parse_startup(&buf);
        // The same bytes behind a correct length and an arbitrary code.
        let mut packet = i32::try_from(buf.len() + 8).unwrap().to_be_bytes().to_vec();
        packet.extend_from_slice(&code.to_be_bytes());
        packet.extend_from_slice(&buf);
        let _ = startup::parse_startup(&packet);
        let mut v3 = packet.clone();
        v3[4..8].copy_from_slice(&0x0003_0000_i32.to_be_bytes());
        let _ = startup::parse_startup(&v3);
    }

    #[test]
    fn take_tenant_option_never_panics_and_its_rest_is_stable(options in option_text()) {
        let (_, rest) = startup::take_tenant_option(&options);
        // What is forwarded re-splits into the same words, none of them ours.
        prop_assert_eq!(startup::take_tenant_option(&rest), (None, rest.clone()));
    }

    #[test]
    fn tenant_option_is_found_among_other_options(
        before in vec("[a-z_]{1,8}=[a-zA-Z0-9 \\\\]{0,8}", 0..3),
        after in vec("[a-z_]{1,8}=[a-zA-Z0-9 \\\\]{0,8}", 0..3),
        tenant in "[a-z0-9_]{1,12}",
        long in any::<bool>(),
    ) {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(' ', "\\ ");
        let word = |s: &String| format!("-c {}", esc(s));
        let ours = if long { format!("--byokpg.tenant={tenant}") } else { format!("-c byokpg.tenant={tenant}") };
        let mut words: Vec<String> = before.iter().map(word).collect();
        words.push(ours);
        words.extend(after.iter().map(word));
        let (found, rest) = startup::take_tenant_option(&words.join(" "));
        prop_assert_eq!(found, Some(tenant));
        let expected: Vec<String> = before.iter().chain(&after).map(word).collect();
        prop_assert_eq!(rest, expected.join(" "));
    }
}

// ---------------------------------------------------------------- round trips

fn encode(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut out = BytesMut::new();
    f(&mut out);
    out.to_vec()
}

type BindParams = (Vec<i16>, Vec<Option<Vec<u8>>>, Vec<i16>);

fn bind_params() -> impl Strategy<Value = BindParams> {
    (
        vec(any::<i16>(), 0..4),
        vec(prop::option::of(bytes(16)), 0..6),
        vec(any::<i16>(), 0..4),
    )
}

/// A Bind frame (byokpg has no general Bind encoder; this is the wire layout).
fn bind_frame(
    portal: &[u8],
    stmt: &[u8],
    formats: &[i16],
    values: &[Option<Vec<u8>>],
    results: &[i16],
) -> Vec<u8> {
    let mut b = BytesMut::new();
    messages::put_cstr(&mut b, portal);
    messages::put_cstr(&mut b, stmt);
    b.put_i16(i16::try_from(formats.len()).unwrap());
    for f in formats {
        b.put_i16(*f);
    }
    b.put_i16(i16::try_from(values.len()).unwrap());
    for v in values {
        match v {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap());
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.put_i16(i16::try_from(results.len()).unwrap());
    for f in results {
        b.put_i16(*f);
    }
    framed(b'B', &b)
}

type Field = (Vec<u8>, u32, i16, u32, i16, i32, i16);

fn row_field() -> impl Strategy<Value = Field> {
    (
        cbytes(8),
        prop_oneof![Just(0), Just(PROTECTED_OID), any::<u32>()],
        prop_oneof![Just(0), Just(2), any::<i16>()],
        any::<u32>(),
        any::<i16>(),
        any::<i32>(),
        0i16..2,
    )
}

fn row_description(fields: &[Field]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(fields.len()).unwrap());
    for (name, table, attnum, ty, len, typmod, format) in fields {
        messages::put_cstr(&mut b, name);
        b.put_u32(*table);
        b.put_i16(*attnum);
        b.put_u32(*ty);
        b.put_i16(*len);
        b.put_i32(*typmod);
        b.put_i16(*format);
    }
    b.to_vec()
}

fn data_row(values: &[Option<Vec<u8>>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(i16::try_from(values.len()).unwrap());
    for v in values {
        match v {
            Some(v) => {
                b.put_i32(i32::try_from(v.len()).unwrap());
                b.put_slice(v);
            }
            None => b.put_i32(-1),
        }
    }
    b.to_vec()
}

/// A C string as `postgres-protocol` wants it: `&str` without NUL.
fn cstring(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[^\\x00]{{0,{max}}}")).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn parse_roundtrips(name in cstring(10), sql in cstring(40), types in vec(any::<u32>(), 0..8)) {
        let ours = encode(|o| messages::parse(o, name.as_bytes(), sql.as_bytes(), &types));
        let theirs = encode(|o| frontend::parse(&name, &sql, types.iter().copied(), o).unwrap());
        prop_assert_eq!(&ours, &theirs);
        let p = messages::parse_parse(body_of(&ours)).unwrap();
        prop_assert_eq!((p.name, p.sql, p.param_types), (name.as_bytes(), sql.as_bytes(), types));
    }

    #[test]
    fn bind_roundtrips(portal in cstring(10), stmt in cstring(10), (formats, values, results) in bind_params()) {
        let theirs = encode(|o| {
            let encoded = frontend::bind(
                &portal,
                &stmt,
                formats.iter().copied(),
                values.iter(),
                |v, buf| Ok(match v {
                    Some(v) => { buf.put_slice(v); IsNull::No }
                    None => IsNull::Yes,
                }),
                results.iter().copied(),
                o,
            );
            assert!(encoded.is_ok(), "postgres-protocol refused the Bind");
        });
        prop_assert_eq!(&bind_frame(portal.as_bytes(), stmt.as_bytes(), &formats, &values, &results), &theirs);
        let b = messages::parse_bind(body_of(&theirs)).unwrap();
        prop_assert_eq!(b.portal, portal.as_bytes());
        prop_assert_eq!(b.statement, stmt.as_bytes());
        prop_assert_eq!(b.param_formats, formats);
        let expected: Vec<Option<&[u8]>> = values.iter().map(Option::as_deref).collect();
        prop_assert_eq!(b.params, expected);
        prop_assert_eq!(b.result_formats, results);
        let head = messages::parse_bind_head(body_of(&theirs)).unwrap();
        prop_assert_eq!((head.portal, head.statement), (portal.as_bytes(), stmt.as_bytes()));
    }

    #[test]
    fn execute_query_and_targets_roundtrip(portal in cstring(10), limit in any::<i32>(), sql in cstring(60), kind in prop::sample::select(b"SP".to_vec())) {
        let ours = encode(|o| messages::execute(o, portal.as_bytes(), limit));
        prop_assert_eq!(&ours, &encode(|o| frontend::execute(&portal, limit, o).unwrap()));
        prop_assert_eq!(messages::parse_execute(body_of(&ours)).unwrap(), (portal.as_bytes(), limit));

        let ours = encode(|o| messages::query(o, sql.as_bytes()));
        prop_assert_eq!(&ours, &encode(|o| frontend::query(&sql, o).unwrap()));
        prop_assert_eq!(messages::parse_query(body_of(&ours)).unwrap(), sql.as_bytes());

        let d = encode(|o| frontend::describe(kind, &portal, o).unwrap());
        prop_assert_eq!(messages::parse_target(body_of(&d), "Describe").unwrap(), (kind, portal.as_bytes()));
        let c = encode(|o| frontend::close(kind, &portal, o).unwrap());
        prop_assert_eq!(messages::parse_target(body_of(&c), "Close").unwrap(), (kind, portal.as_bytes()));
    }

    #[test]
    fn row_description_and_data_row_roundtrip(fields in vec(row_field(), 0..6), values in vec(prop::option::of(bytes(20)), 0..6)) {
        let got = messages::parse_row_description(&row_description(&fields)).unwrap();
        let got: Vec<Field> = got
            .into_iter()
            .map(|f| (f.name, f.table_oid, f.attnum, f.type_oid, f.type_len, f.type_mod, f.format))
            .collect();
        prop_assert_eq!(got, fields);
        let row = data_row(&values);
        let got = messages::parse_data_row(&row).unwrap();
        let expected: Vec<Option<&[u8]>> = values.iter().map(Option::as_deref).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn startup_roundtrips(
        params in vec(("[^\\x00]{1,16}", "[^\\x00]{0,24}"), 0..8),
        pid in any::<i32>(),
        secret in any::<i32>(),
    ) {
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let ours = startup::encode_startup(&refs);
        let mut theirs = BytesMut::new();
        frontend::startup_message(refs.iter().copied(), &mut theirs).unwrap();
        prop_assert_eq!(&ours[..], &theirs[..]);
        prop_assert_eq!(startup::startup_len(&ours).unwrap(), Some(ours.len()));
        let StartupPacket::Startup(m) = startup::parse_startup(&ours).unwrap() else {
            panic!("not decoded as a StartupMessage");
        };
        prop_assert_eq!((m.major, m.minor), (3, 0));
        prop_assert_eq!(m.params, params);

        let cancel = startup::encode_cancel(pid, secret);
        prop_assert_eq!(startup::parse_startup(&cancel).unwrap(), StartupPacket::Cancel { pid, secret });
    }

    #[test]
    fn error_responses_roundtrip(message in "[^\\x00]{0,40}", hint in prop::option::of("[^\\x00]{0,20}")) {
        let mut e = PgError::protocol_violation(&message);
        if let Some(h) = &hint {
            e = e.with_hint(h.clone());
        }
        let frame = e.to_bytes();
        let (code, msg) = super::errors::error_summary(body_of(&frame));
        prop_assert_eq!(code, e.code);
        prop_assert_eq!(msg, e.message);
    }
}

// ---------------------------------------------------------------- SCRAM

static VERIFIER: LazyLock<Verifier> = LazyLock::new(|| Verifier::from_password(b"pencil"));

proptest! {
    #![proptest_config(config())]

    #[test]
    fn scram_never_panics_on_arbitrary_messages(first in bytes(96), fin in bytes(160)) {
        let mut server = ScramServer::new(&VERIFIER);
        let _ = server.client_first(&first);
        // The server nonce has a random part: arbitrary bytes never pass.
        prop_assert!(server.client_final(&fin).is_err());
        // A second final message after the exchange ended is refused too.
        prop_assert!(server.client_final(&fin).is_err());
    }

    /// Well-formed messages with a forged proof: the proof is checked, and
    /// nothing but the right password logs in.
    #[test]
    fn scram_refuses_forged_proofs(
        gs2 in prop::sample::select(vec!["n,,", "y,,", "n,a=someone,"]),
        cnonce in "[!-+\\x2d-~]{1,24}",
        proof in vec(any::<u8>(), 0..40),
        extra in "[a-z]=[a-z0-9]{0,6}",
    ) {
        use base64::Engine as _;
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut server = ScramServer::new(&VERIFIER);
        let first = server.client_first(format!("{gs2}n=,r={cnonce}").as_bytes()).unwrap();
        let nonce = first.split(',').find_map(|a| a.strip_prefix("r=")).unwrap();
        prop_assert!(nonce.starts_with(&cnonce));
        let fin = format!("c={},r={nonce},{extra},p={}", b64.encode(gs2), b64.encode(&proof));
        prop_assert!(server.client_final(fin.as_bytes()).is_err());
    }

    #[test]
    fn scram_verifier_parse_never_panics(s in "SCRAM-SHA-256\\$\\PC{0,80}") {
        let _ = Verifier::parse(&s);
    }
}

// ---------------------------------------------------------------- relay

/// Stands in for the session's keys: upper-cases marked rows. A `needy`
/// one first answers every row with `Need` (a key to fetch), as a cold
/// cache does, and succeeds when the relay is called again.
#[derive(Default)]
struct Upper {
    needy: bool,
    asked: bool,
}

impl Upper {
    fn needy() -> Self {
        Self {
            needy: true,
            asked: false,
        }
    }
}

impl RowHook for Upper {
    fn rewrite_row(
        &mut self,
        _: &RowMarks,
        _: &[bool],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CryptoFailure> {
        if self.needy && !std::mem::replace(&mut self.asked, true) {
            return Err(CryptoFailure::Need(Need::Key(1)));
        }
        self.asked = false;
        let s = messages::begin_msg(out, b'D');
        out.extend_from_slice(&body.to_ascii_uppercase());
        messages::finish_msg(out, s);
        Ok(())
    }

    fn encrypt_literal(&mut self, _: usize, value: &str) -> Result<String, CryptoFailure> {
        Ok(format!(
            "'{}'",
            value.to_ascii_uppercase().replace('\'', "''")
        ))
    }

    fn encrypt_param(&mut self, _: usize, value: &[u8], _: bool) -> Result<Vec<u8>, CryptoFailure> {
        Ok(value.to_ascii_uppercase())
    }

    fn tenant(&self) -> &'static str {
        "acme"
    }

    fn decrypt_field(&mut self, _column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        Ok(stored.to_vec())
    }
}

struct World {
    classifier: Classifier,
    protected: ProtectedColumns,
}

impl World {
    fn new(protect: bool) -> Self {
        let mut protected = ProtectedColumns::default();
        if protect {
            protected.insert(PROTECTED_OID, 2, 0);
        }
        Self {
            classifier: Classifier::new([(
                PROTECTED_TABLE.to_owned(),
                format!("public.{PROTECTED_TABLE}"),
            )]),
            protected,
        }
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            classifier: &self.classifier,
            protected: &self.protected,
            known_oids: None,
            write: None,
            metrics: SessionMetrics::get(),
        }
    }
}

/// A frontend message that decodes (names drawn from a small set so that
/// statements and portals collide).
fn client_frame() -> impl Strategy<Value = Vec<u8>> {
    let name = || prop::sample::select(vec!["", "a", "b"]);
    let sql = || {
        prop_oneof![
            Just("select 1".to_owned()),
            Just(format!("select * from {PROTECTED_TABLE}")),
            Just(format!("insert into {PROTECTED_TABLE} values ($1)")),
            cstring(20),
        ]
    };
    prop_oneof![
        sql().prop_map(|s| encode(|o| frontend::query(&s, o).unwrap())),
        (name(), sql()).prop_map(|(n, s)| encode(|o| frontend::parse(n, &s, [], o).unwrap())),
        (name(), name(), bind_params()).prop_map(|(p, s, (f, v, r))| bind_frame(
            p.as_bytes(),
            s.as_bytes(),
            &f,
            &v,
            &r
        )),
        (prop::sample::select(b"SP".to_vec()), name())
            .prop_map(|(k, n)| encode(|o| frontend::describe(k, n, o).unwrap())),
        (name(), any::<i32>()).prop_map(|(p, l)| encode(|o| frontend::execute(p, l, o).unwrap())),
        (prop::sample::select(b"SP".to_vec()), name())
            .prop_map(|(k, n)| encode(|o| frontend::close(k, n, o).unwrap())),
        Just(encode(frontend::sync)),
        Just(encode(frontend::flush)),
        bytes(16).prop_map(|d| framed(b'd', &d)),
        Just(encode(frontend::copy_done)),
    ]
}

/// A backend message that decodes.
fn backend_frame() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(row_field(), 0..3).prop_map(|f| framed(b'T', &row_description(&f))),
        vec(prop::option::of(bytes(8)), 0..3).prop_map(|v| framed(b'D', &data_row(&v))),
        prop::sample::select(b"123nsIc".to_vec()).prop_map(|t| framed(t, b"")),
        Just(framed(b'C', b"SELECT 1\0")),
        Just(framed(b'E', b"SERROR\0C42601\0Msyntax error\0\0")),
        Just(framed(b'N', b"SNOTICE\0C00000\0Mhello\0\0")),
        prop::sample::select(b"ITE".to_vec()).prop_map(|s| framed(b'Z', &[s])),
        Just(framed(b't', &[0, 0])),
    ]
}

/// A frame with a tag from `tags` and either a valid body or random bytes.
fn any_frame(tags: &'static [u8], valid: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        3 => valid,
        2 => (prop::sample::select(tags), bytes(24)).prop_map(|(t, b)| framed(t, &b)),
        1 => (any::<u8>(), bytes(12)).prop_map(|(t, b)| framed(t, &b)),
    ]
    .boxed()
}

fn client_frames() -> BoxedStrategy<Vec<u8>> {
    any_frame(CLIENT_TAGS, client_frame().boxed())
}

fn backend_frames() -> BoxedStrategy<Vec<u8>> {
    any_frame(BACKEND_TAGS, backend_frame().boxed())
}

/// Feed `input` in the given chunks; returns (output, bytes left, ok).
fn feed_client(relay: &mut Relay, ctx: &Ctx<'_>, parts: &[&[u8]]) -> (Vec<u8>, Vec<u8>, bool) {
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for p in parts {
        input.extend_from_slice(p);
        if relay.on_client(ctx, None, &mut input, &mut out).is_err() {
            return (out.to_vec(), input.to_vec(), false);
        }
        if relay.terminated {
            break;
        }
    }
    (out.to_vec(), input.to_vec(), true)
}

/// Feed the backend direction; on `Need` the key is "fetched" and the
/// relay called again with the same input, as the session does.
fn feed_backend(
    relay: &mut Relay,
    ctx: &Ctx<'_>,
    mut hook: Option<&mut Upper>,
    parts: &[&[u8]],
) -> (Vec<u8>, bool) {
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for p in parts {
        input.extend_from_slice(p);
        loop {
            let h = hook.as_deref_mut().map(|h| h as &mut dyn RowHook);
            match relay.on_backend(ctx, h, &mut input, &mut out) {
                Ok(()) => break,
                Err(RelayError::Need(_)) => {}
                Err(_) => return (out.to_vec(), false),
            }
        }
    }
    (out.to_vec(), true)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn relay_never_panics_on_arbitrary_bytes(
        client in bytes(256),
        backend in bytes(256),
        protect in any::<bool>(),
        hook in any::<bool>(),
    ) {
        let world = World::new(protect);
        let ctx = world.ctx();
        let mut upper = Upper::default();
        let mut relay = Relay::default();
        let _ = feed_client(&mut relay, &ctx, &[&client]);
        let _ = feed_backend(&mut relay, &ctx, hook.then_some(&mut upper), &[&backend]);
        let _ = relay.is_idle();
    }

    /// Client and backend traffic interleaved in any order, with valid and
    /// random frames: errors (desync, malformed) are fine, panics are not.
    #[test]
    fn relay_never_panics_on_interleaved_frames(
        ops in vec((any::<bool>(), vec(prop_oneof![client_frames(), backend_frames()], 1..4)), 1..16),
        protect in any::<bool>(),
        hook in any::<bool>(),
    ) {
        let world = World::new(protect);
        let ctx = world.ctx();
        let mut upper = Upper::default();
        let mut relay = Relay::default();
        for (to_backend, frames) in &ops {
            let all = frames.concat();
            if *to_backend {
                let _ = feed_client(&mut relay, &ctx, &[&all]);
            } else {
                let _ = feed_backend(&mut relay, &ctx, hook.then_some(&mut upper), &[&all]);
            }
        }
    }

    /// However the client's bytes are cut into reads, the relay emits the
    /// same bytes as for the whole stream, and nothing for a frame that is
    /// not complete yet: an incomplete frame stays in the input buffer.
    #[test]
    fn relay_never_emits_an_incomplete_client_frame(
        frames in vec(client_frames(), 0..12),
        sizes in vec(1usize..40, 0..30),
        cut in any::<prop::sample::Index>(),
    ) {
        let all = frames.concat();
        let cut = cut.index(all.len() + 1);
        let world = World::new(false);
        let ctx = world.ctx();
        // Reference: only the frames wholly inside the cut, in one read.
        let mut boundary = 0;
        for f in &frames {
            if boundary + f.len() > cut {
                break;
            }
            boundary += f.len();
        }
        let mut reference = Relay::default();
        let (ref_out, _, ref_ok) = feed_client(&mut reference, &ctx, &[&all[..boundary]]);
        let mut relay = Relay::default();
        let (out, left, ok) = feed_client(&mut relay, &ctx, &chunks(&all[..cut], &sizes));
        prop_assert_eq!(ok, ref_ok);
        prop_assert_eq!(out, ref_out);
        if ok && !relay.terminated {
            prop_assert_eq!(&left[..], &all[boundary..cut]);
        }
    }

    /// The same for the backend direction; and a key fetched in the middle
    /// of a result (`Need`, then the same input again) changes nothing.
    #[test]
    fn relay_backend_output_does_not_depend_on_read_sizes_or_key_fetches(
        client in vec(client_frame(), 0..8),
        frames in vec(backend_frames(), 0..16),
        sizes in vec(1usize..40, 0..30),
        protect in any::<bool>(),
    ) {
        let world = World::new(protect);
        let ctx = world.ctx();
        let all = frames.concat();
        let run = |parts: &[&[u8]], mut hook: Upper| {
            let mut relay = Relay::default();
            let _ = feed_client(&mut relay, &ctx, &[&client.concat()]);
            feed_backend(&mut relay, &ctx, Some(&mut hook), parts)
        };
        let whole = run(&[&all], Upper::default());
        prop_assert_eq!(run(&chunks(&all, &sizes), Upper::default()), whole.clone());
        prop_assert_eq!(run(&chunks(&all, &sizes), Upper::needy()), whole);
    }
}

// ------------------------------------------------- relay vs. a PostgreSQL model

/// One client action in a conversation, with what the server will do.
#[derive(Debug, Clone)]
enum Step {
    /// Simple query: 0 = empty query, 1 = command, 2 = rows, 3 = error,
    /// 4 = two statements, the second failing.
    Query(u8, u8),
    Parse(u8, bool),
    Bind(u8, u8, bool),
    Describe(bool, u8, bool),
    /// Portal, rows, outcome: 0 = complete, 1 = suspended, 2 = error.
    Execute(u8, u8, u8),
    Close(bool, u8),
    Sync,
    Flush,
    /// COPY FROM STDIN: through the extended protocol (as tokio-postgres and
    /// libpq's `PQexecParams` do it) or a simple Query; rows sent; the row
    /// the server rejects, if any; whether the client ends with CopyFail.
    CopyIn {
        extended: bool,
        rows: u8,
        bad_row: Option<u8>,
        fail: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let n = || 0u8..3;
    let fails = || prop::bool::weighted(0.15);
    prop_oneof![
        1 => (0u8..5, 0u8..4).prop_map(|(k, r)| Step::Query(k, r)),
        3 => (n(), fails()).prop_map(|(s, f)| Step::Parse(s, f)),
        3 => (n(), n(), fails()).prop_map(|(p, s, f)| Step::Bind(p, s, f)),
        1 => (any::<bool>(), n(), any::<bool>()).prop_map(|(p, x, r)| Step::Describe(p, x, r)),
        3 => (n(), 0u8..4, prop::sample::select(vec![0u8, 0, 0, 1, 2]))
            .prop_map(|(p, r, o)| Step::Execute(p, r, o)),
        1 => (any::<bool>(), n()).prop_map(|(p, x)| Step::Close(p, x)),
        3 => Just(Step::Sync),
        1 => Just(Step::Flush),
        1 => (any::<bool>(), 0u8..4, prop::option::weighted(0.3, 0u8..4), prop::bool::weighted(0.2))
            .prop_map(|(extended, rows, bad_row, fail)| Step::CopyIn { extended, rows, bad_row, fail }),
    ]
}

fn stmt_name(n: u8) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("s{n}")
    }
}

/// A conversation: the client's messages, and the server's answers, each
/// tagged with the index of the client message that provokes it (it can
/// reach the relay only after that message did).
#[derive(Default)]
struct Model {
    client: Vec<Vec<u8>>,
    backend: Vec<(usize, Vec<u8>)>,
    /// After an extended-protocol error PostgreSQL discards every message
    /// (simple Queries included) until Sync, as `PostgresMain` does.
    skipping: bool,
}

fn error_frame() -> Vec<u8> {
    framed(b'E', b"SERROR\0C42P01\0Mno such table\0\0")
}

fn complete_frame() -> Vec<u8> {
    framed(b'C', b"SELECT 1\0")
}

fn row_frame() -> Vec<u8> {
    framed(b'D', &data_row(&[Some(b"1".to_vec())]))
}

fn desc_frame() -> Vec<u8> {
    framed(
        b'T',
        &row_description(&[(b"c".to_vec(), 0, 0, 23, 4, -1, 0)]),
    )
}

impl Model {
    fn of(steps: &[Step]) -> Self {
        let mut m = Self::default();
        for s in steps {
            m.step(s);
        }
        m
    }

    fn send(&mut self, f: impl FnOnce(&mut BytesMut)) -> usize {
        self.client.push(encode(f));
        self.client.len() - 1
    }

    /// The server answers `cause` with `frames`, unless it is skipping.
    fn answer(&mut self, cause: usize, frames: &[Vec<u8>]) {
        if !self.skipping {
            self.backend
                .extend(frames.iter().map(|f| (cause, f.clone())));
        }
    }

    fn fail(&mut self, cause: usize) {
        self.answer(cause, &[error_frame()]);
        self.skipping = true;
    }

    fn rows(n: u8) -> Vec<Vec<u8>> {
        (0..n).map(|_| row_frame()).collect()
    }

    fn step(&mut self, s: &Step) {
        let target = |portal: bool| if portal { b'P' } else { b'S' };
        match s {
            Step::Query(kind, n) => {
                let i = self.send(|o| frontend::query("select 1", o).unwrap());
                let mut frames = match kind {
                    0 => vec![framed(b'I', b"")],
                    1 => vec![complete_frame()],
                    3 => vec![error_frame()],
                    _ => [vec![desc_frame()], Self::rows(*n), vec![complete_frame()]].concat(),
                };
                if *kind == 4 {
                    frames.push(error_frame());
                }
                frames.push(framed(b'Z', b"I"));
                self.answer(i, &frames);
            }
            Step::Parse(x, fails) => {
                let i = self.send(|o| frontend::parse(&stmt_name(*x), "select 1", [], o).unwrap());
                if *fails {
                    self.fail(i);
                } else {
                    self.answer(i, &[framed(b'1', b"")]);
                }
            }
            Step::Bind(p, x, fails) => {
                let i = self.send(|o| {
                    messages::bind_empty(o, stmt_name(*p).as_bytes(), stmt_name(*x).as_bytes());
                });
                if *fails {
                    self.fail(i);
                } else {
                    self.answer(i, &[framed(b'2', b"")]);
                }
            }
            Step::Describe(portal, x, has_rows) => {
                let i =
                    self.send(|o| frontend::describe(target(*portal), &stmt_name(*x), o).unwrap());
                let shape = if *has_rows {
                    desc_frame()
                } else {
                    framed(b'n', b"")
                };
                if *portal {
                    self.answer(i, &[shape]);
                } else {
                    self.answer(i, &[framed(b't', &[0, 0]), shape]);
                }
            }
            Step::Execute(p, n, outcome) => {
                let i = self.send(|o| frontend::execute(&stmt_name(*p), 0, o).unwrap());
                self.answer(i, &Self::rows(*n));
                match outcome {
                    2 => self.fail(i),
                    1 => self.answer(i, &[framed(b's', b"")]),
                    _ => self.answer(i, &[complete_frame()]),
                }
            }
            Step::Close(portal, x) => {
                let i = self.send(|o| frontend::close(target(*portal), &stmt_name(*x), o).unwrap());
                self.answer(i, &[framed(b'3', b"")]);
            }
            Step::Sync => self.sync(),
            Step::Flush => {
                self.send(frontend::flush);
            }
            Step::CopyIn {
                extended,
                rows,
                bad_row,
                fail,
            } => {
                self.copy_in(*extended, *rows, *bad_row, *fail);
            }
        }
    }

    fn sync(&mut self) {
        let i = self.send(frontend::sync);
        self.skipping = false;
        self.answer(i, &[framed(b'Z', b"I")]);
    }

    /// Outside copy-in mode PostgreSQL accepts and ignores CopyData,
    /// CopyDone and CopyFail; inside it, it ignores Sync and Flush.
    fn copy_in(&mut self, extended: bool, rows: u8, bad_row: Option<u8>, fail: bool) {
        let copying = !self.skipping;
        let start = if extended {
            let p = self.send(|o| frontend::parse("", "copy t from stdin", [], o).unwrap());
            self.answer(p, &[framed(b'1', b"")]);
            let b = self.send(|o| messages::bind_empty(o, b"", b""));
            self.answer(b, &[framed(b'2', b"")]);
            self.send(|o| frontend::execute("", 0, o).unwrap())
        } else {
            self.send(|o| frontend::query("copy t from stdin", o).unwrap())
        };
        self.answer(start, &[framed(b'G', &[0, 0, 1, 0, 0])]);
        if extended {
            // tokio-postgres sends Sync right after Execute; in copy-in mode
            // it is ignored, and outside it (skipping) it ends the skip.
            if copying {
                self.send(frontend::sync);
            } else {
                self.sync();
            }
        }
        let mut failed = !copying;
        for r in 0..rows {
            let i = self.send(|o| o.extend_from_slice(&framed(b'd', b"1\n")));
            if !failed && bad_row == Some(r) {
                failed = true;
                self.end_copy_with_error(i, extended);
            }
        }
        let end = if fail {
            self.send(|o| frontend::copy_fail("client gave up", o).unwrap())
        } else {
            self.send(frontend::copy_done)
        };
        if !failed {
            if fail {
                self.end_copy_with_error(end, extended);
            } else {
                let done = framed(b'C', b"COPY 1\0");
                if extended {
                    self.answer(end, &[done]);
                } else {
                    self.answer(end, &[done, framed(b'Z', b"I")]);
                }
            }
        }
        if extended {
            self.sync();
        }
    }

    fn end_copy_with_error(&mut self, cause: usize, extended: bool) {
        if extended {
            self.fail(cause);
        } else {
            self.answer(cause, &[error_frame(), framed(b'Z', b"I")]);
        }
    }
}

/// Feed the model's traffic to a relay in an order a real session could
/// see: the client may run ahead as far as `choices` says, an answer comes
/// only after the message that provoked it. Returns what the relay relayed
/// each way, or the error it raised.
fn run_model(
    relay: &mut Relay,
    ctx: &Ctx<'_>,
    model: &Model,
    choices: &[bool],
) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (mut to_backend, mut to_client) = (BytesMut::new(), BytesMut::new());
    let (mut sent, mut answered) = (0, 0);
    let mut choices = choices.iter().copied();
    while sent < model.client.len() || answered < model.backend.len() {
        let answer_ready = model
            .backend
            .get(answered)
            .is_some_and(|(cause, _)| *cause < sent);
        let client_first = choices.next().unwrap_or(true);
        if sent < model.client.len() && (client_first || !answer_ready) {
            let mut input = BytesMut::from(&model.client[sent][..]);
            relay
                .on_client(ctx, None, &mut input, &mut to_backend)
                .map_err(|e| format!("client message {sent}: {e}"))?;
            sent += 1;
        } else {
            let mut input = BytesMut::from(&model.backend[answered].1[..]);
            relay
                .on_backend(ctx, None, &mut input, &mut to_client)
                .map_err(|e| format!("backend message {answered}: {e}"))?;
            answered += 1;
        }
    }
    Ok((to_backend.to_vec(), to_client.to_vec()))
}

fn check_conversation(steps: &[Step], choices: &[bool]) -> Result<(), String> {
    let model = Model::of(steps);
    let world = World::new(false);
    let ctx = world.ctx();
    let mut relay = Relay::default();
    let (to_backend, to_client) = run_model(&mut relay, &ctx, &model, choices)?;
    if to_backend != model.client.concat() {
        return Err("client messages were not relayed unchanged".to_owned());
    }
    let answers: Vec<u8> = model.backend.iter().flat_map(|(_, f)| f.clone()).collect();
    if to_client != answers {
        return Err("server messages were not relayed unchanged".to_owned());
    }
    if !relay.is_idle() {
        return Err("relay not idle after the final ReadyForQuery".to_owned());
    }
    // And it is still in step: one more statement goes through.
    let next = Model::of(&[Step::Query(2, 1)]);
    run_model(&mut relay, &ctx, &next, &[]).map(|_| ())
}

proptest! {
    #![proptest_config(config())]

    /// For any conversation PostgreSQL could have, in any timing, the relay
    /// passes both directions through unchanged, never loses track of the
    /// responses, and is idle once the final Sync is answered.
    #[test]
    fn relay_follows_any_postgres_conversation(
        mut steps in vec(step(), 0..24),
        choices in vec(any::<bool>(), 0..120),
    ) {
        steps.push(Step::Sync);
        if let Err(e) = check_conversation(&steps, &choices) {
            prop_assert!(false, "{}", e);
        }
    }
}

/// PostgreSQL discards every message after an extended-protocol error until
/// Sync, simple Queries included (checked against PostgreSQL 15: `Execute`
/// of a missing portal, `Query`, `Sync` is answered by `E`, `Z` only).
#[test]
fn relay_stays_in_step_when_a_query_is_skipped_after_an_error() {
    let steps = [Step::Execute(1, 0, 2), Step::Query(2, 1), Step::Sync];
    check_conversation(&steps, &[]).unwrap();
}

/// COPY FROM STDIN through the extended protocol, as tokio-postgres'
/// `copy_in` does it: Bind, Execute, Sync, CopyData, CopyDone, Sync.
/// PostgreSQL ignores the Sync that arrives in copy-in mode (checked against
/// PostgreSQL 15: `1 2 G`, then `C Z` — one ReadyForQuery for two Syncs).
#[test]
fn relay_stays_in_step_after_extended_protocol_copy_in() {
    let copy = Step::CopyIn {
        extended: true,
        rows: 2,
        bad_row: None,
        fail: false,
    };
    check_conversation(&[copy], &[]).unwrap();
}

/// The same COPY where the server rejects a row while the client is still
/// sending: the ErrorResponse reaches the relay before CopyDone does
/// (checked against PostgreSQL 15: `1 2 G`, `E` after the bad row, then a
/// single `Z` for the Sync after CopyDone).
#[test]
fn relay_stays_in_step_when_extended_copy_in_fails_midway() {
    let copy = Step::CopyIn {
        extended: true,
        rows: 3,
        bad_row: Some(0),
        fail: false,
    };
    // Client: P B E S d; then the server's 1 2 G E; then the client's d d c S.
    let choices = [true, true, true, true, true, false, false, false, false];
    check_conversation(&[copy], &choices).unwrap();
}

/// An extended-protocol COPY inside a segment PostgreSQL is skipping (an
/// earlier message of the same segment failed): Parse/Bind/Execute are
/// discarded, so there is no copy-in mode, the first Sync ends the skip and
/// is answered, and the CopyDone that follows is ignored (checked against
/// PostgreSQL 15: CopyData/CopyDone/CopyFail outside COPY are accepted and
/// ignored). Both Syncs get a ReadyForQuery.
#[test]
fn relay_stays_in_step_when_a_skipped_segment_holds_a_copy() {
    let steps = [
        Step::Bind(0, 0, true),
        Step::CopyIn {
            extended: true,
            rows: 1,
            bad_row: None,
            fail: false,
        },
    ];
    check_conversation(&steps, &[]).unwrap();
}

// ---------------------------------------------------------------- SQL planner

/// What statements on a protected table go through before they reach the
/// database: the planner parses and walks them. Statements generated from a
/// small SQL grammar over the protected table (every literal form, `$n`
/// parameters, casts, functions, subqueries, non-ASCII text, comments), now
/// and then with a random token spliced in. (Deep nesting, which overflows
/// the stack instead of panicking, is covered end to end in
/// tests/e2e_bad_input.rs.)
fn sql_soup() -> impl Strategy<Value = String> {
    let stmt = prop_oneof![
        (columns(), table_ref(), prop::option::of(condition())).prop_map(|(c, t, w)| {
            format!("select {c} from {t}{}", w.map(|w| format!(" where {w}")).unwrap_or_default())
        }),
        (table_ref(), vec(value(), 1..4), 1usize..3, returning()).prop_map(|(t, v, rows, r)| {
            let cols = ["email", "ssn", "tenant_id", "id"][..v.len()].join(", ");
            let row = format!("({})", v.join(", "));
            format!("insert into {t} ({cols}) values {}{r}", vec![row; rows].join(", "))
        }),
        (table_ref(), column(), value(), prop::option::of(condition()), returning()).prop_map(
            |(t, c, v, w, r)| {
                let w = w.map(|w| format!(" where {w}")).unwrap_or_default();
                format!("update {t} set {c} = {v}{w}{r}")
            }
        ),
        (table_ref(), condition()).prop_map(|(t, w)| format!("delete from {t} where {w}")),
        (table_ref(), column(), value()).prop_map(|(t, c, v)| {
            format!("insert into {t} ({c}) values ({v}) on conflict (id) do update set {c} = excluded.{c}")
        }),
        (table_ref(), columns()).prop_map(|(t, c)| format!("copy {t} ({c}) from stdin")),
        (condition(), columns()).prop_map(|(w, c)| {
            format!("with x as (select {c} from customers where {w}) select * from x")
        }),
    ];
    let junk = prop::sample::select(vec![
        "", "", "", "", "(", ")", ",", "'", "\"", "$$", "--", "/*", "é", "😀", "::", "e'", "u&",
    ]);
    (vec(stmt, 1..3), junk, any::<prop::sample::Index>()).prop_map(|(stmts, junk, at)| {
        let mut sql = stmts.join("; ");
        let mut at = at.index(sql.len() + 1);
        while !sql.is_char_boundary(at) {
            at -= 1;
        }
        sql.insert_str(at, junk);
        sql
    })
}

fn table_ref() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "customers",
        "public.customers",
        "\"customers\"",
        "customers c",
        "Customers",
        "others",
    ])
}

fn column() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "email",
        "ssn",
        "tenant_id",
        "id",
        "\"email\"",
        "EMAIL",
        "note",
    ])
}

fn columns() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("*".to_owned()),
        vec(column(), 1..4).prop_map(|c| c.join(", ")),
        column().prop_map(|c| format!("lower({c}), count(*)")),
    ]
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "'x'",
            "'é''s'",
            "E'a\\'b'",
            "E'\\x41\\n'",
            "U&'\\0041'",
            "$$x$$",
            "$t$ y $t$",
            "N'z'",
            "-1",
            "1.5",
            "null",
            "default",
            "$1",
            "$2",
            "'😀'",
            "'x'::text",
            "lower('x')",
            "(select email from customers limit 1)",
            "array['a']",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z0-9 é'\\\\]{0,8}".prop_map(|s| format!("'{}'", s.replace('\'', "''"))),
    ]
}

fn returning() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        columns().prop_map(|c| format!(" returning {c}"))
    ]
}

fn condition() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        (
            column(),
            prop::sample::select(vec!["=", "<>", "<", "like", "is distinct from"]),
            value()
        )
            .prop_map(|(c, op, v)| format!("{c} {op} {v}")),
        (column(), vec(value(), 1..4)).prop_map(|(c, v)| format!("{c} in ({})", v.join(", "))),
        column().prop_map(|c| format!("{c} is null")),
        (value(), column()).prop_map(|(v, c)| format!("{v} = {c}")),
    ];
    leaf.prop_recursive(3, 12, 2, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["and", "or"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|c| format!("not ({c})")),
            inner.prop_map(|c| format!("exists (select 1 from customers where {c})")),
        ]
    })
}

fn policy() -> crate::rewrite::plan::PolicyView {
    use crate::config::ColumnMode;
    use crate::rewrite::plan::{PolicyTable, PolicyView};
    PolicyView::new(vec![PolicyTable {
        schema: "public".into(),
        table: "customers".into(),
        tenant_column: Some("tenant_id".into()),
        columns: vec![
            ("email".into(), ColumnMode::Deterministic),
            ("ssn".into(), ColumnMode::Randomized),
        ],
        append_only: false,
        all_columns: Some(vec![
            "id".into(),
            "tenant_id".into(),
            "email".into(),
            "ssn".into(),
        ]),
    }])
}

static POLICY: LazyLock<crate::rewrite::plan::PolicyView> = LazyLock::new(policy);

proptest! {
    #![proptest_config(config())]

    /// The planner answers a plan or a refusal, and a plan's byte ranges
    /// (which the session splices ciphertext into) lie inside the text, on
    /// character boundaries, in order.
    #[test]
    fn planner_never_panics_and_its_ranges_are_sound(sql in sql_soup(), scs in any::<bool>()) {
        use crate::rewrite::plan::{PlanOptions, plan_with_options};
        let options = PlanOptions { standard_conforming_strings: scs };
        let Ok(plans) = plan_with_options(&sql, &POLICY, options) else {
            return Ok(());
        };
        let on_boundaries = |r: &std::ops::Range<usize>| {
            r.start <= r.end && r.end <= sql.len()
                && sql.is_char_boundary(r.start) && sql.is_char_boundary(r.end)
        };
        for p in &plans {
            prop_assert!(on_boundaries(&p.range), "statement range {:?} in {:?}", p.range, sql);
            let mut last = p.range.start;
            for l in &p.literals {
                prop_assert!(on_boundaries(&l.range), "literal range {:?} in {:?}", l.range, sql);
                prop_assert!(l.range.start >= last && l.range.end <= p.range.end,
                    "literal {:?} outside or out of order in {:?} ({:?})", l.range, p.range, sql);
                last = l.range.end;
            }
            let _ = p.check_tenant_literals("acme", &POLICY);
        }
    }
}
