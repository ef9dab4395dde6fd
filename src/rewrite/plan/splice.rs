//! Rebuilding the SQL text: each planned literal replaced by its ciphertext
//! literal and the tenant column added where an INSERT omits it — everything
//! else, comments and whitespace included, kept byte for byte.

use std::ops::Range;

use super::{LiteralSlot, StatementPlan};

/// One text change: replace `range` (empty = insert) with the text.
enum Edit<'p> {
    Literal(&'p LiteralSlot),
    Insert(usize, String),
    Replace(Range<usize>, String),
}

impl Edit<'_> {
    fn range(&self) -> Range<usize> {
        match self {
            Self::Literal(s) => s.range.clone(),
            Self::Insert(at, _) => *at..*at,
            Self::Replace(r, _) => r.clone(),
        }
    }
}

impl StatementPlan {
    /// Rebuild `sql` with each literal replaced by `replacement(slot)` (an
    /// already quoted SQL literal) and with the tenant fill inserted.
    pub fn splice(
        &self,
        sql: &str,
        replacement: impl FnMut(&LiteralSlot) -> String,
        tenant: &str,
    ) -> String {
        splice_all(std::slice::from_ref(self), sql, replacement, tenant)
    }
}

/// [`StatementPlan::splice`] for all statements of a multi-statement string
/// at once.
pub fn splice_all(
    plans: &[StatementPlan],
    sql: &str,
    replacement: impl FnMut(&LiteralSlot) -> String,
    tenant: &str,
) -> String {
    splice_with(plans, sql, replacement, Vec::new(), tenant)
}

/// [`splice_all`] plus `extra` edits (range → text); a literal slot inside
/// an extra edit's range is left to it.
pub fn splice_with(
    plans: &[StatementPlan],
    sql: &str,
    mut replacement: impl FnMut(&LiteralSlot) -> String,
    extra: Vec<(Range<usize>, String)>,
    tenant: &str,
) -> String {
    let mut edits: Vec<Edit<'_>> = Vec::new();
    for plan in plans {
        edits.extend(
            plan.literals
                .iter()
                // A lookup edit replaces the literal (and a cast around it).
                .filter(|l| {
                    !extra
                        .iter()
                        .any(|(r, _)| r.start <= l.range.start && l.range.end <= r.end)
                })
                .map(Edit::Literal),
        );
        if let Some(fill) = &plan.tenant_fill {
            edits.push(Edit::Insert(fill.column_at, format!(", {}", fill.column)));
            let value = quote_literal(tenant);
            edits.extend(
                fill.rows_at
                    .iter()
                    .map(|&at| Edit::Insert(at, format!(", {value}"))),
            );
        }
    }
    edits.extend(extra.into_iter().map(|(r, t)| Edit::Replace(r, t)));
    // Stable sort: at one offset, a literal ending there comes first.
    edits.sort_by_key(|e| (e.range().start, e.range().end));
    let mut out = String::with_capacity(sql.len() + edits.len() * 64);
    let mut cursor = 0;
    for edit in &edits {
        let r = edit.range();
        out.push_str(&sql[cursor..r.start]);
        match edit {
            Edit::Literal(slot) => out.push_str(&replacement(slot)),
            Edit::Insert(_, text) | Edit::Replace(_, text) => out.push_str(text),
        }
        cursor = r.end;
    }
    out.push_str(&sql[cursor..]);
    out
}

/// An SQL string literal that reads the same whatever
/// standard_conforming_strings is.
pub fn quote_literal(s: &str) -> String {
    if s.contains('\\') {
        format!("E'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}
