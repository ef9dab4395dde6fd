//! `byokpg keys verify --tenant T` (and `check --kms`): the "test
//! connection" of the seeds. Asks the tenant's KMS to describe the KEK
//! (where the provider can), generates a data key and unwraps it again,
//! unwraps the tenant's stored active DEK if it has one, and signs + verifies
//! with the `signing_key` if one is set. Every call goes to the tenant's KMS
//! log like any other. The verdict is one line a key owner can act on.
use std::fmt::Write as _;

use super::KeyManager;
use super::log::KmsLogEntry;
use super::store::RegionStore;
use crate::kms::{Kms, KmsError, KmsOp};

/// What `keys verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub tenant: String,
    /// One line per step: `ok` or `FAILED` and what happened.
    pub steps: Vec<String>,
    /// The first failure, if any.
    pub failure: Option<KmsError>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.failure.is_none()
    }

    /// The report as printed: the steps, then `verdict: ...`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for s in &self.steps {
            let _ = writeln!(out, "  {s}");
        }
        match &self.failure {
            None => {
                let _ = write!(
                    out,
                    "verdict: OK: tenant {} can wrap and unwrap its data keys",
                    self.tenant
                );
            }
            Some(e) => {
                let _ = write!(
                    out,
                    "verdict: FAILED: tenant {}: {e} [{}]; {}",
                    self.tenant,
                    e.code(),
                    e.hint()
                );
            }
        }
        out
    }

    fn step<T>(&mut self, what: &str, r: &Result<T, KmsError>, detail: impl FnOnce(&T) -> String) {
        match r {
            Ok(v) => self.steps.push(format!("ok      {what}: {}", detail(v))),
            Err(e) => {
                self.steps.push(format!("FAILED  {what}: {e}"));
                if self.failure.is_none() {
                    self.failure = Some(e.clone());
                }
            }
        }
    }
}

/// Calls the KMS and writes the call to the tenant's KMS log (awaited: the
/// CLI exits right after).
struct Logged<'a> {
    tenant: &'a str,
    kms: &'a Kms,
    store: Option<&'a RegionStore>,
}

impl Logged<'_> {
    async fn log<T>(&self, op: KmsOp, key_ref: &str, r: &Result<T, KmsError>) {
        let Some(store) = self.store else { return };
        let entry = KmsLogEntry::of(self.tenant, self.kms.name(), op, key_ref, r);
        if let Err(e) = store.append_kms_log(&entry).await {
            tracing::warn!(target: "byokpg::keys", tenant = self.tenant, error = %e, "byokpg: could not write the KMS log");
        }
    }
}

impl KeyManager {
    /// Runs the checks for `tenant`. `Err` only when the tenant or its KMS
    /// section cannot be resolved at all (reported as a failed verdict by
    /// the caller).
    pub async fn verify_tenant(&self, tenant: &str) -> Result<VerifyReport, super::KeyError> {
        let (kms, key_ref) = self.tenant_kms(tenant)?;
        let store = self.store(tenant).ok();
        let l = Logged {
            tenant,
            kms: &kms,
            store: store.as_deref(),
        };
        let mut report = VerifyReport {
            tenant: tenant.to_owned(),
            steps: vec![format!(
                "tenant {tenant}: kms {} ({}), key {key_ref}",
                kms.name(),
                kms.provider()
            )],
            failure: None,
        };
        let described = kms.describe(&key_ref).await;
        l.log(KmsOp::Describe, &key_ref, &described).await;
        report.step("describe", &described, |i| i.description.clone());
        if let Ok(info) = &described
            && !info.enabled
        {
            let e = KmsError::KeyDisabled(format!("{key_ref}: {}", info.description));
            report.step::<()>("key state", &Err(e), |()| String::new());
        }
        round_trip(&l, &key_ref, &mut report).await;
        self.stored_key(&l, &mut report).await;
        if let Ok(Some((signer, signing_key))) = self.signing_key(tenant) {
            let sl = Logged { kms: &signer, ..l };
            sign_check(&sl, &signing_key, &mut report).await;
        }
        Ok(report)
    }

    /// Unwraps the tenant's stored active DEK, if it has one: the key that
    /// protects its data, which a fresh round trip does not prove.
    async fn stored_key(&self, l: &Logged<'_>, report: &mut VerifyReport) {
        let Some(store) = l.store else { return };
        match store.active_key(l.tenant).await {
            Ok(None) => report
                .steps
                .push("ok      stored DEK: none yet (created on first use)".to_owned()),
            Ok(Some(row)) => {
                let kms = match self.kms(&row.kms) {
                    Some(Ok(k)) => k,
                    Some(Err(e)) => {
                        report.step::<()>("stored DEK", &Err(e), |()| String::new());
                        return;
                    }
                    None => {
                        let e = KmsError::Config(format!("kms `{}` is not configured", row.kms));
                        report.step::<()>("stored DEK", &Err(e), |()| String::new());
                        return;
                    }
                };
                let r = kms.unwrap(&row.key_ref, &row.wrapped).await;
                Logged { kms: &kms, ..*l }
                    .log(KmsOp::Unwrap, &row.key_ref, &r)
                    .await;
                report.step(
                    &format!("unwrap of stored DEK version {}", row.version),
                    &r,
                    |_| format!("under {}", row.key_ref),
                );
            }
            Err(e) => report.steps.push(format!("skipped stored DEK: {e}")),
        }
    }
}

async fn round_trip(l: &Logged<'_>, key_ref: &str, report: &mut VerifyReport) {
    let fresh = l.kms.generate_data_key(key_ref).await;
    l.log(KmsOp::Generate, key_ref, &fresh).await;
    report.step("generate data key", &fresh, |k| {
        format!("{} bytes wrapped", k.wrapped.len())
    });
    let Ok(fresh) = fresh else { return };
    let back = l.kms.unwrap(key_ref, &fresh.wrapped).await;
    l.log(KmsOp::Unwrap, key_ref, &back).await;
    let back = back.and_then(|d| {
        if d.expose_secret() == fresh.plaintext.expose_secret() {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(
                "the KMS unwrapped a different key than it generated".to_owned(),
            ))
        }
    });
    report.step("unwrap", &back, |()| {
        "the same 256-bit key came back".to_owned()
    });
}

async fn sign_check(l: &Logged<'_>, signing_key: &str, report: &mut VerifyReport) {
    const MSG: &[u8] = b"byokpg keys verify";
    let sig = l.kms.sign(signing_key, MSG).await;
    l.log(KmsOp::Sign, signing_key, &sig).await;
    report.step("sign (signing_key)", &sig, |s| s.algorithm.clone());
    let Ok(sig) = sig else { return };
    let ok = l.kms.verify(signing_key, MSG, &sig).await.and_then(|ok| {
        if ok {
            Ok(())
        } else {
            Err(KmsError::AccessDenied(
                "the signature does not verify".to_owned(),
            ))
        }
    });
    report.step("verify signature", &ok, |()| "valid".to_owned());
}
