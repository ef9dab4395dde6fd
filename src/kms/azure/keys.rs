//! Key references and what byokpg needs to know about a key: which
//! wrapping and signing algorithm its type takes, and its public half for
//! local signature checks (JWK, RFC 7517/7518).
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::signature;

use super::wire::Jwk;
use crate::kms::KmsError;
use crate::kms::http::clip;

/// `NAME/VERSION` of a key reference (`NAME/VERSION` or a full key id on
/// the configured vault). Names and versions are restricted to Key Vault's
/// alphabet, so a reference cannot reach another path of the API.
pub fn key_path(key_ref: &str, vault_host: &str) -> Result<String, KmsError> {
    let path = if key_ref.starts_with("https://") || key_ref.starts_with("http://") {
        let url = url::Url::parse(key_ref).map_err(|_| bad(key_ref))?;
        if url.host_str() != Some(vault_host) {
            return Err(KmsError::Config(format!(
                "key `{}` is not in the configured vault {vault_host}",
                clip(key_ref)
            )));
        }
        url.path()
            .strip_prefix("/keys/")
            .ok_or_else(|| bad(key_ref))?
            .to_owned()
    } else {
        key_ref.to_owned()
    };
    let parts: Vec<&str> = path.split('/').collect();
    let ok = |s: &str| {
        !s.is_empty() && s.len() <= 127 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    match parts[..] {
        [name, version] if ok(name) && ok(version) => Ok(path),
        [name] if ok(name) => Err(KmsError::Config(format!(
            "key `{name}` has no version: pin it as NAME/VERSION (see `az keyvault key show`)"
        ))),
        _ => Err(bad(key_ref)),
    }
}

fn bad(key_ref: &str) -> KmsError {
    KmsError::NotFound(format!(
        "`{}` is not a Key Vault key (NAME/VERSION or https://VAULT/keys/NAME/VERSION)",
        clip(key_ref)
    ))
}

/// A pinned key's type and public half.
#[derive(Debug)]
pub struct KeyMeta {
    jwk: Jwk,
}

impl KeyMeta {
    pub fn from_jwk(jwk: Jwk) -> Self {
        Self { jwk }
    }

    /// RSA-OAEP-256 for RSA keys, A256KW for symmetric (Managed HSM) keys.
    pub fn wrap_alg(&self) -> Result<&'static str, KmsError> {
        match self.jwk.kty.as_str() {
            "RSA" | "RSA-HSM" => Ok("RSA-OAEP-256"),
            "oct" | "oct-HSM" => Ok("A256KW"),
            other => Err(KmsError::Config(format!(
                "key type {other} cannot wrap keys; use an RSA or oct-HSM key"
            ))),
        }
    }

    /// ES256 for P-256 keys, PS256 for RSA keys.
    pub fn sign_alg(&self) -> Result<&'static str, KmsError> {
        match (self.jwk.kty.as_str(), self.jwk.crv.as_deref()) {
            ("EC" | "EC-HSM", Some("P-256")) => Ok("ES256"),
            ("RSA" | "RSA-HSM", _) => Ok("PS256"),
            (kty, crv) => Err(KmsError::Config(format!(
                "key type {kty} {} cannot sign with SHA-256; use an EC P-256 or RSA key",
                crv.unwrap_or("")
            ))),
        }
    }

    /// Checks a signature locally with the JWK (ES256 signatures are the
    /// raw 64-byte r ‖ s of JWS, PS256 the RSASSA-PSS bytes).
    pub fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Result<bool, KmsError> {
        let part = |v: &Option<String>, name: &str| {
            v.as_deref()
                .and_then(|s| B64URL.decode(s.trim_end_matches('=')).ok())
                .ok_or_else(|| {
                    KmsError::Unavailable(format!("Key Vault get key: JWK has no `{name}`"))
                })
        };
        if alg != self.sign_alg()? {
            return Ok(false);
        }
        if alg == "ES256" {
            let mut point = vec![4u8];
            point.extend(part(&self.jwk.x, "x")?);
            point.extend(part(&self.jwk.y, "y")?);
            return Ok(signature::UnparsedPublicKey::new(
                &signature::ECDSA_P256_SHA256_FIXED,
                &point,
            )
            .verify(msg, sig)
            .is_ok());
        }
        let key = signature::RsaPublicKeyComponents {
            n: part(&self.jwk.n, "n")?,
            e: part(&self.jwk.e, "e")?,
        };
        Ok(key
            .verify(&signature::RSA_PSS_2048_8192_SHA256, msg, sig)
            .is_ok())
    }
}
