//! Hostile and broken clients against a real proxy and PostgreSQL, while
//! well-behaved clients keep working: garbage, bad lengths, truncated and
//! oversized startup packets, old and future protocol versions, messages
//! before authentication, broken frames inside a session, and clients that
//! vanish mid-COPY or mid-transaction. Each bad client must get an
//! ErrorResponse or a close (never a hang), leave no backend, lock or open
//! transaction behind, and disturb no other session. A background load of
//! simple and prepared queries (and pgbench, when installed) must end with
//! zero errors, and the proxy must still serve a fresh connection at the end.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::{Proxy, expect_sqlstate, local_dsn};
use futures_util::{SinkExt, pin_mut};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;

/// The `us` region of this test's proxy: its own database, so the tables,
/// pgbench's included, and the leftover-backend checks concern only us.
const DB: &str = "byokpg_t_bad_input";
/// Authenticates with SCRAM; its tenant (globex) lives in region `us`.
const USER: &str = "globex_app";
const PROTOCOL_3_0: i32 = 0x0003_0000;
const SSL_REQUEST: i32 = 80_877_103;
/// How long a bad client may wait for the proxy's answer or close before
/// the proxy counts as hung.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
/// How long PostgreSQL may take to notice that a backend's client is gone.
const BACKEND_GONE_TIMEOUT: Duration = Duration::from_secs(15);
/// Queries the background load runs at least (it goes on until the bad
/// clients are done).
const BACKGROUND_QUERIES: usize = 2000;
const BACKGROUND_CONNECTIONS: usize = 4;

fn proxy() -> Proxy {
    let proxy = Proxy::builder()
        .scram()
        .region_dsn("us", &local_dsn(DB))
        .start();
    proxy.require_proxy();
    direct(|c| async move {
        c.batch_execute(
            "create table if not exists bad_copy (x int);\
             create table if not exists bad_copy_tp (x int);\
             create table if not exists bad_tx (tag text)",
        )
        .await
        .unwrap();
    });
    proxy
}

/// Runs `f` with a tokio-postgres client connected straight to [`DB`].
fn direct<F, Fut, T>(f: F) -> T
where
    F: FnOnce(tokio_postgres::Client) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
    T: Send + 'static,
{
    common::run_async(async move { f(common::direct_client_db(DB).await).await })
}

// ------------------------------------------------------------ raw protocol

/// A deterministic byte soup (xorshift), so failures reproduce.
fn garbage(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn startup_packet(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).unwrap();
    [len.to_be_bytes().to_vec(), body].concat()
}

fn user_startup(version: i32) -> Vec<u8> {
    startup_packet(version, &[("user", USER), ("database", common::CLIENT_DB)])
}

fn framed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut b = vec![tag];
    b.extend_from_slice(&i32::try_from(body.len() + 4).unwrap().to_be_bytes());
    b.extend_from_slice(body);
    b
}

fn encode(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut b = BytesMut::new();
    f(&mut b);
    b.to_vec()
}

fn connect(proxy: &Proxy) -> TcpStream {
    let s = proxy.raw_socket();
    s.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    s
}

/// Writes what it can: the proxy may close before taking it all.
fn send(s: &mut TcpStream, bytes: &[u8]) {
    let _ = s.write_all(bytes);
}

/// One message from the proxy, or `None` once it closed.
fn read_message(s: &mut TcpStream, what: &str) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    if let Err(e) = s.read_exact(&mut head) {
        return closed_or_hung(&e, what);
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    assert!(
        (4..1 << 24).contains(&len),
        "{what}: absurd message length {len}"
    );
    let mut body = vec![0; usize::try_from(len).unwrap() - 4];
    if let Err(e) = s.read_exact(&mut body) {
        return closed_or_hung(&e, what);
    }
    Some((head[0], body))
}

fn closed_or_hung<T>(e: &std::io::Error, what: &str) -> Option<T> {
    match e.kind() {
        ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            None
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
            panic!("{what}: the proxy neither answered nor closed within {ANSWER_TIMEOUT:?}")
        }
        _ => panic!("{what}: reading from the proxy: {e}"),
    }
}

