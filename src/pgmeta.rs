//! byokpg's own connections to a region database (catalog checks, key
//! tables), with libpq's `sslmode` semantics on rustls + ring.
//!
//! The TLS configuration is built with an explicit ring provider
//! (`builder_with_provider`) so nothing depends on a process-wide default.
//! [`client_tls_config`] is public so the proxy's backend connections can
//! apply the same `sslmode` rules.
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{Dsn, SslMode};

/// Why a region connection failed. Messages name the region by its
/// redacted DSN and never contain the password.
#[derive(Debug, thiserror::Error)]
pub enum PgMetaError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("connecting to {target} took longer than {}", humantime::format_duration(*.timeout))]
    Timeout { target: String, timeout: Duration },
    #[error("TLS setup for {target}: {message}")]
    Tls { target: String, message: String },
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls client configuration `dsn.sslmode` calls for, or `None` for
/// `disable`:
/// - `allow` / `prefer`: TLS without certificate checks (libpq's meaning);
/// - `require`: the same, unless `sslrootcert` is given, which makes it
///   `verify-ca` (as libpq does when a root certificate is present);
/// - `verify-ca`: chain checked against `sslrootcert`, name not checked;
/// - `verify-full`: chain and host name checked.
pub fn client_tls_config(dsn: &Dsn) -> Result<Option<ClientConfig>, PgMetaError> {
    let tls_err = |message: String| PgMetaError::Tls {
        target: dsn.redacted(),
        message,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (dsn.sslmode, &dsn.sslrootcert) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(NoCertCheck(provider().signature_verification_algorithms))
        }
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(tls_err(format!(
                "sslmode={} needs sslrootcert=PATH",
                dsn.sslmode.as_str()
            )));
        }
        (mode, Some(root)) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(root)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| tls_err(format!("cannot read sslrootcert {}: {e}", root.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_err(format!(
                    "sslrootcert {} holds no usable CA certificate",
                    root.display()
                )));
            }
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| tls_err(e.to_string()))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

/// Connects to `dsn` within `timeout` and spawns the connection task.
pub async fn connect(dsn: &Dsn, timeout: Duration) -> Result<Client, PgMetaError> {
    let target = dsn.redacted();
    let attempt = async {
        let Some(tls) = client_tls_config(dsn)? else {
            return open(dsn, PgSslMode::Disable, NoTls, timeout).await;
        };
        let mode = match dsn.sslmode {
            SslMode::Allow | SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        };
        let first = open(dsn, mode, MakeRustlsConnect::new(tls), timeout).await;
        match first {
            // prefer/allow: a failed TLS handshake falls back to plain TCP,
            // as libpq does; a server-side refusal (bad password) does not.
            Err(PgMetaError::Connect { ref source, .. })
                if mode == PgSslMode::Prefer && source.as_db_error().is_none() =>
            {
                open(dsn, PgSslMode::Disable, NoTls, timeout)
                    .await
                    .or(first)
            }
            other => other,
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(PgMetaError::Timeout { target, timeout }))
}

async fn open<T>(
    dsn: &Dsn,
    mode: PgSslMode,
    tls: T,
    timeout: Duration,
) -> Result<Client, PgMetaError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let mut cfg = dsn.pg_config();
    cfg.ssl_mode(mode).connect_timeout(timeout);
    let (client, connection) = cfg
        .connect(tls)
        .await
        .map_err(|source| PgMetaError::Connect {
            target: dsn.redacted(),
            source,
        })?;
    let target = dsn.redacted();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(target: "byokpg::pgmeta", region = %target, error = %e, "metadata connection ended");
        }
    });
    Ok(client)
}

/// `allow` / `prefer` / `require` without a root certificate: encryption
/// without authentication, exactly what libpq gives. Handshake signatures
/// are still verified so the session keys belong to the presented key.
#[derive(Debug)]
struct NoCertCheck(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoCertCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`; the host name is not
/// compared with the certificate.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dsn(s: &str) -> Dsn {
        Dsn::parse(s).unwrap()
    }

    const HINT: &str = "PostgreSQL is needed at 127.0.0.1:5432 (trust, user postgres, ssl on); start it with `pg_ctlcluster 15 main start`";

    async fn uses_tls(client: &Client) -> bool {
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        row.get(0)
    }

    #[test]
    fn tls_config_per_sslmode() {
        assert!(
            client_tls_config(&dsn("postgres://u@h?sslmode=disable"))
                .unwrap()
                .is_none()
        );
        for mode in ["allow", "prefer", "require"] {
            let d = dsn(&format!("postgres://u@h?sslmode={mode}"));
            assert!(client_tls_config(&d).unwrap().is_some(), "{mode}");
        }
        let e = client_tls_config(&dsn("postgres://u:pw@h?sslmode=verify-full")).unwrap_err();
        assert!(e.to_string().contains("needs sslrootcert"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".to_owned()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        let bad = dir.path().join("junk.pem");
        std::fs::write(&bad, "not a certificate").unwrap();
        for mode in ["require", "verify-ca", "verify-full"] {
            let d = dsn(&format!(
                "postgres://u@h?sslmode={mode}&sslrootcert={}",
                good.display()
            ));
            assert!(client_tls_config(&d).unwrap().is_some(), "{mode}");
        }
        let d = dsn(&format!(
            "postgres://u:pw@h?sslmode=verify-ca&sslrootcert={}",
            bad.display()
        ));
        let e = client_tls_config(&d).unwrap_err().to_string();
        assert!(e.contains("no usable CA certificate"), "{e}");
        assert!(!e.contains(":pw@"), "{e}");
    }

    #[tokio::test]
    async fn connects_with_and_without_tls() {
        let t = Duration::from_secs(10);
        let plain = connect(
            &dsn("postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
            t,
        )
        .await
        .unwrap_or_else(|e| panic!("{HINT}: {e}"));
        assert!(!uses_tls(&plain).await);
        for mode in ["prefer", "require"] {
            let d = dsn(&format!(
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode={mode}"
            ));
            let c = connect(&d, t)
                .await
                .unwrap_or_else(|e| panic!("{HINT}: {e}"));
            assert!(
                uses_tls(&c).await,
                "{mode} should use TLS (server has ssl = on)"
            );
        }
    }

    #[tokio::test]
    async fn errors_do_not_show_the_password() {
        let t = Duration::from_secs(10);
        let d = dsn(
            "postgres://no_such_role_xyz:Hunter2Secret@127.0.0.1:5432/postgres?sslmode=disable",
        );
        let e = connect(&d, t).await.unwrap_err().to_string();
        assert!(
            e.contains("no_such_role_xyz") && !e.contains("Hunter2Secret"),
            "{e}"
        );

        // verify-full against a CA that did not sign the server's certificate.
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["other-ca.test".to_owned()]).unwrap();
        let root = dir.path().join("ca.pem");
        std::fs::write(&root, ca.cert.pem()).unwrap();
        let d = dsn(&format!(
            "postgres://postgres:Hunter2Secret@127.0.0.1:5432/postgres?sslmode=verify-full&sslrootcert={}",
            root.display()
        ));
        let e = connect(&d, t).await.unwrap_err().to_string();
        assert!(!e.contains("Hunter2Secret"), "{e}");
        assert!(e.contains("postgres:***@127.0.0.1"), "{e}");
    }
}
