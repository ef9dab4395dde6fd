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
    /// Tenant isolation, and changes to append-only tables → `42501`.
    Forbidden { table: String, reason: String },
    /// The database is not ready for the statement (a hash-chained table
    /// without its chain trigger) → `55000`.
    NotReady { table: String, reason: String },
}

impl Refusal {
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Self::NotSupported { .. } => "0A000",
            Self::Forbidden { .. } => "42501",
            Self::NotReady { .. } => "55000",
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
            Self::Forbidden { table, reason } | Self::NotReady { table, reason } => {
                format!("byokpg: protected table {table}: {reason}")
            }
        }
    }

    /// True for refusals that mean "byokpg did not understand this
    /// statement well enough" (unparseable, unsupported syntax or statement
    /// kind), as opposed to "this is impossible on ciphertext".
    pub fn unproven(&self) -> bool {
        match self {
            Self::NotSupported {
                column: None,
                reason: r,
                ..
            } => {
                r == CANNOT_PARSE
                    || r == reason::UNSUPPORTED_SYNTAX
                    || r == reason::UNICODE_IDENT
                    || r.ends_with(UNSUPPORTED_KIND)
            }
            Self::NotSupported { reason: r, .. } => r == reason::UNSUPPORTED_SYNTAX,
            Self::Forbidden { .. } | Self::NotReady { .. } => false,
        }
    }

    /// The `42501` an unproven statement naming the append-only `tables`
    /// gets instead (fail closed: what byokpg cannot read, it cannot prove
    /// harmless to an append-only table).
    pub(super) fn append_only_unproven(tables: String) -> Self {
        Self::Forbidden {
            table: tables,
            reason: "append-only table: byokpg cannot prove this statement leaves the table's \
                     rows unchanged, so it refuses it (only SELECT, INSERT and COPY FROM \
                     are allowed)"
                .to_owned(),
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
        Self::table(tables, CANNOT_PARSE)
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for Refusal {}

const CANNOT_PARSE: &str = "byokpg cannot parse this statement on a protected table, so it \
    refuses it rather than risk relaying unencrypted values (rewrite it in plainer SQL)";

/// How the reason for an unsupported statement kind ends.
pub(super) const UNSUPPORTED_KIND: &str =
    "statements on a protected table are not supported by byokpg";

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
    pub const UNICODE_IDENT: &str =
        "unicode-escaped identifiers (U&\"...\") are not supported on protected tables";
    pub const UNSUPPORTED_SYNTAX: &str =
        "this syntax is not supported by byokpg on a protected table";
    pub const TENANT_VALUE: &str = "the tenant column must be written as a literal or a \
        parameter equal to the connection's tenant (NULL, DEFAULT and expressions are \
        refused)";
    pub const TENANT_UNCHECKABLE: &str = "byokpg cannot check the tenant of rows produced \
        by a query; insert them with VALUES";
}
