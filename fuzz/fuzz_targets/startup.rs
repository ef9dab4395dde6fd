//! The connection's opening: startup packet framing and decoding, the
//! `options` parser that extracts `byokpg.tenant`, and the server side of
//! SCRAM-SHA-256 — everything an unauthenticated peer can reach.
#![no_main]

use std::sync::LazyLock;

use byokpg::protocol::scram::{ScramServer, Verifier};
use byokpg::protocol::startup::{self, StartupPacket};
use libfuzzer_sys::fuzz_target;

/// PostgreSQL 15's verifier for the password `pencil` (fixed, so runs are
/// reproducible and no PBKDF2 runs per input).
const PENCIL: &str = "SCRAM-SHA-256$4096:5HH688fKTVsJzQFcMkDTDA==$WGmTAygUJ0W1n3zTJi0e8zTw+ufn8sWdXfnH5Or/gag=:Bj8XdkqPljw26u8KYPAz4RsPsVxZkIOvS1E+/pdvXPM=";

static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::parse(PENCIL).expect("the fixed verifier parses"));

fuzz_target!(|data: &[u8]| {
    startup_packet(data);
    options(&String::from_utf8_lossy(data));
    scram(data);
});

/// As the session reads it: a 4-byte length, then exactly that many bytes.
fn startup_packet(data: &[u8]) {
    let _ = startup::parse_startup(data);
    let Ok(Some(n)) = startup::startup_len(data) else {
        return;
    };
    assert!((8..=startup::MAX_STARTUP_LEN).contains(&n));
    let Some(packet) = data.get(..n) else {
        return;
    };
    if let Ok(StartupPacket::Startup(m)) = startup::parse_startup(packet)
        && let Some(o) = m.get("options")
    {
        options(o);
    }
}

/// The forwarded rest of `options` is stable: parsing it again finds no
/// tenant and changes nothing.
fn options(text: &str) {
    let (_, rest) = startup::take_tenant_option(text);
    assert_eq!(startup::take_tenant_option(&rest), (None, rest.clone()));
}

/// client-first and client-final, split at the first 0xff byte (which can
/// never occur in either UTF-8 message). A proof for a random server nonce
/// can never be right, so the exchange must never succeed.
fn scram(data: &[u8]) {
    let (first, fin) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let mut server = ScramServer::new(&VERIFIER);
    if server.client_first(first).is_ok() {
        assert!(server.client_final(fin).is_err());
    }
    let _ = Verifier::parse(&String::from_utf8_lossy(data));
}
