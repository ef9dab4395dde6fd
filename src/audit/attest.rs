//! `byokpg audit attest`: sign each chain head of a tenant with the
//! tenant's `signing_key` through its KMS and store the attestation in
//! `byokpg.audit_attestations` of the tenant's region.

use tokio_postgres::{Client, SimpleQueryMessage};

use super::chain::attestation_message;
use super::sql::{TIME_FORMAT, quote_ident};
use super::{AuditError, Target};
use crate::config::{Config, TableConfig};
use crate::kms::Kms;

/// Attest the heads of `table` (or of every hash-chained table) for
/// `tenant`; one report line per table.
pub async fn attest(
    cfg: &Config,
    tenant: &str,
    table: Option<&str>,
) -> Result<Vec<String>, AuditError> {
    let tenant_cfg = super::tenant(cfg, tenant)?;
    let Some(key_ref) = tenant_cfg.signing_key.as_deref() else {
        return Err(AuditError::Config(format!(
            "tenant {tenant} has no signing_key; add signing_key = \"...\" to [tenants.{tenant}]"
        )));
    };
    let tables: Vec<&TableConfig> = match table {
        Some(name) => vec![super::chained_table(cfg, name)?],
        None => cfg.tables.iter().filter(|t| t.hash_chain).collect(),
    };
    if tables.is_empty() {
        return Err(AuditError::Config(
            "no table has hash_chain = true in the policy".to_owned(),
        ));
    }
    let kms = super::kms(cfg, &tenant_cfg.kms).await?;
    let client = super::connect(cfg, tenant_cfg).await?;
    let mut lines = Vec::with_capacity(tables.len());
    for table in tables {
        let t = Target {
            tenant,
            tenant_cfg,
            table,
        };
        lines.push(attest_one(&client, &kms, key_ref, &t).await?);
    }
    Ok(lines)
}

async fn attest_one(
    client: &Client,
    kms: &Kms,
    key_ref: &str,
    t: &Target<'_>,
) -> Result<String, AuditError> {
    let db = |e: tokio_postgres::Error| t.db_error(&e);
    let name = t.table.qualified();
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&t.relation()])
        .await
        .map_err(db)?
        .get(0);
    if !exists {
        return Ok(format!(
            "{name}: not found in region {}; skipped",
            t.tenant_cfg.region
        ));
    }
    let [seq, _, hash] = t.chain();
    let head = client
        .simple_query(&format!(
            "SELECT {s}::text, {h} FROM {rel} WHERE {f} AND {s} IS NOT NULL ORDER BY {s} DESC LIMIT 1",
            s = quote_ident(seq),
            h = quote_ident(hash),
            rel = t.relation(),
            f = t.tenant_filter(),
        ))
        .await
        .map_err(db)?;
    let head = head.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some((
            r.get(0).and_then(|s| s.parse::<i64>().ok()),
            r.get(1).map(str::to_owned),
        )),
        _ => None,
    });
    let Some((Some(chain_seq), Some(row_hash))) = head else {
        return Ok(format!(
            "{name}: no chained rows for tenant {} yet; nothing to attest",
            t.tenant
        ));
    };
    let time: String = client
        .query_one(
            &format!("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', {TIME_FORMAT})"),
            &[],
        )
        .await
        .map_err(db)?
        .get(0);
    let msg = attestation_message(&name, t.tenant, chain_seq, &row_hash, &time);
    let sig = kms.sign(key_ref, &msg).await.map_err(|e| AuditError::Kms {
        kms: kms.name().to_owned(),
        message: e.to_string(),
    })?;
    client
        .execute(
            "INSERT INTO byokpg.audit_attestations (table_name, tenant, chain_seq, row_hash, \
             attested_at, algorithm, signature, key_ref, kms) \
             VALUES ($1, $2, $3, $4, $5::text::timestamptz, $6, $7, $8, $9)",
            &[
                &name,
                &t.tenant,
                &chain_seq,
                &row_hash,
                &time,
                &sig.algorithm,
                &sig.bytes,
                &key_ref,
                &kms.name(),
            ],
        )
        .await
        .map_err(db)?;
    Ok(format!(
        "{name}: attested chain_seq {chain_seq} (row_hash {row_hash}) for tenant {} at {time} \
         with {} key {key_ref}",
        t.tenant, sig.algorithm
    ))
}
