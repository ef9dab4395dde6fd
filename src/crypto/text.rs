//! The text form (`byok1:` + base64) and the CHECK-constraint shapes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::CryptoError;
use super::envelope::{FORMAT_VERSION, MIN_ENVELOPE_LEN};

/// Prefix of every text-column ciphertext.
pub const TEXT_PREFIX: &str = "byok1:";

/// PostgreSQL (ARE) regular expression admitting exactly the text ciphertexts
/// this format writes: the prefix, canonical padded base64 of at least 22
/// bytes, whose first two bytes are format 1 and mode 1 or 2. Base64 of bytes
/// `01 01` / `01 02` always starts `AQ` followed by one of `E`..`L`.
pub const TEXT_CIPHERTEXT_REGEX: &str = "^byok1:AQ[E-L][A-Za-z0-9+/]([A-Za-z0-9+/]{4}){6}([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)$";

/// Base64 characters (after the prefix) in the shortest text ciphertext:
/// 22 bytes encode to 32 characters.
const MIN_TEXT_BODY: usize = MIN_ENVELOPE_LEN.div_ceil(3) * 4;

/// The CHECK expression for a text column (`quoted_col` already quoted as an
/// identifier). NULL passes any CHECK, so NULLs stay allowed.
pub fn text_check_sql(quoted_col: &str) -> String {
    format!("{quoted_col} ~ '{TEXT_CIPHERTEXT_REGEX}'")
}

/// The CHECK expression for a bytea column: long enough, format 1, mode 1 or
/// 2. `substring` (not `get_byte`) so a short value fails the check instead of
/// raising an error; `decode` so the literal does not depend on
/// `standard_conforming_strings`.
pub fn bytea_check_sql(quoted_col: &str) -> String {
    format!(
        "(octet_length({quoted_col}) >= {MIN_ENVELOPE_LEN} AND substring({quoted_col} from 1 for 2) \
         IN (decode('{FORMAT_VERSION:02x}01', 'hex'), decode('{FORMAT_VERSION:02x}02', 'hex')))"
    )
}

/// `byok1:` + base64 → binary envelope (not yet authenticated).
/// SQL for the DEK version in the clear header of a stored value (bytes
/// 2..6 of the envelope, FORMAT.md §2): NULL for NULL and for anything that
/// is not byokpg ciphertext. Text columns hold `byok1:` + base64, whose first
/// 8 base64 characters are exactly those 6 header bytes.
pub fn dek_version_sql(quoted_col: &str, bytea: bool) -> String {
    let q = quoted_col;
    let (h, ok) = if bytea {
        (q.to_owned(), format!("length({q}) >= 6"))
    } else {
        (
            format!("decode(substr({q}::text, 7, 8), 'base64')"),
            format!("{q}::text LIKE 'byok1:%' AND length({q}::text) >= 14"),
        )
    };
    format!(
        "(CASE WHEN {ok} THEN (get_byte({h}, 2)::bigint << 24) | (get_byte({h}, 3) << 16) \
         | (get_byte({h}, 4) << 8) | get_byte({h}, 5) END)"
    )
}

pub fn decode_text(stored: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let body = stored
        .strip_prefix(TEXT_PREFIX.as_bytes())
        .ok_or(CryptoError::Malformed)?;
    B64.decode(body).map_err(|_| CryptoError::Malformed)
}

/// Binary envelope → `byok1:` + base64.
pub(crate) fn encode_text(envelope: &[u8]) -> String {
    let mut out = String::with_capacity(TEXT_PREFIX.len() + envelope.len().div_ceil(3) * 4);
    out.push_str(TEXT_PREFIX);
    B64.encode_string(envelope, &mut out);
    out
}

/// Cheap shape check that accepts exactly what [`TEXT_CIPHERTEXT_REGEX`]
/// accepts (no decoding, no allocation). A `true` says nothing about
/// authenticity.
pub fn is_text_ciphertext(stored: &[u8]) -> bool {
    let Some(body) = stored.strip_prefix(TEXT_PREFIX.as_bytes()) else {
        return false;
    };
    if body.len() < MIN_TEXT_BODY || body.len() % 4 != 0 {
        return false;
    }
    if !(body[0] == b'A' && body[1] == b'Q' && (b'E'..=b'L').contains(&body[2])) {
        return false;
    }
    // At most two '=' and only at the end: a padded quad keeps 2 or 3 data
    // characters.
    let pad = body.iter().rev().take_while(|&&c| c == b'=').count();
    pad <= 2 && body[..body.len() - pad].iter().all(|&c| is_b64_char(c))
}

fn is_b64_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'+' || c == b'/'
}
