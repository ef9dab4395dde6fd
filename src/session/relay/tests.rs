//! The relay as a pure state machine: byte streams in, byte streams out.

use bytes::{BufMut, BytesMut};

use super::*;
use crate::protocol::errors::error_summary;
use crate::protocol::next_frame;
use crate::rewrite::{CryptoFailure, Need};

fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(i32::try_from(body.len() + 4).unwrap());
    b.put_slice(body);
    b
}

fn cat(parts: &[BytesMut]) -> BytesMut {
    let mut b = BytesMut::new();
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

fn parse(name: &str, sql: &str) -> BytesMut {
    let mut out = BytesMut::new();
    messages::parse(&mut out, name.as_bytes(), sql.as_bytes(), &[]);
    out
}

fn bind(portal: &str, stmt: &str) -> BytesMut {
    let mut out = BytesMut::new();
    messages::bind_empty(&mut out, portal.as_bytes(), stmt.as_bytes());
    out
}

fn execute(portal: &str) -> BytesMut {
    let mut out = BytesMut::new();
    messages::execute(&mut out, portal.as_bytes(), 0);
    out
}

fn describe(kind: u8, name: &str) -> BytesMut {
    let mut body = vec![kind];
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    msg(b'D', &body)
}

fn row_desc(table_oid: u32, attnum: i16) -> BytesMut {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(b"c\0");
    body.extend_from_slice(&table_oid.to_be_bytes());
    body.extend_from_slice(&attnum.to_be_bytes());
    body.extend_from_slice(&25u32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&(-1i32).to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'T', &body)
}

fn data_row(v: &str) -> BytesMut {
    let mut body = Vec::new();
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&i32::try_from(v.len()).unwrap().to_be_bytes());
    body.extend_from_slice(v.as_bytes());
    msg(b'D', &body)
}

fn ready(status: u8) -> BytesMut {
    msg(b'Z', &[status])
}

fn complete() -> BytesMut {
    msg(b'C', b"SELECT 1\0")
}

fn error() -> BytesMut {
    msg(b'E', b"SERROR\0C42P01\0Mno such table\0\0")
}

/// Upper-cases marked values, to prove which rows the hook saw.
struct Upper;

impl RowHook for Upper {
    fn rewrite_row(
        &mut self,
        _marks: &RowMarks,
        _binary: &[bool],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CryptoFailure> {
        let s = messages::begin_msg(out, b'D');
        out.extend_from_slice(&body.to_ascii_uppercase());
        messages::finish_msg(out, s);
        Ok(())
    }

    fn encrypt_literal(&mut self, _column: usize, value: &str) -> Result<String, CryptoFailure> {
        Ok(format!("'enc:{value}'"))
    }

    fn encrypt_param(
        &mut self,
        _column: usize,
        value: &[u8],
        _binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure> {
        Ok([b"enc:", value].concat())
    }

    fn tenant(&self) -> &'static str {
        "acme"
    }

    fn decrypt_field(&mut self, _column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        Ok(stored.to_vec())
    }
}

struct Harness {
    relay: Relay,
    classifier: Classifier,
    protected: ProtectedColumns,
    hook: Option<Upper>,
}

impl Harness {
    fn new() -> Self {
        Self {
            relay: Relay::default(),
            classifier: Classifier::new([("secrets".to_owned(), "public.secrets".to_owned())]),
            protected: ProtectedColumns::default(),
            hook: None,
        }
    }

    fn ctx<'a>(classifier: &'a Classifier, protected: &'a ProtectedColumns) -> Ctx<'a> {
        Ctx {
            classifier,
            protected,
            known_oids: None,
            write: None,
            metrics: SessionMetrics::get(),
        }
    }

    fn client(&mut self, input: &[u8]) -> BytesMut {
        let mut input = BytesMut::from(input);
        let mut out = BytesMut::new();
        let mut relay = std::mem::take(&mut self.relay);
        let hook = self.hook.as_mut().map(|h| h as &mut dyn RowHook);
        let r = relay.on_client(
            &Self::ctx(&self.classifier, &self.protected),
            hook,
            &mut input,
            &mut out,
        );
        self.relay = relay;
        r.unwrap();
        out
    }

