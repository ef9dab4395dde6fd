//! What an authenticated client sends: every decoder on one frame body,
//! the framer, and the relay's client direction. Oracles: framing consumes
//! exactly what it reports, and the relay's output does not depend on how
//! the byte stream is cut into reads (so an incomplete frame emits nothing).
#![no_main]

use byokpg::metrics::SessionMetrics;
use byokpg::protocol::{messages, next_frame};
use byokpg::rewrite::{Classifier, ProtectedColumns};
use byokpg::session::relay::{Ctx, Relay};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    decoders(data);
    framing(data);
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    relay(stream, usize::from(chunk.max(1)));
});

fn decoders(body: &[u8]) {
    let _ = messages::parse_parse(body);
    let _ = messages::parse_bind(body);
    let _ = messages::parse_bind_head(body);
    let _ = messages::parse_target(body, "Describe");
    let _ = messages::parse_execute(body);
    let _ = messages::parse_query(body);
}

fn framing(data: &[u8]) {
    let mut buf = BytesMut::from(data);
    let mut taken = 0;
    loop {
        let before = buf.len();
        let Ok(Some(f)) = next_frame(&mut buf) else {
            assert_eq!(before, buf.len());
            break;
        };
        assert_eq!(before - buf.len(), f.raw.len());
        assert_eq!(&data[taken..taken + f.raw.len()], &f.raw[..]);
        taken += f.raw.len();
        decoders(f.body());
    }
}

/// Run the client direction on `stream` in `chunk`-sized reads.
fn feed(stream: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let classifier = Classifier::new([("secrets".to_owned(), "public.secrets".to_owned())]);
    let protected = ProtectedColumns::default();
    let ctx = Ctx {
        classifier: &classifier,
        protected: &protected,
        known_oids: None,
        write: None,
        metrics: SessionMetrics::get(),
    };
    let mut relay = Relay::default();
    let mut input = BytesMut::new();
    let mut out = BytesMut::new();
    for part in stream.chunks(chunk) {
        input.extend_from_slice(part);
        if relay.on_client(&ctx, None, &mut input, &mut out).is_err() {
            return (out.to_vec(), false);
        }
        if relay.terminated {
            break;
        }
    }
    (out.to_vec(), true)
}

fn relay(stream: &[u8], chunk: usize) {
    let whole = feed(stream, stream.len().max(1));
    assert_eq!(feed(stream, chunk), whole, "output depends on read sizes");
}
