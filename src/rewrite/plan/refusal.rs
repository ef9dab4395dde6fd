//! Why a statement is refused, and the reasons users read.

use std::fmt;

/// A statement the planner will not let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Impossible on ciphertext, or not understood well enough → `0A000`.
    NotSupported {
        table: String,
        column: Option<String>,
        reason: String,
    },
    /// Tenant isolation → `42501`.
    Forbidden { table: String, reason: String },
}

impl Refusal {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::NotSupported { .. } => "0A000",
            Self::Forbidden { .. } => "42501",
        }
    }

    /// `byokpg: ...` naming the table, the column (when one is at fault) and
    /// the reason.
    pub fn message(&self) -> String {
        match self {
            Self::NotSupported {
                table,
                column: Some(column),
                reason,
            } => format!("byokpg: encrypted column {column} of protected table {table}: {reason}"),
            Self::NotSupported {
                table,
                column: None,
                reason,
            } => format!("byokpg: protected table {table}: {reason}"),
            Self::Forbidden { table, reason } => {
                format!("byokpg: protected table {table}: {reason}")
            }
        }
    }

    /// A table-level `0A000`.
    pub(super) fn table(table: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::NotSupported {
            table: table.into(),
            column: None,
            reason: reason.into(),
        }
    }

    pub(super) fn cannot_parse(tables: String) -> Self {
        Self::table(
            tables,
            "byokpg cannot parse this statement on a protected table, so it refuses it rather \
             than risk relaying unencrypted values (rewrite it in plainer SQL)",
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Refusal {}

/// Reasons, worded for the DBA reading the error.
pub(super) mod reason {
    pub const ORDERING: &str = "ordering is impossible on ciphertext";
    pub const PATTERN: &str =
        "pattern matching (LIKE, ILIKE, SIMILAR TO, ~) is impossible on ciphertext";
    pub const RANGE: &str = "range comparison (<, >, <=, >=, BETWEEN) is impossible on ciphertext";
    pub const FUNCTION: &str = "functions of an encrypted column are impossible on ciphertext \
        (functions, operators, casts and aggregates would only see ciphertext)";
    pub const EQ_RANDOMIZED: &str = "equality on a randomized column is impossible (equal values \
        have different ciphertexts; make the column deterministic to allow lookups)";
    /// Completed with the other column's name.
    pub const DIFFERENT_KEYS: &str = "different columns are encrypted under different keys, so it cannot be compared \
         with";
    pub const COMPARE_EXPR: &str = "compared with an expression: byokpg can only encrypt \
        literals and parameters compared with an encrypted column";
    pub const COMPARE_PLAIN: &str = "compared with an unprotected column, which holds plaintext";
    pub const STORE_EXPR: &str = "only literals, parameters, NULL and DEFAULT can be written \
        to an encrypted column (byokpg cannot encrypt the result of functions, expressions \
        or subqueries)";
    pub const INSERT_SELECT: &str = "INSERT ... SELECT into an encrypted column (byokpg \
        encrypts only literals and parameters; insert the values with VALUES)";
    pub const COPY_PLAIN: &str = "copying an encrypted value into an unprotected column or \
        table would store ciphertext where plaintext is expected";
    pub const SUBQUERY_VALUE: &str = "a subquery returning an encrypted column can only be \
        compared with the same column";
    pub const SET_OPERATION: &str = "UNION / INTERSECT / EXCEPT over an encrypted column \
        (duplicates would be judged on ciphertext and the result could not be decrypted)";
    pub const WHOLE_ROW: &str = "whole-row reference to a relation with encrypted columns \
        (the encrypted values inside a row value cannot be decrypted); list the columns";
    pub const ANY_ARRAY: &str = "= ANY / ALL (array) on an encrypted column cannot be \
        encrypted by byokpg; write col IN (...) instead";
    pub const IN_LIST_MEMBER: &str = "an encrypted column inside an IN list; write \
        col IN (...) instead";
    pub const ON_CONFLICT_RANDOMIZED: &str = "ON CONFLICT on a randomized column (equal \
        values have different ciphertexts, so no conflict is ever detected)";
    pub const NO_COLUMN_LIST: &str = "INSERT without a column list: byokpg does not know \
        the table's column order; list the columns";
    pub const POSITIONS_UNKNOWN: &str = "byokpg cannot tell which result position holds \
        this encrypted column (a * over a table whose column order is unknown); list the \
        columns";
    pub const NATURAL_JOIN: &str =
        "NATURAL JOIN with a protected table: the join columns cannot be checked; use ON";
    pub const TYPE_CHANGE: &str = "changing the type of an encrypted column (it must stay \
        text, varchar or bytea to hold ciphertext)";
    pub const DEFAULT_VALUE: &str = "a default or generated value for an encrypted column \
        would be stored unencrypted";
    pub const RENAME_COLUMN: &str = "renaming a protected column detaches it from the \
        byokpg policy; rename it in the database and in the policy together, outside \
        byokpg";
    pub const RENAME_TABLE: &str = "renaming a protected table detaches it from the byokpg \
        policy; rename it in the database and in the policy together, outside byokpg";
    pub const UNSUPPORTED_SYNTAX: &str =
        "this syntax is not supported by byokpg on a protected table";
    pub const TENANT_VALUE: &str = "the tenant column must be written as a literal or a \
        parameter equal to the connection's tenant (NULL, DEFAULT and expressions are \
        refused)";
    pub const TENANT_UNCHECKABLE: &str = "byokpg cannot check the tenant of rows produced \
        by a query; insert them with VALUES";
}
