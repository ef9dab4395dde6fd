//! PostgreSQL v3 wire codec: pure functions over bytes, no I/O.
//!
//! We frame first (tag + length, exact split) and only then decode the few
//! message kinds the proxy must understand; everything else is relayed as raw
//! bytes. This keeps a malformed message from reading into its neighbour and
//! keeps the fast path at "find the frame boundary, copy bytes".

pub mod errors;
pub mod frame;
pub mod messages;
pub mod scram;
pub mod startup;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_tests;

pub use errors::PgError;
pub use frame::{Frame, FrameError, next_frame};

/// Protocol-level failures: malformed input from a peer.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("byokpg: malformed {0} message")]
    Malformed(&'static str),
    #[error("byokpg: message too large ({len} bytes, limit {limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("byokpg: invalid message length {0}")]
    BadLength(i64),
}
