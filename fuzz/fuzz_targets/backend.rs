//! The relay as a whole: client and backend traffic interleaved in any
//! order, with and without protected columns. Errors (desync, malformed
//! frames) are fine; panics are not. Without protected columns nothing is
//! rewritten, so whatever the backend direction consumes it relays unchanged.
#![no_main]

use byokpg::metrics::SessionMetrics;
use byokpg::protocol::{PgError, messages};
use byokpg::rewrite::{Classifier, ProtectedColumns, RowHook};
use byokpg::session::registry::RowMarks;
use byokpg::session::relay::{Ctx, Relay};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Stands in for decryption: upper-cases marked rows.
struct Upper;

impl RowHook for Upper {
    fn rewrite_row(&self, _: &RowMarks, body: &[u8], out: &mut BytesMut) -> Result<(), PgError> {
        let s = messages::begin_msg(out, b'D');
        out.extend_from_slice(&body.to_ascii_uppercase());
        messages::finish_msg(out, s);
        Ok(())
    }
}

fuzz_target!(|input: (bool, bool, Vec<(bool, Vec<u8>)>)| {
    let (protect, hook, ops) = input;
    let classifier = Classifier::new([("secrets".to_owned(), "public.secrets".to_owned())]);
    let mut protected = ProtectedColumns::default();
    if protect {
        protected.insert(16_400, 2, 0);
    }
    let ctx = Ctx {
        classifier: &classifier,
        protected: &protected,
        row_hook: hook.then_some(&Upper as &dyn RowHook),
        metrics: SessionMetrics::get(),
    };
    let mut relay = Relay::default();
    let mut from_client = BytesMut::new();
    let mut from_backend = BytesMut::new();
    for (client, bytes) in ops {
        let mut out = BytesMut::new();
        if client {
            from_client.extend_from_slice(&bytes);
            let _ = relay.on_client(&ctx, &mut from_client, &mut out);
        } else {
            from_backend.extend_from_slice(&bytes);
            let before = from_backend.clone();
            let ok = relay.on_backend(&ctx, &mut from_backend, &mut out).is_ok();
            if ok && !protect {
                let consumed = before.len() - from_backend.len();
                assert_eq!(&out[..], &before[..consumed], "fast path changed backend bytes");
            }
        }
        let _ = relay.is_idle();
    }
});
