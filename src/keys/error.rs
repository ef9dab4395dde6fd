//! Why a tenant's data key could not be had, as a client will read it.
use crate::kms::KmsError;

/// A key-layer failure. `Display` is the client-safe message (it starts
/// with `byokpg:` and names the tenant and the cause); [`KeyError::sqlstate`]
/// is the SQLSTATE to send with it (SPEC §8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The tenant is not in `[tenants]` (any more: a reload removed it).
    #[error("byokpg: tenant {tenant} is not configured")]
    UnknownTenant { tenant: String },
    /// The KMS refused or failed.
    #[error("byokpg: the key of tenant {tenant} is unavailable: {source}")]
    Kms {
        tenant: String,
        #[source]
        source: KmsError,
    },
    /// The tenant's region database, where the wrapped DEK lives, did not
    /// answer.
    #[error(
        "byokpg: the key of tenant {tenant} is unavailable: the database of region {region} is unreachable ({message})"
    )]
    RegionUnreachable {
        tenant: String,
        region: String,
        message: String,
    },
    /// The region database answered, but the key table could not be used
    /// (not set up, no permission, a row byokpg cannot read).
    #[error(
        "byokpg: the key of tenant {tenant} is unavailable: byokpg.tenant_keys in region {region} cannot be used ({message})"
    )]
    Store {
        tenant: String,
        region: String,
        message: String,
    },
    /// A ciphertext names a DEK version this tenant never had: another
    /// tenant's value, or an altered one.
    #[error(
        "byokpg: tenant {tenant} has no data key version {version} (the value was not written for this tenant, or was altered)"
    )]
    UnknownVersion { tenant: String, version: u32 },
}

impl KeyError {
    /// SQLSTATE: `58000` key revoked / disabled / denied (and key-table
    /// trouble), `58030` KMS unreachable, `08006` region database
    /// unreachable, `XX001` a DEK version the tenant does not have.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            KeyError::Kms { source, .. } => source.sqlstate(),
            KeyError::RegionUnreachable { .. } => "08006",
            KeyError::UnknownVersion { .. } => "XX001",
            KeyError::UnknownTenant { .. } | KeyError::Store { .. } => "58000",
        }
    }

    /// What to do about it, for the ErrorResponse HINT field.
    pub fn hint(&self) -> &'static str {
        match self {
            KeyError::Kms { source, .. } => source.hint(),
            KeyError::UnknownTenant { .. } => "add the tenant to [tenants] and reload",
            KeyError::RegionUnreachable { .. } => {
                "check that the region database is up and reachable from byokpg"
            }
            KeyError::Store { .. } => {
                "run `byokpg setup` and check that the region DSN's role may use schema byokpg"
            }
            KeyError::UnknownVersion { .. } => {
                "the stored value does not belong to this tenant; check where it came from"
            }
        }
    }

    /// The tenant the error is about.
    pub fn tenant(&self) -> &str {
        match self {
            KeyError::UnknownTenant { tenant }
            | KeyError::Kms { tenant, .. }
            | KeyError::RegionUnreachable { tenant, .. }
            | KeyError::Store { tenant, .. }
            | KeyError::UnknownVersion { tenant, .. } => tenant,
        }
    }

    /// The KMS error behind it, if any.
    pub fn kms_error(&self) -> Option<&KmsError> {
        match self {
            KeyError::Kms { source, .. } => Some(source),
            _ => None,
        }
    }

    pub(crate) fn kms(tenant: &str, source: KmsError) -> Self {
        KeyError::Kms {
            tenant: tenant.to_owned(),
            source,
        }
    }
}