    fn backend(&mut self, input: &[u8]) -> Result<BytesMut, RelayError> {
        let mut input = BytesMut::from(input);
        let mut out = BytesMut::new();
        let mut relay = std::mem::take(&mut self.relay);
        let hook = self.hook.as_mut().map(|h| h as &mut dyn RowHook);
        let r = relay.on_backend(
            &Self::ctx(&self.classifier, &self.protected),
            hook,
            &mut input,
            &mut out,
        );
        self.relay = relay;
        r.map(|()| out)
    }
}

fn tags(mut b: BytesMut) -> Vec<char> {
    let mut t = Vec::new();
    while let Some(f) = next_frame(&mut b).unwrap() {
        t.push(char::from(f.tag));
    }
    t
}

#[test]
fn fast_path_relays_bytes_unchanged_in_both_directions() {
    let mut h = Harness::new();
    let req = cat(&[
        parse("", "select 1"),
        bind("", ""),
        describe(b'P', ""),
        execute(""),
        msg(b'S', b""),
    ]);
    assert_eq!(&h.client(&req)[..], &req[..]);
    let resp = cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        row_desc(0, 0),
        data_row("1"),
        complete(),
        ready(b'I'),
    ]);
    assert_eq!(&h.backend(&resp).unwrap()[..], &resp[..]);
    assert!(h.relay.is_idle());
}

#[test]
fn partial_frames_wait_for_the_rest() {
    let mut h = Harness::new();
    let q = msg(b'Q', b"select 1\0");
    let mut input = BytesMut::from(&q[..4]);
    let mut out = BytesMut::new();
    let ctx_relay = &mut h.relay;
    let classifier = Classifier::default();
    let protected = ProtectedColumns::default();
    let ctx = Ctx {
        classifier: &classifier,
        protected: &protected,
        known_oids: None,
        write: None,
        metrics: SessionMetrics::get(),
    };
    ctx_relay
        .on_client(&ctx, None, &mut input, &mut out)
        .unwrap();
    assert!(out.is_empty());
    assert_eq!(input.len(), 4);
    input.extend_from_slice(&q[4..]);
    ctx_relay
        .on_client(&ctx, None, &mut input, &mut out)
        .unwrap();
    assert_eq!(&out[..], &q[..]);
}

#[test]
fn error_mid_pipeline_skips_to_sync_and_forgets_failed_statements() {
    let mut h = Harness::new();
    let req = cat(&[
        parse("s1", "select 1"),
        bind("", "s1"),
        execute(""),
        parse("s2", "select nope"),
        bind("", "s2"),
        execute(""),
        msg(b'S', b""),
    ]);
    h.client(&req);
    assert_eq!(h.relay.registry.statement_count(), 2);
    // s1 runs, then s2's Parse fails: the backend skips to Sync.
    let resp = cat(&[
        msg(b'1', b""),
        msg(b'2', b""),
        data_row("1"),
        complete(),
        error(),
        ready(b'I'),
    ]);
    assert_eq!(
        tags(h.backend(&resp).unwrap()),
        vec!['1', '2', 'D', 'C', 'E', 'Z']
    );
    assert!(h.relay.registry.statement(b"s1").is_some());
    assert!(h.relay.registry.statement(b"s2").is_none());
    assert!(h.relay.is_idle());
}

#[test]
fn simple_query_on_protected_table_is_replaced_by_a_raise() {
    let mut h = Harness::new();
    let out = h.client(&msg(b'Q', b"select * from Secrets\0"));
    let sql = String::from_utf8_lossy(&out[5..]).into_owned();
    assert!(sql.starts_with("DO $byokpg$"), "{sql}");
    assert!(sql.contains("ERRCODE = '0A000'"));
    assert!(
        !sql.contains("select * from"),
        "the client's statement must not reach the database"
    );
}

