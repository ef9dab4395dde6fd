//! `byokpg audit verify`: walk a tenant's chain from the stored rows, in
//! one REPEATABLE READ snapshot, under the canonical settings; then check
//! every attestation in the window (signature through the KMS, and that
//! the attested head is still in the chain). Needs no data key.

use std::collections::{HashMap, HashSet};
use std::fmt;

use tokio_postgres::{Client, SimpleQueryMessage};

use super::chain::{Broken, StoredRow, Walk, ZERO_HASH, attestation_message};
use super::sql::{CANONICAL_SETTINGS, HASHED_COLUMNS_SQL, TIME_FORMAT, quote_ident};
use super::{AuditError, Target};
use crate::config::Config;
use crate::kms::{Kms, Signature};

/// Rows fetched per round trip.
const BATCH: usize = 1000;

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub tenant: String,
    pub table: String,
    /// First chain_seq of the window (default 1).
    pub from: Option<i64>,
    /// Last chain_seq of the window (default: the head).
    pub to: Option<i64>,
}

/// The outcome: intact (`broken` is `None`) or the first broken row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rows: u64,
    pub attestations: u64,
    pub broken: Option<Broken>,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.broken {
            None => write!(
                f,
                "ok: {} rows, {} attestations",
                self.rows, self.attestations
            ),
            Some(b) => write!(f, "broken at chain_seq {}: {}", b.seq, b.reason),
        }
    }
}

/// One stored attestation.
struct Attestation {
    id: i64,
    seq: i64,
    row_hash: String,
    time: String,
    signature: Signature,
    key_ref: String,
    kms: String,
}

pub async fn verify(cfg: &Config, opts: &VerifyOptions) -> Result<Verdict, AuditError> {
    let t = Target {
        tenant: &opts.tenant,
        tenant_cfg: super::tenant(cfg, &opts.tenant)?,
        table: super::chained_table(cfg, &opts.table)?,
    };
    let client = super::connect(cfg, t.tenant_cfg).await?;
    let db = |e: tokio_postgres::Error| t.db_error(&e);
    client
        .batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; {CANONICAL_SETTINGS}"
        ))
        .await
        .map_err(db)?;
    let from = opts.from.unwrap_or(1).max(1);
    let attestations = attestations(&client, &t, from, opts.to).await?;
    let attested: HashSet<i64> = attestations.iter().map(|a| a.seq).collect();
    let mut heads = HashMap::new();
    let walked = walk(&client, &t, from, opts.to, &attested, &mut heads).await?;
    let mut broken = walked.1;
    if broken.is_none() {
        broken = check_attestations(cfg, &t, &attestations, &heads).await?;
    }
    client.batch_execute("COMMIT").await.map_err(db)?;
    Ok(Verdict {
        rows: walked.0,
        attestations: u64::try_from(attestations.len()).unwrap_or(u64::MAX),
        broken,
    })
}

/// Walk the window; returns the rows checked and the first break. Records
/// the row_hash of every attested chain_seq met in `heads`.
async fn walk(
    client: &Client,
    t: &Target<'_>,
    from: i64,
    to: Option<i64>,
    attested: &HashSet<i64>,
    heads: &mut HashMap<i64, String>,
) -> Result<(u64, Option<Broken>), AuditError> {
    let db = |e: tokio_postgres::Error| t.db_error(&e);
    let names = hashed_columns(client, t).await?;
    let anchor = match anchor(client, t, from).await? {
        Ok(h) => h,
        Err(b) => return Ok((0, Some(b))),
    };
    declare_cursor(client, t, &names, from, to).await?;
    let mut walk = Walk::new(names, from, anchor);
    loop {
        let batch = client
            .simple_query(&format!("FETCH {BATCH} FROM byokpg_verify"))
            .await
            .map_err(db)?;
        let mut n = 0;
        for msg in &batch {
            let SimpleQueryMessage::Row(r) = msg else {
                continue;
            };
            n += 1;
            let row = stored_row(r);
            if let Err(b) = walk.step(&row) {
                return Ok((walk.rows(), Some(b)));
            }
            if let (Some(s), Some(h)) = (row.seq, row.row_hash)
                && attested.contains(&s)
            {
                heads.insert(s, h);
            }
        }
        if n < BATCH {
            break;
        }
    }
    let short = to.is_some_and(|to| walk.expected() <= to);
    let broken = short.then(|| Broken {
        seq: walk.expected(),
        reason: format!(
            "row missing (the chain ends at chain_seq {})",
            walk.expected() - 1
        ),
    });
    Ok((walk.rows(), broken))
}