/// Fields of an ErrorResponse body by type: (`S`everity, `C`ode, `M`essage).
fn error_fields(body: &[u8]) -> (String, String, String) {
    let mut f = (String::new(), String::new(), String::new());
    for field in body.split(|b| *b == 0).filter(|x| !x.is_empty()) {
        let v = String::from_utf8_lossy(&field[1..]).into_owned();
        match field[0] {
            b'S' => f.0 = v,
            b'C' => f.1 = v,
            b'M' => f.2 = v,
            _ => {}
        }
    }
    f
}

/// Reads to the close; every message must be one of `allowed` or an
/// ErrorResponse. Returns the errors' (severity, code, message).
fn errors_until_close(
    s: &mut TcpStream,
    what: &str,
    allowed: &[u8],
) -> Vec<(String, String, String)> {
    let mut errors = Vec::new();
    while let Some((tag, body)) = read_message(s, what) {
        if tag == b'E' {
            errors.push(error_fields(&body));
        } else {
            assert!(
                allowed.contains(&tag),
                "{what}: expected an error or a close, got message {:?}",
                char::from(tag)
            );
        }
    }
    errors
}

/// The proxy's own errors name themselves; PostgreSQL's pass unchanged.
fn assert_clean_errors(errors: &[(String, String, String)], what: &str) {
    for (severity, code, message) in errors {
        assert!(
            severity == "FATAL" || severity == "ERROR",
            "{what}: error with severity {severity:?}: {message}"
        );
        assert!(
            !code.is_empty(),
            "{what}: error without SQLSTATE: {message}"
        );
    }
}

/// A bad client whose only acceptable outcome is errors and a close.
fn expect_refusal(proxy: &Proxy, what: &str, bytes: &[u8], half_close: bool) {
    let mut s = connect(proxy);
    send(&mut s, bytes);
    if half_close {
        let _ = s.shutdown(Shutdown::Write);
    }
    let errors = errors_until_close(&mut s, what, &[]);
    assert_clean_errors(&errors, what);
    for (_, _, message) in &errors {
        assert!(
            message.starts_with("byokpg:"),
            "{what}: the proxy's own error must start with `byokpg:`: {message}"
        );
    }
}

fn auth_code(body: &[u8]) -> i32 {
    i32::from_be_bytes(body[..4].try_into().unwrap())
}

/// Reads one authentication request and returns its code and payload.
fn auth_request(s: &mut TcpStream, what: &str) -> (i32, Vec<u8>) {
    let (tag, body) = read_message(s, what).unwrap_or_else(|| panic!("{what}: closed"));
    assert_eq!(
        tag,
        b'R',
        "{what}: expected an authentication request, got {:?} {:?}",
        char::from(tag),
        error_fields(&body)
    );
    (auth_code(&body), body[4..].to_vec())
}

/// A complete SCRAM login on a raw socket, up to ReadyForQuery.
fn login(proxy: &Proxy) -> TcpStream {
    let mut s = connect(proxy);
    send(&mut s, &user_startup(PROTOCOL_3_0));
    let (code, mechanisms) = auth_request(&mut s, "login");
    assert_eq!(code, 10, "expected AuthenticationSASL");
    assert!(String::from_utf8_lossy(&mechanisms).contains("SCRAM-SHA-256"));
    let password = proxy.password(USER);
    let mut scram = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    send(
        &mut s,
        &encode(|b| frontend::sasl_initial_response("SCRAM-SHA-256", scram.message(), b).unwrap()),
    );
    let (code, server_first) = auth_request(&mut s, "login");
    assert_eq!(code, 11, "expected AuthenticationSASLContinue");
    scram.update(&server_first).unwrap();
    send(
        &mut s,
        &encode(|b| frontend::sasl_response(scram.message(), b).unwrap()),
    );
    let (code, server_final) = auth_request(&mut s, "login");
    assert_eq!(code, 12, "expected AuthenticationSASLFinal");
    scram.finish(&server_final).unwrap();
    read_until_ready(&mut s, "login");
    s
}

/// Reads up to ReadyForQuery; returns the DataRows' first column, as text.
fn read_until_ready(s: &mut TcpStream, what: &str) -> Vec<String> {
    let mut values = Vec::new();
    loop {
        let (tag, body) = read_message(s, what).unwrap_or_else(|| panic!("{what}: closed"));
        match tag {
            b'E' => panic!("{what}: error {:?}", error_fields(&body)),
            b'D' => {
                let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
                let len = usize::try_from(len).unwrap();
                values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
            }
            b'Z' => return values,
            _ => {}
        }
    }
}

