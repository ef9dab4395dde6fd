//! Framing of tagged messages: `tag (1) | len (4, includes itself) | body`.

use bytes::{Bytes, BytesMut};

/// Upper bound on any single message we buffer. PostgreSQL's own limit for
/// most messages is 1 GB; a proxy must not let one client make it allocate
/// that much, so anything beyond this is refused and the session closed.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024 * 1024;

/// One complete message, split exactly at its boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    /// The whole frame, tag and length included (ready to relay unchanged).
    pub raw: Bytes,
}

impl Frame {
    /// The message body after tag and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("byokpg: invalid message length {0}")]
    BadLength(i32),
    #[error("byokpg: message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}

/// Length of the complete frame at the start of `buf`, if it is all there.
///
/// `Ok(None)` means "need more bytes". Lengths below 4 or above
/// [`MAX_MESSAGE_LEN`] are errors: the stream cannot be resynchronised.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len));
    }
    let total = usize::try_from(len).map_err(|_| FrameError::BadLength(len))? + 1;
    if total > MAX_MESSAGE_LEN {
        return Err(FrameError::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some(total))
}

/// Split the next complete frame off the front of `buf`.
pub fn next_frame(buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    let tag = buf[0];
    Ok(Some(Frame {
        tag,
        raw: buf.split_to(total).freeze(),
    }))
}
