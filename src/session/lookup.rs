//! Lookups that match every live DEK version (SPEC §5; docs/KEYS.md,
//! "Lookups during a rotation").
//!
//! A deterministic ciphertext depends on the DEK version, so while a tenant
//! has several live versions `email = 'x'` must match the ciphertext of
//! `'x'` under each of them. For a planned [`Comparison`] the column name is
//! replaced by a predicate over arrays of ciphertexts and each compared
//! value by `true`:
//!
//! ```text
//! email = 'x'            →  (email = ANY(ARRAY['byok1:v2..', 'byok1:v1..'])) = true
//! email <> $1            →  (email = ANY(string_to_array($1::text, ','))) <> true
//! email IN ('a', $2)     →  (email = ANY(ARRAY[..a..]) OR email = ANY(..$2..)) IN (true, true)
//! email IS NOT DISTINCT FROM $1
//!                        →  (CASE WHEN A IS NULL THEN email IS NULL
//!                              ELSE coalesce(email = ANY(A), false) END) IS NOT DISTINCT FROM true
//! ```
//!
//! The operator, the NULL semantics and the text around the comparison stay
//! as written (`x = true` keeps `x`'s NULL; PostgreSQL folds `x = true` to
//! `x`, so an index on the column is still used). Literals are rewritten so
//! only while several versions are live. Compared parameters are always
//! rewritten, because a prepared statement outlives rotations: at each Bind
//! the value is replaced by the list of its ciphertexts under the versions
//! live at that moment (text: comma-separated — ciphertext has no comma;
//! bytea: a count byte, then the envelopes, all of one length).
use std::collections::HashSet;
use std::ops::Range;

use super::write::WriteCtx;
use crate::rewrite::plan::{CompareValue, Comparison, StatementPlan};
use crate::rewrite::{CryptoFailure, RowHook};

/// The text edits of one statement string's lookups.
pub struct Lookups {
    pub edits: Vec<(Range<usize>, String)>,
    /// Starts of literal slots replaced by `true`.
    covered: HashSet<usize>,
}

impl Lookups {
    /// Edits for every comparison that needs them: those with a parameter,
    /// and, when `multi` (several live versions), those with literals.
    pub fn build(
        w: &WriteCtx,
        hook: &mut (dyn RowHook + '_),
        plans: &[StatementPlan],
        sql: &str,
        multi: bool,
    ) -> Result<Self, CryptoFailure> {
        let mut me = Self {
            edits: Vec::new(),
            covered: HashSet::new(),
        };
        for plan in plans {
            for cmp in &plan.comparisons {
                let has_param = cmp
                    .values
                    .iter()
                    .any(|v| matches!(v, CompareValue::Param { .. }));
                if has_param || multi {
                    me.rewrite(w, hook, plan, cmp, sql)?;
                }
            }
        }
        Ok(me)
    }

    pub fn covers(&self, literal_start: usize) -> bool {
        self.covered.contains(&literal_start)
    }

    fn rewrite(
        &mut self,
        w: &WriteCtx,
        hook: &mut (dyn RowHook + '_),
        plan: &StatementPlan,
        cmp: &Comparison,
        sql: &str,
    ) -> Result<(), CryptoFailure> {
        let col = w
            .catalog_column(cmp.column)
            .map_err(CryptoFailure::Refuse)?;
        let name = &sql[cmp.column_range.clone()];
        let mut arrays = Vec::with_capacity(cmp.values.len());
        for v in &cmp.values {
            match v {
                CompareValue::Literal { slot, range } => {
                    let Some(slot) = plan.literals.iter().find(|l| l.range == *slot) else {
                        continue;
                    };
                    let items = hook.encrypt_compare_literal(col, &slot.value)?;
                    arrays.push(format!("ARRAY[{}]", items.join(", ")));
                    self.covered.insert(slot.range.start);
                    self.edits.push((range.clone(), "true".to_owned()));
                }
                CompareValue::Param { n, range } => {
                    arrays.push(param_array(*n, w.is_bytea(col)));
                    self.edits.push((range.clone(), "true".to_owned()));
                }
            }
        }
        let predicate = if cmp.null_safe {
            let a = arrays.first().map_or("NULL", String::as_str);
            format!(
                "(CASE WHEN ({a}) IS NULL THEN {name} IS NULL ELSE coalesce({name} = ANY({a}), false) END)"
            )
        } else {
            let any: Vec<String> = arrays
                .iter()
                .map(|a| format!("{name} = ANY({a})"))
                .collect();
            format!("({})", any.join(" OR "))
        };
        self.edits.push((cmp.column_range.clone(), predicate));
        Ok(())
    }
}

/// The SQL array of a compared parameter's ciphertexts (NULL when the
/// parameter is NULL).
fn param_array(n: usize, bytea: bool) -> String {
    if !bytea {
        return format!("string_to_array(${n}::text, ',')");
    }
    let p = format!("${n}::bytea");
    let len = format!("((length({p}) - 1) / get_byte({p}, 0))");
    format!(
        "(CASE WHEN {p} IS NULL THEN NULL ELSE ARRAY(SELECT substring({p} FROM 2 + g * {len} FOR {len}) \
         FROM generate_series(0, get_byte({p}, 0) - 1) AS g ORDER BY g) END)"
    )
}