fn query(s: &mut TcpStream, sql: &str) -> Vec<String> {
    send(s, &encode(|b| frontend::query(sql, b).unwrap()));
    read_until_ready(s, sql)
}

/// The real backend pid behind a proxied session.
fn backend_pid(s: &mut TcpStream) -> i32 {
    query(s, "select pg_backend_pid()")[0].parse().unwrap()
}

/// Waits until PostgreSQL has no backend `pid` any more; then it holds no
/// lock and no transaction either.
fn assert_backend_gone(pid: i32, what: &str) {
    let what = what.to_owned();
    direct(move |c| async move {
        let deadline = Instant::now() + BACKEND_GONE_TIMEOUT;
        loop {
            let alive: i64 = c
                .query_one(
                    "select count(*) from pg_stat_activity where pid = $1",
                    &[&pid],
                )
                .await
                .unwrap()
                .get(0);
            let locks: i64 = c
                .query_one("select count(*) from pg_locks where pid = $1", &[&pid])
                .await
                .unwrap()
                .get(0);
            if alive == 0 && locks == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: backend {pid} still there after {BACKEND_GONE_TIMEOUT:?} \
                 ({alive} activity rows, {locks} locks)"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

// ------------------------------------------------------------ bad clients

fn garbage_bytes(proxy: &Proxy) {
    for (seed, len) in [(1, 64), (2, 4096), (3, 9), (4, 1)] {
        let what = format!("{len} garbage bytes (seed {seed})");
        expect_refusal(proxy, &what, &garbage(seed, len), true);
    }
    let mut tls_like = garbage(5, 300);
    tls_like[0] = 0x16; // looks like a TLS ClientHello; no TLS configured
    expect_refusal(proxy, "TLS-looking garbage", &tls_like, true);
    expect_refusal(
        proxy,
        "an HTTP request",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        true,
    );
}

fn truncated_startup(proxy: &Proxy) {
    let full = user_startup(PROTOCOL_3_0);
    for cut in [1, 4, 7, full.len() / 2, full.len() - 1] {
        expect_refusal(proxy, &format!("startup cut at {cut}"), &full[..cut], true);
    }
}

fn bad_startup_lengths(proxy: &Proxy) {
    let mut huge = 0x7fff_ffff_i32.to_be_bytes().to_vec();
    huge.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    // No half-close: the length alone must be refused, not waited on.
    expect_refusal(proxy, "startup length 0x7fffffff", &huge, false);
    let mut three = 3_i32.to_be_bytes().to_vec();
    three.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    expect_refusal(proxy, "startup length 3", &three, false);
    let negative = [0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0];
    expect_refusal(proxy, "negative startup length", &negative, false);
    let filler = "x".repeat(20 * 1024);
    let oversized = startup_packet(
        PROTOCOL_3_0,
        &[
            ("user", USER),
            ("database", "app"),
            ("application_name", &filler),
        ],
    );
    expect_refusal(proxy, "20 KB startup packet", &oversized, false);
}

fn negotiation_abuse(proxy: &Proxy) {
    // SSLRequest answered 'N' (no TLS here), then garbage instead of a startup.
    let mut s = connect(proxy);
    send(
        &mut s,
        &[8_i32.to_be_bytes(), SSL_REQUEST.to_be_bytes()].concat(),
    );
    let mut n = [0u8; 1];
    s.read_exact(&mut n).unwrap();
    assert_eq!(n[0], b'N');
    send(&mut s, &garbage(6, 100));
    let _ = s.shutdown(Shutdown::Write);
    assert_clean_errors(
        &errors_until_close(&mut s, "garbage after SSLRequest", &[]),
        "ssl",
    );
    // Endless SSLRequests: answered a few times, then refused.
    let mut s = connect(proxy);
    let ssl = [8_i32.to_be_bytes(), SSL_REQUEST.to_be_bytes()].concat();
    send(&mut s, &ssl.repeat(10));
    let mut all = Vec::new();
    match s.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) => {
            let _: Option<()> = closed_or_hung(&e, "repeated SSLRequest");
        }
    }
    let after_n = all.iter().position(|b| *b != b'N').unwrap_or(all.len());
    assert!(after_n <= 3, "more than 3 SSLRequests answered: {all:?}");
    assert!(
        all.get(after_n).is_none_or(|t| *t == b'E'),
        "repeated SSLRequest: unexpected reply {all:?}"
    );
}

fn old_and_future_protocols(proxy: &Proxy) {
    expect_refusal(proxy, "protocol 2.0", &user_startup(0x0002_0000), false);
    expect_refusal(proxy, "protocol 4.0", &user_startup(0x0004_0000), false);

    // 3.99 with a protocol option: NegotiateProtocolVersion, then on to auth.
    let mut s = connect(proxy);
    let packet = startup_packet(
        0x0003_0063,
        &[("user", USER), ("database", "app"), ("_pq_.x", "1")],
    );
    send(&mut s, &packet);
    let (tag, body) = read_message(&mut s, "protocol 3.99").expect("closed");
    assert_eq!(
        tag, b'v',
        "protocol 3.99: expected NegotiateProtocolVersion"
    );
    assert_eq!(
        i32::from_be_bytes(body[..4].try_into().unwrap()),
        0,
        "minor"
    );
    assert_eq!(
        i32::from_be_bytes(body[4..8].try_into().unwrap()),
        1,
        "count"
    );
    assert_eq!(&body[8..], b"_pq_.x\0");
    let (code, _) = auth_request(&mut s, "protocol 3.99");
    assert_eq!(code, 10, "protocol 3.99: expected AuthenticationSASL");
}

fn query_before_authentication(proxy: &Proxy) {
    let mut s = connect(proxy);
    let mut bytes = user_startup(PROTOCOL_3_0);
    bytes.extend(encode(|b| frontend::query("select 1", b).unwrap()));
    send(&mut s, &bytes);
    let (code, _) = auth_request(&mut s, "Query before authentication");
    assert_eq!(code, 10);
    let errors = errors_until_close(&mut s, "Query before authentication", &[]);
    assert!(
        !errors.is_empty(),
        "Query before authentication: closed without an error"
    );
    assert_clean_errors(&errors, "Query before authentication");
    // And a password message with an absurd length.
    let mut s = connect(proxy);
    send(&mut s, &user_startup(PROTOCOL_3_0));
    auth_request(&mut s, "huge SASL response");
    send(&mut s, &[b'p', 0x7f, 0xff, 0xff, 0xff]);
    let errors = errors_until_close(&mut s, "huge SASL response", &[]);
    assert_clean_errors(&errors, "huge SASL response");
}

/// Inside an authenticated session: a frame the proxy cannot frame, an
/// unknown message type, and malformed Binds.
fn broken_frames_in_session(proxy: &Proxy) {
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "frame length 0x7fffffff",
            vec![b'Q', 0x7f, 0xff, 0xff, 0xff],
        ),
        ("frame length 3", vec![b'Q', 0, 0, 0, 3]),
        ("unknown message type 'y'", framed(b'y', b"hello\0")),
        (
            "Bind without a NUL anywhere",
            [
                framed(
                    b'B',
                    &garbage(7, 23).iter().map(|b| b | 1).collect::<Vec<_>>(),
                ),
                framed(b'S', b""),
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in cases {
        let mut s = login(proxy);
        let pid = backend_pid(&mut s);
        send(&mut s, &bytes);
        let errors = errors_until_close(&mut s, what, &[]);
        assert!(!errors.is_empty(), "{what}: closed without an error");
        assert_clean_errors(&errors, what);
        assert_backend_gone(pid, what);
    }
    // A Bind of an existing statement whose names parse but whose counts
    // run past its end: the backend refuses it; after Sync the session may
    // go on (or be closed cleanly by the proxy).
    let mut body = b"\0\0".to_vec();
    body.extend_from_slice(&[0x00, 0x05, 0x00]);
    body.extend(garbage(8, 17));
    let mut s = login(proxy);
    let parse = encode(|b| frontend::parse("", "select $1::int4", [], b).unwrap());
    send(
        &mut s,
        &[parse, framed(b'B', &body), framed(b'S', b"")].concat(),
    );
    let mut saw_error = false;
    loop {
        match read_message(&mut s, "truncated Bind") {
            Some((b'1', _)) => {}
            Some((b'E', body)) => {
                assert_clean_errors(&[error_fields(&body)], "truncated Bind");
                saw_error = true;
            }
            Some((b'Z', _)) => {
                assert!(saw_error, "truncated Bind: accepted");
                assert_eq!(query(&mut s, "select 41 + 1"), ["42"]);
                break;
            }
            Some((tag, _)) => panic!("truncated Bind: unexpected {:?}", char::from(tag)),
            None => {
                assert!(saw_error, "truncated Bind: closed without an error");
                break;
            }
        }
    }
}

/// A client that starts COPY FROM STDIN, sends some data and vanishes.
fn vanish_mid_copy(proxy: &Proxy) {
    let mut s = login(proxy);
    let pid = backend_pid(&mut s);
    send(
        &mut s,
        &encode(|b| frontend::query("copy bad_copy from stdin", b).unwrap()),
    );
    let (tag, _) = read_message(&mut s, "COPY FROM STDIN").expect("closed");
    assert_eq!(tag, b'G', "expected CopyInResponse");
    send(&mut s, &framed(b'd', b"1\n2\n"));
    drop(s);
    assert_backend_gone(pid, "client gone mid-COPY");
    // Nothing was committed, and the table is free: an exclusive lock is
    // granted at once, and a new session writes to it through the proxy.
    direct(|c| async move {
        c.batch_execute("begin; lock table bad_copy in access exclusive mode nowait; commit")
            .await
            .unwrap();
        let n: i64 = c
            .query_one("select count(*) from bad_copy", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "rows of an unfinished COPY are visible");
    });
    let mut s = login(proxy);
    query(&mut s, "insert into bad_copy values (7)");
    assert_eq!(
        query(&mut s, "select count(*) from bad_copy where x = 7"),
        ["1"]
    );
    query(&mut s, "delete from bad_copy");
}

/// A client that opens a transaction, writes, and vanishes.
fn vanish_mid_transaction(proxy: &Proxy) {
    let tag = common::unique_name("vanished");
    let mut s = login(proxy);
    let pid = backend_pid(&mut s);
    query(
        &mut s,
        &format!("begin; insert into bad_tx values ('{tag}')"),
    );
    // In the transaction, and the row is there for the session itself.
    assert_eq!(
        query(
            &mut s,
            &format!("select count(*) from bad_tx where tag = '{tag}'")
        ),
        ["1"]
    );
    drop(s);
    assert_backend_gone(pid, "client gone mid-transaction");
    direct(move |c| async move {
        let n: i64 = c
            .query_one("select count(*) from bad_tx where tag = $1", &[&tag])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 0, "an uncommitted insert became visible");
        c.batch_execute("begin; lock table bad_tx in access exclusive mode nowait; commit")
            .await
            .unwrap();
    });
}

/// A client that asks for a big result and vanishes without reading it.
fn vanish_mid_result(proxy: &Proxy) {
    let mut s = login(proxy);
    let pid = backend_pid(&mut s);
    send(
        &mut s,
        &encode(|b| {
            frontend::query(
                "select repeat('x', 1000) from generate_series(1, 200000)",
                b,
            )
            .unwrap();
        }),
    );
    let mut first = [0u8; 1];
    s.read_exact(&mut first).unwrap();
    drop(s);
    assert_backend_gone(pid, "client gone mid-result");
}

// ------------------------------------------------------------ good clients

#[derive(Default)]
struct Load {
    done: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// Simple and prepared queries on several connections until `stop` is set
/// and at least [`BACKGROUND_QUERIES`] have run.
fn background_load(proxy: &Proxy, stop: &AtomicBool, load: &Load) {
    let dsns: Vec<String> = (0..BACKGROUND_CONNECTIONS)
        .map(|_| proxy.dsn(USER, &proxy.password(USER), None))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(futures_util::future::join_all(dsns.iter().enumerate().map(
        |(n, dsn)| async move {
            if let Err(e) = one_connection(n, dsn, stop, load).await {
                load.errors
                    .lock()
                    .unwrap()
                    .push(format!("connection {n}: {e}"));
            }
        },
    )));
}

async fn one_connection(n: usize, dsn: &str, stop: &AtomicBool, load: &Load) -> Result<(), String> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let stmt = client
        .prepare("select $1::int4 + 1, repeat('y', $1::int4 % 97)")
        .await
        .map_err(|e| e.to_string())?;
    let quota = BACKGROUND_QUERIES.div_ceil(BACKGROUND_CONNECTIONS);
    let mut i: i32 = 0;
    while !stop.load(Ordering::Relaxed) || usize::try_from(i).unwrap() < quota {
        let want = i32::try_from(n).unwrap() * 100_000 + i;
        let got: i32 = if i % 2 == 0 {
            let rows = client
                .simple_query(&format!("select {want} + 1"))
                .await
                .map_err(|e| format!("simple query {i}: {e}"))?;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0)?.parse().ok(),
                    _ => None,
                })
                .unwrap_or(-1)
        } else {
            let row = client
                .query_one(&stmt, &[&want])
                .await
                .map_err(|e| format!("prepared query {i}: {e}"))?;
            let s: &str = row.get(1);
            if s.len() != usize::try_from(want % 97).unwrap() {
                return Err(format!("prepared query {i}: wrong text"));
            }
            row.get(0)
        };
        if got != want + 1 {
            return Err(format!("query {i}: got {got}, want {}", want + 1));
        }
        load.done.fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    Ok(())
}