#[test]
fn refused_parse_yields_only_the_error_and_keeps_order() {
    let mut h = Harness::new();
    let req = cat(&[
        parse("ok", "select 1"),
        parse("bad", "insert into secrets values ('x')"),
        bind("", "bad"),
        execute(""),
        msg(b'S', b""),
    ]);
    let out = h.client(&req);
    let sent = tags(out.clone());
    assert_eq!(sent, vec!['P', 'C', 'P', 'B', 'E', 'B', 'E', 'S']);
    assert!(!String::from_utf8_lossy(&out).contains("insert into secrets"));
    // Backend: ok's ParseComplete, then our helper's Close/Parse/Bind
    // completions (swallowed), the raised error, then skip to Sync.
    let raised = PgError::not_supported("byokpg: refused".to_owned()).to_bytes();
    let resp = cat(&[
        msg(b'1', b""),
        msg(b'3', b""),
        msg(b'1', b""),
        msg(b'2', b""),
        raised,
        ready(b'I'),
    ]);
    let got = h.backend(&resp).unwrap();
    assert_eq!(tags(got.clone()), vec!['1', 'E', 'Z']);
    let mut g = got;
    let _ = next_frame(&mut g).unwrap();
    let e = next_frame(&mut g).unwrap().unwrap();
    assert_eq!(error_summary(e.body()).0, "0A000");
    assert!(h.relay.registry.statement(b"bad").is_none());
}

#[test]
fn marks_follow_named_statements_across_pipelined_portals() {
    let mut h = Harness::new();
    h.protected.insert(16_400, 2, 0);
    h.hook = Some(Upper);
    // Describe a protected and a plain statement, then execute both in one pipeline.
    h.client(&cat(&[
        parse("p", "select c from t"),
        describe(b'S', "p"),
        parse("q", "select 1"),
        describe(b'S', "q"),
        msg(b'S', b""),
    ]));
    let t = msg(b't', &0i16.to_be_bytes());
    h.backend(&cat(&[
        msg(b'1', b""),
        t.clone(),
        row_desc(16_400, 2),
        msg(b'1', b""),
        t,
        row_desc(0, 0),
        ready(b'I'),
    ]))
    .unwrap();
    h.client(&cat(&[
        bind("a", "p"),
        bind("b", "q"),
        execute("a"),
        execute("b"),
        msg(b'S', b""),
    ]));
    let out = h
        .backend(&cat(&[
            msg(b'2', b""),
            msg(b'2', b""),
            data_row("abc"),
            complete(),
            data_row("xyz"),
            complete(),
            ready(b'I'),
        ]))
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("ABC"), "protected result rewritten");
    assert!(text.contains("xyz"), "plain result untouched");
}

#[test]
fn marked_rows_without_a_hook_fail_closed() {
    let mut h = Harness::new();
    h.protected.insert(16_400, 2, 0);
    h.client(&msg(b'Q', b"select c from t\0"));
    let out = h
        .backend(&cat(&[
            row_desc(16_400, 2),
            data_row("ciphertext"),
            complete(),
            ready(b'I'),
        ]))
        .unwrap();
    // The row description passes, the row is replaced by an error, and the
    // session is back in step at ReadyForQuery.
    assert_eq!(tags(out.clone()), vec!['T', 'E', 'Z']);
    assert!(!String::from_utf8_lossy(&out).contains("ciphertext"));
    assert!(h.relay.is_idle());
}

#[test]
fn stale_catalog_leaves_the_row_description_unconsumed() {
    let mut h = Harness::new();
    h.protected.insert(16_400, 2, 0);
    h.client(&msg(b'Q', b"select c from v\0"));
    let known = std::collections::HashSet::from([16_400_u32]);
    let ctx = Ctx {
        classifier: &h.classifier,
        protected: &h.protected,
        known_oids: Some(&known),
        write: None,
        metrics: SessionMetrics::get(),
    };
    let mut input = BytesMut::from(&row_desc(99_999, 1)[..]);
    let mut out = BytesMut::new();
    let r = h.relay.on_backend(&ctx, None, &mut input, &mut out);
    assert!(matches!(r, Err(RelayError::StaleCatalog)));
    assert!(out.is_empty());
    assert_eq!(
        &input[..],
        &row_desc(99_999, 1)[..],
        "frame kept for the retry"
    );
}

/// Asks for the key once, then decrypts.
struct NeedsKeyOnce(bool);

