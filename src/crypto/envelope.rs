//! The binary envelope header (docs/FORMAT.md "Envelope").

use super::{ColumnId, CryptoError, Mode};

/// Byte 0 of every envelope this build writes.
pub const FORMAT_VERSION: u8 = 1;
/// Format (1) + mode (1) + DEK version (4).
pub const HEADER_LEN: usize = 6;
/// AES-256-GCM nonce length.
pub(crate) const GCM_NONCE_LEN: usize = 12;
/// Tag length of both AEADs (GCM tag, SIV synthetic IV).
pub(crate) const TAG_LEN: usize = 16;
/// Shortest randomized envelope: header + nonce + tag (empty plaintext).
pub const MIN_RANDOMIZED_ENVELOPE_LEN: usize = HEADER_LEN + GCM_NONCE_LEN + TAG_LEN;
/// Shortest deterministic envelope: header + SIV (empty plaintext).
pub const MIN_DETERMINISTIC_ENVELOPE_LEN: usize = HEADER_LEN + TAG_LEN;
/// Shortest envelope of either mode (what a bytea CHECK can demand).
pub const MIN_ENVELOPE_LEN: usize = MIN_DETERMINISTIC_ENVELOPE_LEN;

/// The clear header of an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeHeader {
    pub format: u8,
    pub mode: Mode,
    pub dek_version: u32,
}

impl EnvelopeHeader {
    pub(crate) fn to_bytes(self) -> [u8; HEADER_LEN] {
        let v = self.dek_version.to_be_bytes();
        [self.format, self.mode.to_byte(), v[0], v[1], v[2], v[3]]
    }
}

/// Read the header without decrypting, to choose the DEK version (during a
/// rotation a column holds values under several versions). Also checks the
/// envelope is at least as long as its mode requires.
pub fn peek_header(envelope: &[u8]) -> Result<EnvelopeHeader, CryptoError> {
    let Some(header) = envelope.first_chunk::<HEADER_LEN>() else {
        return Err(CryptoError::Malformed);
    };
    if header[0] != FORMAT_VERSION {
        return Err(CryptoError::UnsupportedVersion(header[0]));
    }
    let mode = Mode::from_byte(header[1]).ok_or(CryptoError::Malformed)?;
    let min = match mode {
        Mode::Randomized => MIN_RANDOMIZED_ENVELOPE_LEN,
        Mode::Deterministic => MIN_DETERMINISTIC_ENVELOPE_LEN,
    };
    if envelope.len() < min {
        return Err(CryptoError::Malformed);
    }
    Ok(EnvelopeHeader {
        format: header[0],
        mode,
        dek_version: u32::from_be_bytes([header[2], header[3], header[4], header[5]]),
    })
}

/// Associated data: the 6 header bytes, then the length-prefixed column
/// identity. The header is inside so that editing the version or mode byte
/// breaks the tag rather than silently selecting another key.
pub(crate) fn associated_data(header: EnvelopeHeader, col: &ColumnId<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        HEADER_LEN + 8 + col.tenant.len() + col.schema.len() + col.table.len() + col.column.len(),
    );
    aad.extend_from_slice(&header.to_bytes());
    col.encode_into(&mut aad);
    aad
}