/// `pgbench -S` through the proxy; `None` when pgbench is not installed.
fn pgbench_select_only(proxy: &Proxy) -> Option<String> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        eprintln!("pgbench is not installed: the pgbench part of this test did not run");
        return None;
    }
    let init = common::run(
        Command::new("pgbench")
            .args(["-i", "-s", "1", "-q"])
            .arg(local_dsn(DB)),
    );
    common::assert_success("pgbench -i (direct)", &init);
    let dsn = proxy.dsn(USER, &proxy.password(USER), None);
    let out = common::run(
        Command::new("pgbench")
            .args(["-n", "-T", "5", "-c", "2", "-S"])
            .arg(dsn),
    );
    let stdout = common::assert_success("pgbench -S through the proxy", &out);
    Some(format!(
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn number_after(output: &str, label: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One kind of bad client, run against the proxy.
type BadClient = fn(&Proxy);

#[test]
fn bad_clients_do_not_disturb_good_ones() {
    let proxy = proxy();
    let stop = AtomicBool::new(false);
    let load = Load::default();
    std::thread::scope(|sc| {
        let background = sc.spawn(|| background_load(&proxy, &stop, &load));
        let bench = sc.spawn(|| pgbench_select_only(&proxy));
        let bad_clients: [(&str, BadClient); 11] = [
            ("garbage", garbage_bytes),
            ("truncated startup", truncated_startup),
            ("bad startup lengths", bad_startup_lengths),
            ("negotiation abuse", negotiation_abuse),
            ("old and future protocols", old_and_future_protocols),
            ("query before authentication", query_before_authentication),
            ("broken frames in a session", broken_frames_in_session),
            ("vanish mid-COPY", vanish_mid_copy),
            ("vanish mid-transaction", vanish_mid_transaction),
            ("vanish mid-result", vanish_mid_result),
            ("garbage again", garbage_bytes),
        ];
        for (what, case) in bad_clients {
            eprintln!("bad client: {what}");
            case(&proxy);
        }
        stop.store(true, Ordering::Relaxed);
        background.join().unwrap();
        if let Some(out) = bench.join().unwrap() {
            let done = number_after(&out, "number of transactions actually processed:");
            assert!(
                done.is_some_and(|n| n > 0),
                "pgbench: no transactions\n{out}"
            );
            let failed = number_after(&out, "number of failed transactions:").unwrap_or(0);
            assert_eq!(failed, 0, "pgbench: failed transactions\n{out}");
        }
    });
    let errors = load.errors.lock().unwrap();
    assert!(errors.is_empty(), "background clients failed: {errors:?}");
    assert!(load.done.load(Ordering::Relaxed) >= BACKGROUND_QUERIES);
    // Still alive, still serving.
    let mut s = login(&proxy);
    assert_eq!(query(&mut s, "select 'still here'"), ["still here"]);
    send(&mut s, &encode(frontend::terminate));
    drop(s);
    let (status, _) = proxy.admin_get("/healthz");
    assert_eq!(status, 200, "healthz after the bad clients");
}

// ------------------------------------------------------------ COPY errors

/// tokio-postgres runs COPY FROM STDIN through the extended protocol and
/// sends Sync both after Execute and after CopyDone; PostgreSQL ignores the
/// first. When the server rejects a row while the client is still sending,
/// its ErrorResponse passes the proxy before the client's CopyDone does.
/// The connection must stay usable afterwards.
#[tokio::test]
async fn tokio_postgres_copy_rejected_early_leaves_the_connection_usable() {
    let proxy = tokio::task::spawn_blocking(proxy).await.unwrap();
    let client = proxy.connect(USER, None).await;
    let sink = client
        .copy_in::<_, Bytes>("copy bad_copy_tp from stdin")
        .await
        .unwrap();
    pin_mut!(sink);
    // The bad row first, then enough data that the error overtakes it.
    let _ = sink.send(Bytes::from_static(b"not-a-number\n")).await;
    let mut good = BytesMut::new();
    for i in 0..200_000 {
        good.put_slice(format!("{i}\n").as_bytes());
    }
    let good = good.freeze();
    for _ in 0..5 {
        let _ = sink.send(good.clone()).await;
    }
    expect_sqlstate(sink.finish().await, "22P02");
    let row = client.query_one("select 41 + 1", &[]).await;
    let row = row.unwrap_or_else(|e| {
        panic!(
            "the connection broke after a rejected COPY: {e:?}\n--- log\n{}",
            proxy.log()
        )
    });
    assert_eq!(row.get::<_, i32>(0), 42);
    let n: i64 = client
        .query_one("select count(*) from bad_copy_tp where x >= 0", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

/// The client gives up (CopyFail, as tokio-postgres does when the sink is
/// dropped) after the server already saw data: the connection stays usable.
#[tokio::test]
async fn tokio_postgres_copy_abandoned_leaves_the_connection_usable() {
    let proxy = tokio::task::spawn_blocking(proxy).await.unwrap();
    let client = proxy.connect(USER, None).await;
    {
        let sink = client
            .copy_in::<_, Bytes>("copy bad_copy_tp from stdin")
            .await
            .unwrap();
        pin_mut!(sink);
        sink.send(Bytes::from_static(b"1\n2\n")).await.unwrap();
        // Dropped unfinished: tokio-postgres sends CopyFail + Sync.
    }
    let row = client.query_one("select 41 + 1", &[]).await;
    let row = row.unwrap_or_else(|e| {
        panic!(
            "the connection broke after an abandoned COPY: {e:?}\n--- log\n{}",
            proxy.log()
        )
    });
    assert_eq!(row.get::<_, i32>(0), 42);
}

// ------------------------------------------------------------ deep SQL

/// Statements on a protected table are parsed and planned; the planner
/// walks expressions recursively. A long chain of `OR`s (as ORMs generate
/// for "any of these") is a left-deep tree thousands of levels deep: it must
/// be answered (rows or a clean error), never overflow a worker's stack,
/// which would abort the whole proxy and every tenant's sessions with it.
#[tokio::test]
async fn deeply_nested_sql_on_a_protected_table_does_not_kill_the_proxy() {
    let proxy = tokio::task::spawn_blocking(Proxy::start).await.unwrap();
    proxy.require_proxy();
    let table = common::POLICY_TABLE;
    let long_or = format!(
        "select id from {table} where email = 'x'{}",
        " or id = 0".repeat(20_000)
    );
    let parens = format!(
        "select id from {table} where email = {}'x'{}",
        "(".repeat(5_000),
        ")".repeat(5_000)
    );
    let long_and_insert = format!(
        "insert into {table} (tenant_id, email) select 'globex', 'x' where true{}",
        " and true".repeat(20_000)
    );
    for (what, sql) in [
        ("20000 ORs", &long_or),
        ("5000 parentheses", &parens),
        ("INSERT with 20000 ANDs", &long_and_insert),
    ] {
        let client = proxy.connect("globex_app", None).await;
        // Simple and extended protocol both plan the statement.
        let simple = client.simple_query(sql).await;
        let extended = client.prepare(sql).await;
        for (how, failed) in [("simple", simple.err()), ("extended", extended.err())] {
            if let Some(e) = failed {
                assert!(
                    e.as_db_error().is_some(),
                    "{what} ({how}): the connection broke instead of an error: {e:?}\n--- log\n{}",
                    proxy.log()
                );
            }
        }
        let fresh = proxy.try_connect("globex_app", None).await;
        let fresh = fresh.unwrap_or_else(|e| {
            panic!(
                "{what}: the proxy no longer accepts connections: {e:?}\n--- log\n{}",
                proxy.log()
            )
        });
        let row = fresh.query_one("select 41 + 1", &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
    }
}
