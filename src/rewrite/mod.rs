//! Deciding what a statement touches and what to do about it.
//!
//! `classify` is the cheap prefilter every statement goes through; only
//! statements it flags reach `plan`, which is where parsing and rewriting
//! live. A plan is attached to a prepared statement once, at Parse time.

pub mod classify;
pub mod complexity;
pub mod plan;

pub use classify::Classifier;

use crate::protocol::PgError;

/// What the session does with a statement the classifier flagged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Refuse with this error; nothing of the statement reaches the database.
    Refuse(PgError),
    /// Encrypt these bound parameters at each Bind.
    Params(std::sync::Arc<ParamPlan>),
    /// A prepared COPY on a protected table: each Execute streams through a
    /// fresh rewriter.
    Copy(std::sync::Arc<CopyPlanned>),
}

/// A COPY plan with its columns resolved to the region catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlanned {
    pub plan: plan::CopyPlan,
    pub columns: Vec<Option<usize>>,
}

/// The Bind-time part of a prepared statement's plan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParamPlan {
    /// (parameter index, 0-based; protected column in the region catalog).
    pub encrypt: Vec<(usize, usize)>,
    /// Parameters that must equal the connection's tenant (0-based), with
    /// the table for the message.
    pub tenant: Vec<(usize, String)>,
    /// Compared parameters (0-based; protected column): bound as their
    /// ciphertexts under every live DEK version (docs/KEYS.md).
    pub compare: Vec<(usize, usize)>,
    /// The statement compares a value that was encrypted under the active
    /// version only: refused at Bind while several versions are live.
    pub rigid: bool,
    /// Compared literals were encrypted at Parse under these versions: a
    /// Bind after a rotation that added a version must not run it.
    pub literal_versions: Option<Vec<u32>>,
}

/// Plan a statement that may touch the protected tables in `hits`.
///
/// This build does not encrypt yet, so the only safe answer for a statement
/// on a protected table is to refuse it (fail closed): relaying it would put
/// plaintext into, or return stored values out of, a protected column.
pub fn plan(hits: &[String]) -> Plan {
    let tables = hits.join(", ");
    Plan::Refuse(
        PgError::not_supported(format!(
            "byokpg: statement touches protected table(s) {tables}; column encryption is not enabled in this build, so byokpg refuses it rather than store or return unencrypted values"
        ))
        .with_hint("remove the table from the [[table]] policy to relay it unencrypted, or upgrade byokpg"),
    )
}

/// Protected columns by (table OID, attnum), as resolved from the catalog.
/// The RowDescription hook marks result columns found here. Empty means no
/// result column can be protected, and RowDescriptions are not even decoded.
#[derive(Debug, Default, Clone)]
pub struct ProtectedColumns {
    by_attr: std::collections::HashMap<(u32, i16), usize>,
}

impl ProtectedColumns {
    pub fn insert(&mut self, table_oid: u32, attnum: i16, column: usize) {
        self.by_attr.insert((table_oid, attnum), column);
    }

    pub fn get(&self, table_oid: u32, attnum: i16) -> Option<usize> {
        self.by_attr.get(&(table_oid, attnum)).copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_attr.is_empty()
    }
}

/// What a crypto operation needs before it can run: a key that is not in
/// the cache yet. The session fetches it (KMS call) and retries the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    ActiveKey,
    Key(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoFailure {
    Need(Need),
    /// Refuse with this error (XX001 for a value that fails to decrypt).
    Refuse(PgError),
}

/// The session's tenant keys as the relay uses them: decrypt marked result
/// columns, encrypt literals and bound parameters of protected columns.
/// Column numbers index the region catalog's protected columns.
pub trait RowHook: Send {
    /// Append the rewritten `DataRow` frame for `body` to `out`.
    fn rewrite_row(
        &mut self,
        marks: &crate::session::registry::RowMarks,
        binary: &[bool],
        body: &[u8],
        out: &mut bytes::BytesMut,
    ) -> Result<(), CryptoFailure>;

    /// A SQL literal holding the ciphertext of `value` for `column`.
    fn encrypt_literal(&mut self, column: usize, value: &str) -> Result<String, CryptoFailure>;

    /// The ciphertext of a bound parameter value, in the same wire format.
    fn encrypt_param(
        &mut self,
        column: usize,
        value: &[u8],
        binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure>;

    fn tenant(&self) -> &str;

    /// Ciphertext literals of `value` for a lookup on `column`, one per
    /// live DEK version, newest first.
    fn encrypt_compare_literal(
        &mut self,
        column: usize,
        value: &str,
    ) -> Result<Vec<String>, CryptoFailure> {
        Ok(vec![self.encrypt_literal(column, value)?])
    }

    /// A compared parameter's value as the list of its ciphertexts under
    /// every live version (text columns: comma-separated; bytea: a count
    /// byte, then the envelopes), in the value's wire format.
    fn encrypt_compare_param(
        &mut self,
        column: usize,
        value: &[u8],
        binary: bool,
    ) -> Result<Vec<u8>, CryptoFailure> {
        self.encrypt_param(column, value, binary)
    }

    /// The tenant's live DEK versions, newest (active) first.
    fn live_versions(&mut self) -> Result<Vec<u32>, CryptoFailure> {
        Ok(vec![1])
    }

    /// Plaintext (text form) of a stored value, for COPY TO STDOUT.
    fn decrypt_field(&mut self, column: usize, stored: &[u8]) -> Result<Vec<u8>, CryptoFailure>;
}
