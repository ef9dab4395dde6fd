//! The relay as a whole: client and backend traffic interleaved in any
//! order, with and without protected columns and keys. Errors (desync,
//! malformed frames) are fine; panics are not. Without protected columns
//! nothing is rewritten, so whatever the backend direction consumes it
//! relays unchanged. A key fetch (`Need`) leaves the frame in the input and
//! the next call handles it as if nothing happened.
#![no_main]

use byokpg::metrics::SessionMetrics;
use byokpg::protocol::messages;
use byokpg::rewrite::{Classifier, CryptoFailure, Need, ProtectedColumns, RowHook};
use byokpg::session::registry::RowMarks;
use byokpg::session::relay::{Ctx, Relay, RelayError};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

/// Stands in for the session's keys: upper-cases marked rows; when `needy`,
/// first asks for a key for every row.
struct Upper {
    needy: bool,
    asked: bool,
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
        Ok(format!("'{}'", value.replace('\'', "''")))
    }

    fn encrypt_param(&mut self, _: usize, value: &[u8], _: bool) -> Result<Vec<u8>, CryptoFailure> {
        Ok(value.to_vec())
    }

    fn tenant(&self) -> &'static str {
        "acme"
    }

    fn decrypt_field(&mut self, _column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure> {
        Ok(stored.to_vec())
    }
}

/// Protected columns?, keys (`Some(needy)`)?, then reads from the client
/// (`true`) or the backend (`false`).
type Input = (bool, Option<bool>, Vec<(bool, Vec<u8>)>);

fuzz_target!(|input: Input| {
    let (protect, keys, ops) = input;
    let classifier = Classifier::new([("secrets".to_owned(), "public.secrets".to_owned())]);
    let mut protected = ProtectedColumns::default();
    if protect {
        protected.insert(16_400, 2, 0);
    }
    let ctx = Ctx {
        classifier: &classifier,
        protected: &protected,
        known_oids: None,
        write: None,
        metrics: SessionMetrics::get(),
    };
    let mut hook = keys.map(|needy| Upper {
        needy,
        asked: false,
    });
    let mut relay = Relay::default();
    let mut from_client = BytesMut::new();
    let mut from_backend = BytesMut::new();
    for (client, bytes) in ops {
        let mut out = BytesMut::new();
        if client {
            from_client.extend_from_slice(&bytes);
            let _ = relay.on_client(&ctx, None, &mut from_client, &mut out);
            continue;
        }
        from_backend.extend_from_slice(&bytes);
        let before = from_backend.clone();
        let mut needs = 0;
        let ok = loop {
            let h = hook.as_mut().map(|h| h as &mut dyn RowHook);
            match relay.on_backend(&ctx, h, &mut from_backend, &mut out) {
                Ok(()) => break true,
                Err(RelayError::Need(_)) => {
                    needs += 1;
                    assert!(needs <= before.len(), "Need without progress");
                }
                Err(_) => break false,
            }
        };
        if ok && !protect {
            let consumed = before.len() - from_backend.len();
            assert_eq!(
                &out[..],
                &before[..consumed],
                "fast path changed backend bytes"
            );
        }
        let _ = relay.is_idle();
    }
});
