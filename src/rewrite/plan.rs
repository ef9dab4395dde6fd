//! The statement planner of the write path and of lookups: pure, no I/O, no
//! crypto.
//!
//! For one SQL string (a simple query, possibly several statements, or the
//! text of an extended-protocol Parse) it decides exactly which literals and
//! which `$n` parameters must be encrypted with which protected column's key,
//! which values must equal the connection's tenant, and what text to add when
//! an INSERT omits the tenant column — or it refuses the statement (fail
//! closed: anything on a protected table that is not fully understood is
//! refused, never relayed). See docs/SQL-SUPPORT.md for the user-facing list.
//!
//! How: the text is tokenized once with sqlparser's PostgreSQL tokenizer,
//! split into statements at `;`, and each statement is parsed from its own
//! tokens, so every literal keeps its exact source location. The planner
//! walks the AST with its own scope model (aliases, CTEs, derived tables,
//! correlated subqueries) and never re-prints SQL: the session splices the
//! ciphertext into the original text ([`StatementPlan::splice`]), so comments
//! and formatting survive byte for byte.

mod append;
mod copy;
mod ddl;
mod expr;
mod from;
mod insert;
mod literal;
mod policy;
mod query;
mod refusal;
mod scope;
mod source;
mod splice;
mod update;

#[cfg(test)]
mod append_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::ops::{ControlFlow, Range};

use sqlparser::ast::{Statement, Value, Visit, Visitor};

pub use copy::{CopyDirection, CopyFormat, CopyPlan, CopyTenant};
pub use policy::{AuditRules, ColumnMode, PolicyTable, PolicyView};
pub use refusal::Refusal;
pub use splice::{splice_all, splice_with};

use scope::Cx;
use source::Source;

/// A protected column: index into [`PolicyView::tables`] and into that
/// table's `columns`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef {
    pub table: usize,
    pub column: usize,
}

/// Why a literal is encrypted: the session may need to know whether the value
/// is stored (one ciphertext) or compared (during a key rotation a lookup has
/// to match every live DEK version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotRole {
    /// Written to the column (INSERT value, UPDATE SET, ON CONFLICT SET).
    Store,
    /// Compared with the column (`=`, `<>`, `IN`, `IS [NOT] DISTINCT FROM`).
    Compare,
}

/// One literal to replace by its ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct LiteralSlot {
    /// Byte range of the whole literal token in the original SQL text
    /// (quotes, `E`/`U&`/`N` prefix, dollar tags and a leading sign included).
    pub range: Range<usize>,
    /// The value as the database would see it: quotes removed, escapes
    /// decoded (`'..'`, `E'..'`, `$$..$$`, `U&'..'`, `N'..'`), numbers as
    /// written.
    pub value: String,
    /// Whose key encrypts it.
    pub column: ColumnRef,
    pub role: SlotRole,
}

/// Plaintext of protected columns never goes to Debug output or logs.
impl fmt::Debug for LiteralSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LiteralSlot")
            .field("range", &self.range)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("column", &self.column)
            .field("role", &self.role)
            .finish()
    }
}

/// A compared value of a [`Comparison`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareValue {
    /// A literal slot: `slot` as in [`LiteralSlot::range`]; `range` is
    /// what the rewrite replaces (the literal, with a `::text`-style cast
    /// around it when there is one).
    Literal {
        slot: Range<usize>,
        range: Range<usize>,
    },
    /// Parameter `$n` (1-based) and the byte range the rewrite replaces (its
    /// token, with a `::text`-style cast when there is one).
    Param { n: usize, range: Range<usize> },
}

/// A deterministic column compared with encrypted values (`=`, `<>`,
/// `IN`, `NOT IN`, `IS [NOT] DISTINCT FROM`), every value a bare literal or
/// `$n`. During a key rotation the session rewrites the column into a
/// predicate over every live DEK version's ciphertext of the values and
/// each value into `true` (docs/KEYS.md, "Lookups during a rotation").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub column: ColumnRef,
    /// Byte range of the column name (possibly qualified).
    pub column_range: Range<usize>,
    /// `IS [NOT] DISTINCT FROM`: a NULL value must match a NULL column.
    pub null_safe: bool,
    /// The encrypted values (literal slots or parameters).
    pub values: Vec<CompareValue>,
}

/// A value that must equal the connection's tenant (else `42501`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantCheck {
    /// A literal written to `table`'s tenant column; check it with
    /// [`StatementPlan::check_tenant_literals`].
    Literal { table: usize, value: String },
    /// Parameter `$param` (1-based) is written to `table`'s tenant column;
    /// check its bound value at Bind.
    Param { table: usize, param: usize },
}

