//! Tenant data keys (SPEC §5, docs/KEYS.md): the envelope hierarchy from a
//! tenant's KEK (in its KMS) to the DEK that encrypts its columns.
//!
//! - [`store`]: the wrapped DEKs in `byokpg.tenant_keys` of each region;
//! - [`cache`]: unwrapped DEKs in memory, bounded, per-tenant TTL, single
//!   flight, zeroized when dropped;
//! - [`manager`]: [`KeyManager`], what the proxy asks for a tenant's key;
//! - [`log`]: the customer-visible KMS operation log (`byokpg.kms_log`).

pub mod cache;
pub mod commands;
mod error;
mod flight;
pub mod log;
pub mod manager;
pub mod reencrypt;
mod rotate;
pub mod status;
pub mod store;
pub mod verify;

#[cfg(test)]
mod tests;

pub use cache::{CachedDek, DEFAULT_CAPACITY, DekCache};
pub use error::KeyError;
pub use log::{KmsLogEntry, KmsLogRow};
pub use manager::{KeyManager, LiveVersions};
pub use rotate::Target;
pub use store::{KeyStatus, RegionStore, StoreError, StoredKey};
