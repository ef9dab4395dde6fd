//! `byokpg keys rotate` (SPEC §2, docs/KEYS.md "Rotation and
//! re-encryption"): a new DEK version, generated and wrapped by the
//! tenant's KMS or by another `[kms.NAME]` / KEK, stored as the active row
//! of `byokpg.tenant_keys`; the previous active version becomes `previous`
//! and stays readable. Every byokpg instance writes under the new version
//! within [`super::manager::ACTIVE_RECHECK`].
//!
//! `--rewrap-only` makes no new version: every stored DEK of the tenant is
//! unwrapped by the KMS that wrapped it and wrapped again by the target
//! KEK (the customer moved keys); rows of data are not touched.
use std::sync::Arc;

use super::{KeyError, KeyManager, StoredKey};
use crate::kms::{Kms, KmsError, KmsOp};

/// Where the new DEK (or the re-wrapped ones) go.
#[derive(Debug, Clone)]
pub struct Target {
    pub kms: Arc<Kms>,
    pub key_ref: String,
}

impl KeyManager {
    /// The target of a rotation: `--kms NAME` / `--kek REF`, each
    /// defaulting to the tenant's configured one.
    pub fn rotation_target(
        &self,
        tenant: &str,
        kms: Option<&str>,
        kek: Option<&str>,
    ) -> Result<Target, KeyError> {
        let (_, cfg_kms, cfg_key) = self.tenant_config(tenant)?;
        let name = kms.unwrap_or(&cfg_kms);
        let built = match self.kms(name) {
            Some(Ok(k)) => k,
            Some(Err(e)) => return Err(KeyError::kms(tenant, e)),
            None => {
                return Err(KeyError::kms(
                    tenant,
                    KmsError::Config(format!("kms `{name}` is not configured in [kms]")),
                ));
            }
        };
        // A KEK of the configured KMS means nothing to another provider.
        let key_ref = match (kek, kms) {
            (Some(k), _) => k.to_owned(),
            (None, Some(n)) if n != cfg_kms => {
                return Err(KeyError::kms(
                    tenant,
                    KmsError::Config(format!(
                        "--kms {n} needs --kek: the tenant's key reference belongs to kms {cfg_kms}"
                    )),
                ));
            }
            (None, _) => cfg_key,
        };
        Ok(Target {
            kms: built,
            key_ref,
        })
    }

    /// Creates and stores the tenant's next DEK version under `target`;
    /// returns the new row. This process's cached active version is
    /// dropped so it writes under the new version at once.
    pub async fn rotate(&self, tenant: &str, target: &Target) -> Result<StoredKey, KeyError> {
        let store = self.store(tenant)?;
        let fresh = target.kms.generate_data_key(&target.key_ref).await;
        self.log_kms_now(
            tenant,
            &target.kms,
            KmsOp::Generate,
            &target.key_ref,
            &fresh,
        )
        .await;
        let fresh = fresh.map_err(|e| KeyError::kms(tenant, e))?;
        let row = store
            .rotate(tenant, target.kms.name(), &target.key_ref, &fresh.wrapped)
            .await
            .map_err(|e| e.for_tenant(tenant))?;
        drop(fresh);
        self.evict_tenant(tenant);
        tracing::info!(target: "byokpg::keys", tenant, version = row.version, kms = target.kms.name(), "rotated the tenant's data key");
        Ok(row)
    }

    /// Wraps every stored DEK of the tenant again under `target`; returns
    /// the versions re-wrapped. A version changed meanwhile by another
    /// rewrap is left to it (reported as not re-wrapped).
    pub async fn rewrap_all(&self, tenant: &str, target: &Target) -> Result<Vec<u32>, KeyError> {
        let store = self.store(tenant)?;
        let keys = store.keys(tenant).await.map_err(|e| e.for_tenant(tenant))?;
        let mut done = Vec::with_capacity(keys.len());
        for row in keys {
            if row.kms == target.kms.name() && row.key_ref == target.key_ref {
                continue;
            }
            let old_kms = match self.kms(&row.kms) {
                Some(Ok(k)) => k,
                Some(Err(e)) => return Err(KeyError::kms(tenant, e)),
                None => {
                    return Err(KeyError::kms(
                        tenant,
                        KmsError::Config(format!(
                            "version {} was wrapped by kms `{}`, which is not configured",
                            row.version, row.kms
                        )),
                    ));
                }
            };
            let dek = old_kms.unwrap(&row.key_ref, &row.wrapped).await;
            self.log_kms_now(tenant, &old_kms, KmsOp::Unwrap, &row.key_ref, &dek)
                .await;
            let dek = dek.map_err(|e| KeyError::kms(tenant, e))?;
            let wrapped = target.kms.wrap(&target.key_ref, &dek).await;
            self.log_kms_now(tenant, &target.kms, KmsOp::Wrap, &target.key_ref, &wrapped)
                .await;
            let wrapped = wrapped.map_err(|e| KeyError::kms(tenant, e))?;
            let updated = store
                .rewrap(
                    tenant,
                    row.version,
                    &row.wrapped,
                    target.kms.name(),
                    &target.key_ref,
                    &wrapped,
                )
                .await
                .map_err(|e| e.for_tenant(tenant))?;
            if updated {
                done.push(row.version);
            }
        }
        self.evict_tenant(tenant);
        Ok(done)
    }
}