/// Text the splice adds because an INSERT (or COPY column list) omits the
/// tenant column: `, <column>` before the column list's `)`, and
/// `, '<tenant>'` before each VALUES row's `)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantFill {
    pub table: usize,
    /// The tenant column, already quoted as an SQL identifier when needed.
    pub column: String,
    /// Byte offset of the column list's closing parenthesis.
    pub column_at: usize,
    /// Byte offsets of each VALUES row's closing parenthesis (empty for COPY,
    /// where the session appends the tenant to every data row).
    pub rows_at: Vec<usize>,
}

/// The plan of one statement.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StatementPlan {
    /// Byte range of the statement in the SQL text (without the `;`).
    pub range: Range<usize>,
    /// Literals to replace, in source order.
    pub literals: Vec<LiteralSlot>,
    /// `$n` parameters (1-based `n`; bound value index `n - 1`) to encrypt at
    /// Bind with this column's key; one entry per `n`, sorted.
    pub params: Vec<(usize, ColumnRef)>,
    /// Values that must equal the connection's tenant.
    pub tenant_checks: Vec<TenantCheck>,
    /// Tenant column to add to an INSERT (or COPY) that omits it.
    pub tenant_fill: Option<TenantFill>,
    /// `COPY` of a protected table or of a query over one: what the session
    /// must do with the data stream.
    pub copy: Option<CopyPlan>,
    /// True if the statement touches a protected table at all; false means
    /// "relay untouched".
    pub touches: bool,
    /// Comparisons whose values can match several DEK versions.
    pub comparisons: Vec<Comparison>,
    /// Parameters (1-based) bound as the list of their ciphertexts under
    /// every live version (their comparison is in `comparisons`).
    pub compare_params: Vec<usize>,
    /// A compared value that is not a bare literal or `$n` (a cast, a
    /// parenthesized value): it is encrypted under the active version only,
    /// so the statement is refused while the tenant has several live
    /// versions rather than miss rows.
    pub rigid_compare: bool,
}

impl StatementPlan {
    /// True when the statement text needs no change (nothing to encrypt in
    /// the text, nothing to add).
    pub fn text_unchanged(&self) -> bool {
        self.literals.is_empty() && self.tenant_fill.is_none()
    }

    /// Check the literal tenant values against the connection's tenant.
    pub fn check_tenant_literals(&self, tenant: &str, policy: &PolicyView) -> Result<(), Refusal> {
        for check in &self.tenant_checks {
            if let TenantCheck::Literal { table, value } = check
                && value != tenant
            {
                return Err(policy.other_tenant(*table));
            }
        }
        Ok(())
    }
}

/// How the connection interprets string literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanOptions {
    /// The session's `standard_conforming_strings` (PostgreSQL reports it in
    /// ParameterStatus). When off, a backslash inside `'...'` escapes the next
    /// character, which sqlparser's tokenizer does not model: such statements
    /// are refused rather than mis-split.
    pub standard_conforming_strings: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        Self {
            standard_conforming_strings: true,
        }
    }
}

/// Plan every statement of `sql` (with `standard_conforming_strings = on`).
/// If any statement is refused, the whole string is refused.
pub fn plan(sql: &str, policy: &PolicyView) -> Result<Vec<StatementPlan>, Refusal> {
    plan_with_options(sql, policy, PlanOptions::default())
}

/// [`plan`] with explicit session options.
pub fn plan_with_options(
    sql: &str,
    policy: &PolicyView,
    options: PlanOptions,
) -> Result<Vec<StatementPlan>, Refusal> {
    let Ok(src) = Source::new(sql) else {
        // Not even tokenizable (e.g. an unterminated literal): PostgreSQL
        // will reject it too, but only if it is not something we misread.
        return match policy.mentions(sql) {
            Some(tables) => Err(escalate(Refusal::cannot_parse(tables), sql, policy)),
            None => Ok(vec![StatementPlan {
                range: 0..sql.len(),
                ..StatementPlan::default()
            }]),
        };
    };
    if !options.standard_conforming_strings
        && src.has_backslash_in_plain_literal()
        && let Some(tables) = policy.mentions(sql)
    {
        return Err(Refusal::table(
            tables,
            "standard_conforming_strings is off and a '...' literal contains a backslash: \
             byokpg cannot tell where that literal ends (use E'...' strings or turn \
             standard_conforming_strings on)",
        ));
    }
    src.statements()
        .into_iter()
        .map(|tokens| {
            let text = &src.sql[src.byte_range(tokens.clone())];
            plan_one(&src, tokens, policy).map_err(|r| escalate(r, text, policy))
        })
        .collect()
}

