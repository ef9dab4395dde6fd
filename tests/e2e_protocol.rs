//! Startup edge cases seen from a raw socket: `SSLRequest` / `GSSENCRequest`
//! without TLS, unsupported protocol versions, garbage and truncated startup
//! packets. After each bad client the proxy must still serve a fresh one.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};

use common::Proxy;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3_0: u32 = 0x0003_0000;

/// Startup packet of a trust-auth user (`postgres` itself in direct mode).
fn startup_packet(version: u32) -> Vec<u8> {
    let (user, db) = if common::direct_mode() {
        ("postgres", "byokpg_t_us")
    } else {
        ("globex_app", common::CLIENT_DB)
    };
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", db)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let len = u32::try_from(body.len() + 4).unwrap();
    [len.to_be_bytes().to_vec(), body].concat()
}

fn request_code(code: u32) -> Vec<u8> {
    [8u32.to_be_bytes(), code.to_be_bytes()].concat()
}

/// One backend message, or `None` at end of stream (EOF or reset).
fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    match s.read_exact(&mut head) {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset
            ) =>
        {
            return None;
        }
        Err(e) => panic!("reading from the proxy: {e} (it neither answered nor closed)"),
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    assert!((4..1 << 24).contains(&len), "absurd message length {len}");
    let mut body = vec![0; usize::try_from(len).unwrap() - 4];
    s.read_exact(&mut body).unwrap();
    Some((head[0], body))
}

/// Fields of an `ErrorResponse` body, by field type.
fn error_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0], String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

/// The proxy must answer only with `ErrorResponse`s, then close.
fn expect_error_or_close(s: &mut TcpStream, what: &str) -> Vec<Vec<(u8, String)>> {
    let mut errors = Vec::new();
    while let Some((tag, body)) = read_message(s) {
        assert_eq!(
            tag,
            b'E',
            "{what}: expected an error or a close, got message {:?}",
            char::from(tag)
        );
        errors.push(error_fields(&body));
    }
    errors
}

/// Completes a trust-auth startup and a `select 1` on an open socket.
fn startup_and_query(s: &mut TcpStream) {
    s.write_all(&startup_packet(PROTOCOL_3_0)).unwrap();
    loop {
        let (tag, body) = read_message(s).expect("proxy closed during startup");
        assert_ne!(tag, b'E', "startup failed: {:?}", error_fields(&body));
        if tag == b'Z' {
            break;
        }
    }
    let query = b"select 1\0";
    let len = u32::try_from(query.len() + 4).unwrap();
    s.write_all(&[&[b'Q'][..], &len.to_be_bytes(), query].concat())
        .unwrap();
    let mut data_rows = Vec::new();
    loop {
        let (tag, body) = read_message(s).expect("proxy closed during a query");
        assert_ne!(tag, b'E', "select 1 failed: {:?}", error_fields(&body));
        if tag == b'D' {
            data_rows.push(body);
        }
        if tag == b'Z' {
            break;
        }
    }
    // One row, one column, 1 byte: "1".
    assert_eq!(data_rows, vec![vec![0, 1, 0, 0, 0, 1, b'1']]);
    s.write_all(&[b'X', 0, 0, 0, 4]).unwrap();
}

fn fresh_connection_works(proxy: &Proxy) {
    let mut s = proxy.raw_socket();
    startup_and_query(&mut s);
}

fn read_one_byte(s: &mut TcpStream) -> u8 {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    b[0]
}

#[test]
fn ssl_request_without_tls_gets_n_then_startup_works() {
    let proxy = Proxy::start();
    proxy.require_proxy();
    let mut s = proxy.raw_socket();
    s.write_all(&request_code(SSL_REQUEST)).unwrap();
    assert_eq!(read_one_byte(&mut s), b'N');
    startup_and_query(&mut s);
}

#[test]
fn gssenc_request_gets_n_then_startup_works() {
    let proxy = Proxy::start();
    proxy.require_proxy(); // PostgreSQL built with GSSAPI answers 'G'
    let mut s = proxy.raw_socket();
    s.write_all(&request_code(GSSENC_REQUEST)).unwrap();
    assert_eq!(read_one_byte(&mut s), b'N');
    startup_and_query(&mut s);
}

/// Everything the peer sends until it closes.
fn read_to_close(s: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut all = Vec::new();
    match s.read_to_end(&mut all) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: {e} (the proxy neither answered nor closed)"),
    }
    all
}

#[test]
fn unsupported_protocol_versions_get_fatal_error_then_close() {
    let proxy = Proxy::start();
    for (version, name) in [(0x0004_0000, "4.0"), (0x0002_0000, "2.0")] {
        let mut s = proxy.raw_socket();
        s.write_all(&startup_packet(version)).unwrap();
        // PostgreSQL answers 2.0 with a version-2 error (`E` + text), 4.0
        // with a version-3 ErrorResponse: both start with `E`, then close.
        let reply = read_to_close(&mut s, name);
        assert_eq!(
            reply.first(),
            Some(&b'E'),
            "protocol {name}: reply {reply:?}"
        );
        let text = String::from_utf8_lossy(&reply);
        assert!(text.contains("FATAL"), "protocol {name}: {text:?}");
        if !common::direct_mode() {
            assert!(text.contains("byokpg:"), "protocol {name}: {text:?}");
        }
    }
    fresh_connection_works(&proxy);
}

#[test]
fn garbage_and_bad_lengths_are_refused_cleanly() {
    let proxy = Proxy::start();
    let mut absurd = 0x7fff_ffffu32.to_be_bytes().to_vec();
    absurd.extend_from_slice(&PROTOCOL_3_0.to_be_bytes());
    let cases: [(&str, Vec<u8>); 4] = [
        (
            "http request",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("length 0x7fffffff", absurd),
        ("length 4", vec![0, 0, 0, 4, 0, 3, 0, 0]),
        ("length 0", vec![0; 8]),
    ];
    for (what, bytes) in cases {
        let mut s = proxy.raw_socket();
        s.write_all(&bytes).unwrap();
        expect_error_or_close(&mut s, what);
        fresh_connection_works(&proxy);
    }
}

#[test]
fn truncated_startup_packet_is_refused_cleanly() {
    let proxy = Proxy::start();
    let full = startup_packet(PROTOCOL_3_0);
    for cut in [2, 6, full.len() - 3] {
        let mut s = proxy.raw_socket();
        s.write_all(&full[..cut]).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        expect_error_or_close(&mut s, &format!("startup cut at {cut} bytes"));
    }
    fresh_connection_works(&proxy);
}

#[test]
fn bogus_cancel_request_is_dropped_silently() {
    let proxy = Proxy::start();
    let mut s = proxy.raw_socket();
    let packet = [
        16u32.to_be_bytes(),
        CANCEL_REQUEST.to_be_bytes(),
        12345u32.to_be_bytes(),
        0xdead_beefu32.to_be_bytes(),
    ]
    .concat();
    s.write_all(&packet).unwrap();
    let errors = expect_error_or_close(&mut s, "cancel request");
    assert!(
        errors.is_empty(),
        "a CancelRequest gets no reply: {errors:?}"
    );
    fresh_connection_works(&proxy);
}
