//! Everything a session needs from one configuration, prepared once per
//! load: SCRAM verifiers, backend targets, the classifier, the TLS acceptor.
//! A reload builds a new `Runtime` and swaps it in atomically; sessions keep
//! their tenant and backend and pick the new policy up per statement.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::Target;
use crate::config::{AuthMethod, Config, TlsMode};
use crate::protocol::scram::Verifier;
use crate::rewrite::Classifier;
use crate::tls;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("byokpg: user {user}: invalid SCRAM verifier")]
    Verifier { user: String },
    #[error("byokpg: region {region}: {source}")]
    RegionTls {
        region: String,
        source: tls::TlsError,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A user as authentication sees it.
#[derive(Debug)]
pub struct UserEntry {
    /// `None` only with `auth = "trust"` and no password configured.
    pub verifier: Option<Verifier>,
    pub tenants: Vec<String>,
}

pub struct Runtime {
    pub config: Arc<Config>,
    pub users: HashMap<String, UserEntry>,
    /// Backend target of each region.
    pub regions: HashMap<String, Target>,
    pub classifier: Classifier,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Runtime {
    pub fn build(config: Config) -> Result<Self, RuntimeError> {
        let users = build_users(&config)?;
        let mut regions = HashMap::new();
        for (name, region) in &config.regions {
            let target =
                Target::new(name, &region.dsn).map_err(|source| RuntimeError::RegionTls {
                    region: name.clone(),
                    source,
                })?;
            regions.insert(name.clone(), target);
        }
        let classifier = Classifier::new(config.tables.iter().map(|t| (t.table(), t.qualified())));
        let tls = match (
            &config.server.tls_cert,
            &config.server.tls_key,
            config.server.tls_mode,
        ) {
            (Some(cert), Some(key), mode) if mode != TlsMode::Disable => Some(
                tokio_rustls::TlsAcceptor::from(tls::server_config(cert, key)?),
            ),
            _ => None,
        };
        Ok(Self {
            config: Arc::new(config),
            users,
            regions,
            classifier,
            tls,
        })
    }

    pub fn auth(&self) -> AuthMethod {
        self.config.server.auth
    }

    /// The backend target of a tenant's region.
    pub fn tenant_target(&self, tenant: &str) -> Option<&Target> {
        let region = &self.config.tenants.get(tenant)?.region;
        self.regions.get(region)
    }
}

fn build_users(config: &Config) -> Result<HashMap<String, UserEntry>, RuntimeError> {
    let mut users = HashMap::new();
    for u in &config.users {
        let verifier = match &u.password {
            None => None,
            Some(p) if Verifier::is_verifier(p.expose()) => Some(
                Verifier::parse(p.expose()).map_err(|_| RuntimeError::Verifier {
                    user: u.name.clone(),
                })?,
            ),
            Some(p) => Some(Verifier::from_password(p.expose().as_bytes())),
        };
        users.insert(
            u.name.clone(),
            UserEntry {
                verifier,
                tenants: u.tenants.clone(),
            },
        );
    }
    Ok(users)
}