/// A statement byokpg does not understand is refused with `0A000`; when it
/// names an append-only table, the refusal is `42501` instead (SPEC §6:
/// what cannot be proven harmless to such a table is a forbidden write).
fn escalate(r: Refusal, text: &str, policy: &PolicyView) -> Refusal {
    if !r.unproven() {
        return r;
    }
    match policy.append_only_mentions(text) {
        Some(tables) => Refusal::append_only_unproven(tables),
        None => r,
    }
}

/// Parse and plan the statement made of `tokens` (indexes into `src`).
fn plan_one(
    src: &Source<'_>,
    tokens: Range<usize>,
    policy: &PolicyView,
) -> Result<StatementPlan, Refusal> {
    let range = src.byte_range(tokens.clone());
    let text = &src.sql[range.clone()];
    let untouched = StatementPlan {
        range: range.clone(),
        ..StatementPlan::default()
    };
    let Some(statement) = src.parse(tokens) else {
        return match policy.mentions(text) {
            Some(tables) => Err(Refusal::cannot_parse(tables)),
            None => Ok(untouched),
        };
    };
    if text.to_ascii_lowercase().contains("u&\"") {
        // Unicode-escaped identifiers can spell a protected name invisibly.
        if let Some(tables) = policy.mentions(text) {
            return Err(Refusal::table(tables, refusal::reason::UNICODE_IDENT));
        }
    }
    let mut cx = Cx::new(policy, src, text, range);
    cx.statement(&statement)?;
    cx.check_params(&statement)?;
    cx.demote_shared_params();
    Ok(cx.finish())
}

impl Cx<'_> {
    /// A parameter can be encrypted for one column only, and only if it is
    /// used nowhere else (the database would otherwise see ciphertext where
    /// it expects the plain value, or the other way round).
    fn check_params(&self, statement: &Statement) -> Result<(), Refusal> {
        if self.param_uses.is_empty() {
            return Ok(());
        }
        let mut counter = PlaceholderCounter::default();
        let _ = statement.visit(&mut counter);
        for (&n, &(column, uses)) in &self.param_uses {
            let total = counter.counts.get(&n).copied().unwrap_or(0);
            if total != uses {
                return Err(self.refuse_col(
                    column,
                    &format!(
                        "parameter ${n} is used both for this encrypted column and elsewhere \
                         in the statement; a parameter can be encrypted for one use only \
                         (bind the value twice)"
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl Cx<'_> {
    /// A parameter both stored and compared (`SET email = $1 WHERE email =
    /// $1`) is bound as one ciphertext, so its comparisons match the active
    /// version only: the statement becomes single-version (refused while a
    /// rotation is under way) instead of expanded.
    fn demote_shared_params(&mut self) {
        let shared: Vec<usize> = self
            .compare_params
            .intersection(&self.single_params)
            .copied()
            .collect();
        if shared.is_empty() {
            return;
        }
        self.plan.rigid_compare = true;
        let (dropped, kept): (Vec<Comparison>, Vec<Comparison>) =
            std::mem::take(&mut self.plan.comparisons)
                .into_iter()
                .partition(|c| {
                    c.values
                        .iter()
                        .any(|v| matches!(v, CompareValue::Param { n, .. } if shared.contains(n)))
                });
        self.plan.comparisons = kept;
        // Every parameter of a comparison that is no longer expanded is
        // bound as one ciphertext too.
        for c in &dropped {
            for v in &c.values {
                if let CompareValue::Param { n, .. } = v {
                    self.compare_params.remove(n);
                }
            }
        }
    }
}

/// Counts every `$n` placeholder of a statement.
#[derive(Default)]
struct PlaceholderCounter {
    counts: HashMap<usize, usize>,
}

impl Visitor for PlaceholderCounter {
    type Break = ();

    fn pre_visit_value(
        &mut self,
        value: &sqlparser::ast::ValueWithSpan,
    ) -> ControlFlow<Self::Break> {
        if let Value::Placeholder(p) = &value.value
            && let Some(n) = literal::placeholder_index(p)
        {
            *self.counts.entry(n).or_insert(0) += 1;
        }
        ControlFlow::Continue(())
    }
}