/// The hashed columns of the table, in order (docs/FORMAT.md §9).
async fn hashed_columns(client: &Client, t: &Target<'_>) -> Result<Vec<String>, AuditError> {
    let [seq, prev, hash] = t.chain();
    let names: Vec<String> = client
        .query(HASHED_COLUMNS_SQL, &[&t.relation(), &vec![seq, prev, hash]])
        .await
        .map_err(|e| t.db_error(&e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if names.is_empty() {
        return Err(AuditError::Config(format!(
            "table {} not found in region {}",
            t.table.qualified(),
            t.tenant_cfg.region
        )));
    }
    Ok(names)
}

/// The window's rows in chain order (rows without chain_seq last), with
/// the chain columns first.
async fn declare_cursor(
    client: &Client,
    t: &Target<'_>,
    names: &[String],
    from: i64,
    to: Option<i64>,
) -> Result<(), AuditError> {
    let [seq, prev, hash] = t.chain();
    let mut window = String::new();
    if opts_bound(from, to, &mut window, &quote_ident(seq)) {
        window.insert_str(0, " AND ");
    }
    let cols: Vec<String> = [seq, prev, hash]
        .iter()
        .map(|c| quote_ident(c))
        .chain(names.iter().map(|n| quote_ident(n)))
        .collect();
    client
        .batch_execute(&format!(
            "DECLARE byokpg_verify NO SCROLL CURSOR FOR SELECT {} FROM {} WHERE {}{window} \
             ORDER BY {} NULLS LAST",
            cols.join(", "),
            t.relation(),
            t.tenant_filter(),
            quote_ident(seq)
        ))
        .await
        .map_err(|e| t.db_error(&e))
}

/// `chain_seq >= from AND chain_seq <= to` as needed; true when written.
fn opts_bound(from: i64, to: Option<i64>, out: &mut String, seq: &str) -> bool {
    let mut parts = Vec::new();
    if from > 1 {
        parts.push(format!("{seq} >= {from}"));
    }
    if let Some(to) = to {
        parts.push(format!("{seq} <= {to}"));
    }
    out.push_str(&parts.join(" AND "));
    !parts.is_empty()
}

fn stored_row(r: &tokio_postgres::SimpleQueryRow) -> StoredRow {
    let text = |i: usize| r.get(i).map(str::to_owned);
    StoredRow {
        // A chain_seq that is not an integer cannot be a link of the chain.
        seq: r.get(0).map(|s| s.parse().unwrap_or(i64::MIN)),
        prev_hash: text(1),
        row_hash: text(2),
        values: (3..r.len()).map(text).collect(),
    }
}

/// The row_hash preceding the window: zeros at 1, else the stored row_hash
/// of chain_seq `from - 1` (`Err` when that row is missing).
async fn anchor(
    client: &Client,
    t: &Target<'_>,
    from: i64,
) -> Result<Result<String, Broken>, AuditError> {
    if from <= 1 {
        return Ok(Ok(ZERO_HASH.to_owned()));
    }
    let [seq, _, hash] = t.chain();
    let rows = client
        .simple_query(&format!(
            "SELECT {} FROM {} WHERE {} AND {} = {}",
            quote_ident(hash),
            t.relation(),
            t.tenant_filter(),
            quote_ident(seq),
            from - 1
        ))
        .await
        .map_err(|e| t.db_error(&e))?;
    let found = rows.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
        _ => None,
    });
    Ok(match found {
        Some(Some(h)) => Ok(h),
        _ => Err(Broken {
            seq: from - 1,
            reason: "row missing (the row before the window)".to_owned(),
        }),
    })
}

async fn attestations(
    client: &Client,
    t: &Target<'_>,
    from: i64,
    to: Option<i64>,
) -> Result<Vec<Attestation>, AuditError> {
    let rows = client
        .query(
            &format!(
                "SELECT id, chain_seq, row_hash, \
                 to_char(attested_at AT TIME ZONE 'UTC', {TIME_FORMAT}), algorithm, signature, \
                 key_ref, kms FROM byokpg.audit_attestations \
                 WHERE table_name = $1 AND tenant = $2 AND chain_seq >= $3 \
                 AND chain_seq <= coalesce($4, chain_seq) ORDER BY chain_seq, id"
            ),
            &[&t.table.qualified(), &t.tenant, &from, &to],
        )
        .await
        .map_err(|e| t.db_error(&e))?;
    Ok(rows
        .iter()
        .map(|r| Attestation {
            id: r.get(0),
            seq: r.get(1),
            row_hash: r.get(2),
            time: r.get(3),
            signature: Signature {
                algorithm: r.get(4),
                bytes: r.get(5),
            },
            key_ref: r.get(6),
            kms: r.get(7),
        })
        .collect())
}

/// Every attestation: a valid signature over its fields, and its head still
/// in the chain with the same row_hash. Returns the first (lowest) break.
async fn check_attestations(
    cfg: &Config,
    t: &Target<'_>,
    list: &[Attestation],
    heads: &HashMap<i64, String>,
) -> Result<Option<Broken>, AuditError> {
    let mut kmss: HashMap<&str, Kms> = HashMap::new();
    for a in list {
        let broken = |reason: String| Ok(Some(Broken { seq: a.seq, reason }));
        if !kmss.contains_key(a.kms.as_str()) {
            kmss.insert(&a.kms, super::kms(cfg, &a.kms).await?);
        }
        let kms = &kmss[a.kms.as_str()];
        let msg = attestation_message(&t.table.qualified(), t.tenant, a.seq, &a.row_hash, &a.time);
        let valid = kms
            .verify(&a.key_ref, &msg, &a.signature)
            .await
            .map_err(|e| AuditError::Kms {
                kms: a.kms.clone(),
                message: e.to_string(),
            })?;
        if !valid {
            return broken(format!(
                "attestation {} of {}: the signature does not verify (attestation altered or \
                 not made by key {})",
                a.id, a.time, a.key_ref
            ));
        }
        match heads.get(&a.seq) {
            None => {
                return broken(format!(
                    "attestation {} of {}: the attested row is no longer in the chain",
                    a.id, a.time
                ));
            }
            Some(h) if *h != a.row_hash => {
                return broken(format!(
                    "attestation {} of {}: the row's row_hash differs from the attested one \
                     (the chain was rewritten)",
                    a.id, a.time
                ));
            }
            Some(_) => {}
        }
    }
    Ok(None)
}
