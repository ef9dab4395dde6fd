//! Service-account credentials for Cloud KMS: the OAuth 2.0 JWT bearer
//! grant (RFC 7523) that Google documents for server-to-server calls
//! (https://developers.google.com/identity/protocols/oauth2/service-account#httprest).
//!
//! byokpg signs a JWT with the service account's RSA key (RS256, ring),
//! posts it to the file's `token_uri`, and sends the access token it gets
//! back as `Authorization: Bearer` until shortly before `expires_in`.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::config::Secret;
use crate::kms::KmsError;
use crate::kms::http::{self, TokenCache};

/// The OAuth scope of Cloud KMS.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloudkms";
/// Lifetime asked for in the assertion; Google caps it at one hour.
const ASSERTION_LIFETIME: u64 = 3600;

/// The fields of a service-account key file byokpg uses.
#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: String,
    client_email: String,
    private_key: Secret,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".to_owned()
}

/// A service account: who it is, its signing key, and its cached token.
pub struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: RsaKeyPair,
    token_uri: String,
    token: TokenCache,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// `credentials_file`, else `GOOGLE_APPLICATION_CREDENTIALS`.
pub fn credentials_path(configured: Option<&Path>, kms: &str) -> Result<PathBuf, KmsError> {
    if let Some(p) = configured {
        return Ok(p.to_path_buf());
    }
    match std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(KmsError::Config(format!(
            "kms.{kms}: set `credentials_file` (a service-account JSON key) or \
             GOOGLE_APPLICATION_CREDENTIALS"
        ))),
    }
}

impl ServiceAccount {
    /// Reads and checks a service-account key file (errors name the file,
    /// never its content).
    pub fn load(path: &Path) -> Result<Self, KmsError> {
        let bad = |why: &str| KmsError::Config(format!("{}: {why}", path.display()));
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| bad(&format!("cannot read it: {e}")))?,
        );
        Self::parse(&text).map_err(|why| bad(&why))
    }

    /// Parses the JSON of a key file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: KeyFile = serde_json::from_str(text)
            .map_err(|e| format!("not a service-account key file (line {})", e.line()))?;
        if file.kind != "service_account" {
            return Err(format!(
                "credentials of type `{}` are not supported; use a service-account key \
                 (`type` = `service_account`)",
                file.kind
            ));
        }
        let der = PrivatePkcs8KeyDer::from_pem_slice(file.private_key.expose().as_bytes())
            .map_err(|_| "`private_key` is not a PEM PKCS#8 private key".to_owned())?;
        let key = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("`private_key` is not a usable RSA key ({e})"))?;
        url::Url::parse(&file.token_uri).map_err(|_| "`token_uri` is not a URL".to_owned())?;
        Ok(Self {
            email: file.client_email,
            key_id: file.private_key_id,
            key,
            token_uri: file.token_uri,
            token: TokenCache::default(),
        })
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    /// A valid access token, from the cache or a new grant.
    pub async fn token(&self, client: &reqwest::Client) -> Result<Secret, KmsError> {
        self.token.get(|| self.fetch(client)).await
    }

    /// Drops the cached token (the service answered 401).
    pub async fn forget_token(&self) {
        self.token.clear().await;
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<(Secret, Duration), KmsError> {
        let assertion = self.assertion()?;
        let form = [
            ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
            ("assertion", assertion.as_str()),
        ];
        let what = "Google OAuth token";
        let reply = http::send(client.post(&self.token_uri).form(&form), what).await?;
        http::token_reply(&reply, what)
    }

    /// The signed JWT: header.claims.signature, each base64url.
    pub fn assertion(&self) -> Result<Zeroizing<String>, KmsError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let claims = serde_json::json!({
            "iss": self.email,
            "scope": SCOPE,
            "aud": self.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        });
        let mut jwt = Zeroizing::new(format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        ));
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                jwt.as_bytes(),
                &mut sig,
            )
            .map_err(|_| KmsError::Config("cannot sign the service-account JWT".to_owned()))?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}
