//! A scriptable in-memory KMS for unit tests: counts calls, can fail the
//! next N calls with a chosen error, fail every call, or hold every call at
//! a gate until the test opens it.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::watch;

use super::{DataKey, KeyInfo, KmsError, Signature};
use crate::crypto::Dek;

const PAD: u8 = 0x5a;

#[derive(Debug)]
pub struct FakeKms {
    pub generates: AtomicUsize,
    pub unwraps: AtomicUsize,
    pub calls: AtomicUsize,
    /// Errors returned by the next calls, in order.
    pub fail_next: Mutex<VecDeque<KmsError>>,
    /// Error returned by every call once `fail_next` is empty.
    pub fail_always: Mutex<Option<KmsError>>,
    gate: watch::Sender<bool>,
}

impl Default for FakeKms {
    fn default() -> Self {
        Self {
            generates: AtomicUsize::new(0),
            unwraps: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            fail_next: Mutex::new(VecDeque::new()),
            fail_always: Mutex::new(None),
            gate: watch::Sender::new(true),
        }
    }
}

impl FakeKms {
    /// Calls wait until [`FakeKms::open_gate`].
    pub fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    pub fn fail_with(&self, e: Option<KmsError>) {
        *self.fail_always.lock().unwrap() = e;
    }

    async fn enter(&self) -> Result<(), KmsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut rx = self.gate.subscribe();
        let _ = rx.wait_for(|open| *open).await;
        if let Some(e) = self.fail_next.lock().unwrap().pop_front() {
            return Err(e);
        }
        match self.fail_always.lock().unwrap().clone() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// The wrapping: label ‖ 0 ‖ (DEK xor PAD). Not secure, only distinct.
    fn seal(label: &str, dek: &Dek) -> Vec<u8> {
        let mut out = label.as_bytes().to_vec();
        out.push(0);
        out.extend(dek.expose_secret().iter().map(|b| b ^ PAD));
        out
    }

    pub async fn generate_data_key(&self, label: &str) -> Result<DataKey, KmsError> {
        self.enter().await?;
        self.generates.fetch_add(1, Ordering::SeqCst);
        let plaintext = Dek::generate();
        let wrapped = Self::seal(label, &plaintext);
        Ok(DataKey { plaintext, wrapped })
    }

    pub async fn wrap(&self, label: &str, dek: &Dek) -> Result<Vec<u8>, KmsError> {
        self.enter().await?;
        Ok(Self::seal(label, dek))
    }

    pub async fn unwrap(&self, label: &str, wrapped: &[u8]) -> Result<Dek, KmsError> {
        self.enter().await?;
        self.unwraps.fetch_add(1, Ordering::SeqCst);
        let prefix_len = label.len() + 1;
        if wrapped.len() != prefix_len + Dek::LEN || &wrapped[..label.len()] != label.as_bytes() {
            return Err(KmsError::AccessDenied("fake: wrong label".to_owned()));
        }
        let bytes: Vec<u8> = wrapped[prefix_len..].iter().map(|b| b ^ PAD).collect();
        Ok(Dek::from_slice(&bytes).unwrap())
    }

    pub async fn describe(&self, label: &str) -> Result<KeyInfo, KmsError> {
        self.enter().await?;
        Ok(KeyInfo {
            enabled: true,
            description: format!("fake key {label}"),
        })
    }

    pub async fn sign(&self, label: &str, msg: &[u8]) -> Result<Signature, KmsError> {
        self.enter().await?;
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label.as_bytes());
        ctx.update(msg);
        Ok(Signature {
            algorithm: "fake-sha256".to_owned(),
            bytes: ctx.finish().as_ref().to_vec(),
        })
    }

    pub async fn verify(&self, label: &str, msg: &[u8], sig: &Signature) -> Result<bool, KmsError> {
        let expected = self.sign(label, msg).await?;
        Ok(&expected == sig)
    }
}
