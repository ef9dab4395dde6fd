//! The hash chain's encoding (docs/FORMAT.md "Hash chain") and the walk
//! `audit verify` makes over stored rows. Pure: no I/O.

use sha2::{Digest as _, Sha256};

/// `prev_hash` of the first row of a chain.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Domain separation of attestation messages from anything else the key
/// might sign.
const ATTEST_TAG: &[u8] = b"byokpg attestation v1\n";

fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Column values are bounded by PostgreSQL's 1 GB field limit.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The canonical encoding of a row's hashed columns, in attnum order: per
/// non-NULL column `u32be(len(name)) name u32be(len(value)) value` (the
/// value's text form, UTF-8). NULL columns are left out, so a NULL differs
/// from an empty string and a column added later (NULL in older rows)
/// leaves older rows' hashes intact.
pub fn encode_row<'a>(columns: impl IntoIterator<Item = (&'a str, Option<&'a str>)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in columns {
        if let Some(v) = value {
            put_field(&mut out, name.as_bytes());
            put_field(&mut out, v.as_bytes());
        }
    }
    out
}

/// `row_hash`: lowercase hex SHA-256 of the 64 hex characters of
/// `prev_hash` followed by the row's encoding.
pub fn row_hash(prev_hash: &str, encoded_row: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(encoded_row);
    hex::encode(h.finalize())
}

/// The bytes an attestation signs: a tag, then table, tenant, chain_seq
/// (decimal), row_hash and time (`YYYY-MM-DDTHH:MM:SS.ffffffZ`), each
/// length-prefixed like a column value.
pub fn attestation_message(
    table: &str,
    tenant: &str,
    chain_seq: i64,
    row_hash: &str,
    time: &str,
) -> Vec<u8> {
    let mut out = ATTEST_TAG.to_vec();
    for field in [table, tenant, &chain_seq.to_string(), row_hash, time] {
        put_field(&mut out, field.as_bytes());
    }
    out
}

/// One stored row as `audit verify` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// `None`: the row has no chain_seq (inserted without the trigger).
    pub seq: Option<i64>,
    pub prev_hash: Option<String>,
    pub row_hash: Option<String>,
    /// The hashed columns' values, in the order of [`Walk::new`]'s names.
    pub values: Vec<Option<String>>,
}

/// Where the chain breaks, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// The walk along one chain in chain_seq order.
#[derive(Debug)]
pub struct Walk {
    names: Vec<String>,
    expected: i64,
    last_hash: String,
    rows: u64,
}

impl Walk {
    /// A walk starting at chain_seq `from`, whose predecessor's row_hash is
    /// `anchor` (`ZERO_HASH` when `from` is 1).
    pub fn new(names: Vec<String>, from: i64, anchor: String) -> Self {
        Self {
            names,
            expected: from,
            last_hash: anchor,
            rows: 0,
        }
    }

    /// Rows checked so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The chain_seq the next row must have.
    pub fn expected(&self) -> i64 {
        self.expected
    }

    /// Check the next stored row (rows come in chain_seq order, rows without
    /// one last).
    pub fn step(&mut self, row: &StoredRow) -> Result<(), Broken> {
        let n = self.expected;
        let broken = |reason: String| Err(Broken { seq: n, reason });
        let Some(seq) = row.seq else {
            return broken(
                "a row of this chain has no chain_seq (inserted while the chain trigger was \
                 missing or disabled)"
                    .to_owned(),
            );
        };
        if seq > n {
            return broken(format!(
                "row missing (the next stored row has chain_seq {seq})"
            ));
        }
        if seq < n {
            return broken(format!(
                "row duplicated or reordered (chain_seq {seq} appears again)"
            ));
        }
        let (Some(prev), Some(stored)) = (&row.prev_hash, &row.row_hash) else {
            return broken("prev_hash or row_hash is NULL".to_owned());
        };
        let encoded = encode_row(
            self.names
                .iter()
                .map(String::as_str)
                .zip(row.values.iter().map(Option::as_deref)),
        );
        if row_hash(prev, &encoded) != *stored {
            return broken("row changed: its stored values do not match its row_hash".to_owned());
        }
        if *prev != self.last_hash {
            return broken(format!(
                "row reordered or a row before it missing: its prev_hash is not the row_hash \
                 of chain_seq {}",
                n - 1
            ));
        }
        self.last_hash.clone_from(stored);
        self.expected += 1;
        self.rows += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
