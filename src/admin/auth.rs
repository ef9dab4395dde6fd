//! Bearer-token check for admin calls.

use axum::http::{HeaderMap, header};
use ring::{hmac, rand::SystemRandom};

/// Why an admin call was not authorized. Messages never include a token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error(
        "byokpg: admin API disabled: admin_token is not configured; set [server] admin_token and reload"
    )]
    NotConfigured,
    #[error("byokpg: missing credentials: send Authorization: Bearer <admin_token>")]
    Missing,
    #[error("byokpg: invalid admin token")]
    Wrong,
}

/// Authorize a request against the configured token (`None` or empty = the
/// admin API is disabled, which refuses everything rather than accepting an
/// empty bearer).
pub(crate) fn check(headers: &HeaderMap, expected: Option<&str>) -> Result<(), AuthError> {
    let expected = expected
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::NotConfigured)?;
    let presented = bearer(headers).ok_or(AuthError::Missing)?;
    if tokens_match(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(AuthError::Wrong)
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is
/// case-insensitive (RFC 7235 §2.1). Any other scheme counts as no
/// credentials.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Constant-time comparison that also hides the expected token's length:
/// both sides are reduced to HMAC tags under a fresh random key and ring
/// compares the tags in constant time. (`ring::constant_time` is deprecated,
/// and a hand-written XOR loop is at the optimiser's mercy.)
fn tokens_match(presented: &[u8], expected: &[u8]) -> bool {
    let Ok(key) = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()) else {
        return false;
    };
    let tag = hmac::sign(&key, expected);
    hmac::verify(&key, presented, tag.as_ref()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn outcomes() {
        let ok = Some("s3cret");
        assert_eq!(check(&with_auth("Bearer s3cret"), ok), Ok(()));
        assert_eq!(check(&with_auth("bearer  s3cret "), ok), Ok(()));
        assert_eq!(check(&with_auth("Bearer s3cre"), ok), Err(AuthError::Wrong));
        assert_eq!(
            check(&with_auth("Bearer s3cretX"), ok),
            Err(AuthError::Wrong)
        );
        assert_eq!(
            check(&with_auth("Basic s3cret"), ok),
            Err(AuthError::Missing)
        );
        assert_eq!(check(&with_auth("Bearer"), ok), Err(AuthError::Missing));
        assert_eq!(check(&HeaderMap::new(), ok), Err(AuthError::Missing));
        assert_eq!(
            check(&with_auth("Bearer "), Some("")),
            Err(AuthError::NotConfigured)
        );
        assert_eq!(
            check(&with_auth("Bearer x"), None),
            Err(AuthError::NotConfigured)
        );
    }
}
