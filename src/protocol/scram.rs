//! Server side of SCRAM-SHA-256 (RFC 5802 / 7677), as PostgreSQL speaks it:
//! no channel binding offered (mechanism list is `SCRAM-SHA-256` only), the
//! user name inside the SCRAM message is ignored (the startup packet's counts).

use std::fmt;
use std::num::NonZeroU32;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SecureRandom as _;
use ring::{digest, hmac, pbkdf2};

/// Iterations for verifiers derived from plain passwords (PostgreSQL's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("nonce mismatch")]
    Nonce,
    #[error("wrong password")]
    BadProof,
    #[error("invalid SCRAM verifier")]
    BadVerifier,
}

/// A stored SCRAM-SHA-256 verifier: enough to check a proof, not to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Verifier(***)")
    }
}

impl Verifier {
    /// Parse `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        let decode32 = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(ScramError::BadVerifier)
        };
        Ok(Self {
            iterations,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: decode32(stored)?,
            server_key: decode32(server)?,
        })
    }

    /// Whether `s` looks like a verifier rather than a plain password.
    pub fn is_verifier(s: &str) -> bool {
        s.starts_with("SCRAM-SHA-256$")
    }

    /// Derive a verifier from a plain password with a fresh random salt.
    pub fn from_password(password: &[u8]) -> Self {
        let mut salt = vec![0u8; 16];
        fill_random(&mut salt);
        Self::derive(password, salt, DEFAULT_ITERATIONS)
    }

    fn derive(password: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let mut salted = zeroize::Zeroizing::new([0u8; 32]);
        let iters = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iters,
            &salt,
            password,
            &mut *salted,
        );
        let client_key = hmac_sha256(&*salted, b"Client Key");
        Self {
            iterations,
            salt,
            stored_key: sha256(&client_key),
            server_key: hmac_sha256(&*salted, b"Server Key"),
        }
    }

    /// A verifier for an unknown user: the exchange runs to the end and then
    /// fails exactly like a wrong password, so user names cannot be probed.
    pub fn mock() -> Self {
        let mut pw = [0u8; 16];
        fill_random(&mut pw);
        Self::derive(&pw, pw[..8].to_vec(), DEFAULT_ITERATIONS)
    }

    /// Render in PostgreSQL's `pg_authid.rolpassword` format.
    pub fn to_pg_string(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// One server-side SCRAM exchange.
pub struct ScramServer<'a> {
    verifier: &'a Verifier,
    state: State,
}

enum State {
    Initial,
    SentFirst {
        nonce: String,
        client_first_bare: String,
        server_first: String,
        gs2_header: String,
    },
    Done,
}

impl<'a> ScramServer<'a> {
    pub fn new(verifier: &'a Verifier) -> Self {
        Self {
            verifier,
            state: State::Initial,
        }
    }

    /// Handle client-first-message; returns server-first-message.
    pub fn client_first(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (gs2_header, bare) = split_gs2(msg)?;
        let cnonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed)?;
        let mut raw = [0u8; 18];
        fill_random(&mut raw);
        let nonce = format!("{cnonce}{}", B64.encode(raw));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&self.verifier.salt),
            self.verifier.iterations
        );
        self.state = State::SentFirst {
            nonce,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            gs2_header: gs2_header.to_owned(),
        };
        Ok(server_first)
    }

    /// Handle client-final-message; returns server-final-message on success.
    pub fn client_final(&mut self, msg: &[u8]) -> Result<String, ScramError> {
        let State::SentFirst {
            nonce,
            client_first_bare,
            server_first,
            gs2_header,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Malformed);
        };
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof_b64) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let attr = |name: &str| without_proof.split(',').find_map(|a| a.strip_prefix(name));
        if attr("c=") != Some(B64.encode(gs2_header.as_bytes()).as_str()) {
            return Err(ScramError::ChannelBinding);
        }
        if attr("r=") != Some(nonce.as_str()) {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = B64
            .decode(proof_b64)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Malformed)?;
        let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac_sha256(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = zeroize::Zeroizing::new([0u8; 32]);
        for (i, b) in client_key.iter_mut().enumerate() {
            *b = proof[i] ^ signature[i];
        }
        if !constant_time_eq(&sha256(&*client_key), &self.verifier.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_sig = hmac_sha256(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_sig)))
    }
}

/// Split the GS2 header (`n,,` or `y,,`; `p=` needs channel binding, which
/// we never offer) from client-first-message-bare.
fn split_gs2(msg: &str) -> Result<(&str, &str), ScramError> {
    let flag = msg.get(..1).ok_or(ScramError::Malformed)?;
    if flag == "p" {
        return Err(ScramError::ChannelBinding);
    }
    if flag != "n" && flag != "y" {
        return Err(ScramError::Malformed);
    }
    // gs2-header = flag "," [authzid] ","
    let first = msg.find(',').ok_or(ScramError::Malformed)?;
    let second = msg[first + 1..]
        .find(',')
        .map(|i| first + 1 + i)
        .ok_or(ScramError::Malformed)?;
    Ok((&msg[..=second], &msg[second + 1..]))
}

/// Compare without an early exit, so timing says nothing about where two
/// digests differ.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let tag = hmac::sign(&k, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Fill `buf` from the OS RNG. The RNG failing is not recoverable in a
/// security product, so it aborts the session task via panic.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(buf)
        .expect("OS random number generator failed");
}