impl RowHook for NeedsKeyOnce {
    fn rewrite_row(
        &mut self,
        m: &RowMarks,
        b: &[bool],
        body: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), CryptoFailure> {
        if std::mem::replace(&mut self.0, true) {
            Upper.rewrite_row(m, b, body, out)
        } else {
            Err(CryptoFailure::Need(Need::Key(1)))
        }
    }
    fn encrypt_literal(&mut self, c: usize, v: &str) -> Result<String, CryptoFailure> {
        Upper.encrypt_literal(c, v)
    }
    fn encrypt_param(&mut self, c: usize, v: &[u8], b: bool) -> Result<Vec<u8>, CryptoFailure> {
        Upper.encrypt_param(c, v, b)
    }
    fn tenant(&self) -> &'static str {
        "acme"
    }

    fn decrypt_field(&mut self, _column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        Ok(stored.to_vec())
    }
}

#[test]
fn a_needed_key_stops_before_the_row_and_the_retry_completes_it() {
    let mut h = Harness::new();
    h.protected.insert(16_400, 2, 0);
    h.client(&msg(b'Q', b"select c from t\0"));
    let mut hook = NeedsKeyOnce(false);
    let ctx = Ctx {
        classifier: &h.classifier,
        protected: &h.protected,
        known_oids: None,
        write: None,
        metrics: SessionMetrics::get(),
    };
    let mut input = cat(&[
        row_desc(16_400, 2),
        data_row("abc"),
        complete(),
        ready(b'I'),
    ]);
    let mut out = BytesMut::new();
    let r = h
        .relay
        .on_backend(&ctx, Some(&mut hook), &mut input, &mut out);
    assert!(matches!(r, Err(RelayError::Need(Need::Key(1)))));
    assert_eq!(tags(out.clone()), vec!['T']);
    h.relay
        .on_backend(&ctx, Some(&mut hook), &mut input, &mut out)
        .unwrap();
    assert_eq!(tags(out.clone()), vec!['T', 'D', 'C', 'Z']);
    assert!(String::from_utf8_lossy(&out).contains("ABC"));
}

#[test]
fn unexpected_completion_is_a_desync() {
    let mut h = Harness::new();
    assert!(matches!(
        h.backend(&msg(b'2', b"")),
        Err(RelayError::Desync(_))
    ));
}

#[test]
fn transaction_status_and_portals_follow_ready_for_query() {
    let mut h = Harness::new();
    h.client(&msg(b'Q', b"begin\0"));
    h.backend(&cat(&[msg(b'C', b"BEGIN\0"), ready(b'T')]))
        .unwrap();
    assert!(!h.relay.is_idle());
    h.client(&msg(b'Q', b"commit\0"));
    h.backend(&cat(&[msg(b'C', b"COMMIT\0"), ready(b'I')]))
        .unwrap();
    assert!(h.relay.is_idle());
}

#[test]
fn sync_sent_during_extended_copy_in_expects_no_ready_for_query() {
    // tokio-postgres: Bind, Execute, Sync, then CopyData, CopyDone, Sync.
    let mut h = Harness::new();
    h.client(&cat(&[
        parse("", "copy t from stdin"),
        bind("", ""),
        execute(""),
        msg(b'S', b""),
    ]));
    let copy_in = msg(b'G', &[0, 0, 0]);
    h.backend(&cat(&[msg(b'1', b""), msg(b'2', b""), copy_in]))
        .unwrap();
    h.client(&cat(&[msg(b'd', b"1\n"), msg(b'c', b""), msg(b'S', b"")]));
    // The backend ignored the first Sync: one CommandComplete, one ReadyForQuery.
    h.backend(&cat(&[msg(b'C', b"COPY 1\0"), ready(b'I')]))
        .unwrap();
    assert!(h.relay.is_idle());
    // And the session stays in step for the next statement.
    h.client(&msg(b'Q', b"select 1\0"));
    h.backend(&cat(&[
        row_desc(0, 0),
        data_row("1"),
        complete(),
        ready(b'I'),
    ]))
    .unwrap();
    assert!(h.relay.is_idle());
}

#[test]
fn simple_query_copy_keeps_earlier_syncs() {
    let mut h = Harness::new();
    h.client(&cat(&[
        msg(b'Q', b"copy t from stdin\0"),
        msg(b'd', b"1\n"),
        msg(b'c', b""),
    ]));
    h.backend(&cat(&[
        msg(b'G', &[0, 0, 0]),
        msg(b'C', b"COPY 1\0"),
        ready(b'I'),
    ]))
    .unwrap();
    assert!(h.relay.is_idle());
}
