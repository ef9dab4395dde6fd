//! UPDATE, DELETE, and the SET assignments shared with ON CONFLICT DO UPDATE.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, TableAlias, TableFactor, TableWithJoins,
    Update, UpdateTableFromKind,
};

use super::insert::Target;
use super::policy::{fold, fold_name};
use super::refusal::reason;
use super::scope::{Cx, Outputs, Rel, RelKind, undo_only};
use super::{Refusal, SlotRole};

impl Cx<'_> {
    /// Plan an UPDATE; returns its RETURNING outputs.
    pub fn update(&mut self, u: &Update) -> Result<Outputs, Refusal> {
        let foreign = u.or.is_some()
            || !u.order_by.is_empty()
            || u.limit.is_some()
            || u.output.is_some()
            || !u.optimizer_hints.is_empty()
            || !u.table.joins.is_empty();
        self.guard_dml(&u.table, "UPDATE")?;
        self.in_frame(|cx| {
            let target = cx.dml_target(&u.table)?;
            if foreign {
                if let RelKind::Table(Some(t)) = target.kind {
                    return Err(cx.refuse_table(t, reason::UNSUPPORTED_SYNTAX));
                }
                cx.conservative(u)?;
            }
            let table = match target.kind {
                RelKind::Table(t) => t,
                _ => None,
            };
            let target_name = target.name.clone();
            cx.frame().rels.push(target);
            if let Some(
                UpdateTableFromKind::BeforeSet(from) | UpdateTableFromKind::AfterSet(from),
            ) = &u.from
            {
                for twj in from {
                    cx.add_from_item(twj)?;
                }
            }
            for a in &u.assignments {
                cx.assignment(table, &target_name, a)?;
            }
            if let Some(w) = &u.selection {
                cx.expr(w)?;
            }
            match &u.returning {
                Some(items) => cx.projection(items),
                None => Ok(Outputs::default()),
            }
        })
    }

    /// Plan a DELETE; returns its RETURNING outputs.
    pub fn delete(&mut self, d: &Delete) -> Result<Outputs, Refusal> {
        let foreign = !d.tables.is_empty()
            || d.output.is_some()
            || !d.order_by.is_empty()
            || d.limit.is_some()
            || !d.optimizer_hints.is_empty();
        let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &d.from;
        if let Some(first) = from.first() {
            self.guard_dml(first, "DELETE")?;
        }
        for name in &d.tables {
            self.guard_change(name, "DELETE")?;
        }
        self.in_frame(|cx| {
            let mut from = from.iter();
            if let Some(first) = from.next() {
                let target = cx.dml_target(first)?;
                if foreign || !first.joins.is_empty() {
                    if let RelKind::Table(Some(t)) = target.kind {
                        return Err(cx.refuse_table(t, reason::UNSUPPORTED_SYNTAX));
                    }
                    cx.conservative(d)?;
                }
                cx.frame().rels.push(target);
            }
            for twj in from.chain(d.using.iter().flatten()) {
                cx.add_from_item(twj)?;
            }
            if let Some(w) = &d.selection {
                cx.expr(w)?;
            }
            match &d.returning {
                Some(items) => cx.projection(items),
                None => Ok(Outputs::default()),
            }
        })
    }

    /// The table an UPDATE or DELETE writes to (never a CTE).
    fn dml_target(&mut self, twj: &TableWithJoins) -> Result<Rel, Refusal> {
        let TableFactor::Table { name, alias, .. } = &twj.relation else {
            self.conservative(&twj.relation)?;
            return Ok(Rel {
                name: String::new(),
                schema: None,
                kind: RelKind::Opaque,
            });
        };
        let (name, alias) = undo_only(name, alias.as_ref());
        let name = &name;
        let table = self.protected_table(name)?;
        let rel_name = alias.as_ref().map_or_else(
            || {
                fold_name(name)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default()
            },
            |a: &TableAlias| fold(&a.name),
        );
        Ok(Rel {
            name: rel_name,
            schema: table.map(|t| self.policy.table(t).schema.clone()),
            kind: RelKind::Table(table),
        })
    }

    /// `SET col = value` on `table` (protected or not); `target_name` is how
    /// the statement calls the target (for `target.col` references).
    pub fn assignment(
        &mut self,
        table: Option<usize>,
        target_name: &str,
        a: &Assignment,
    ) -> Result<(), Refusal> {
        match &a.target {
            AssignmentTarget::ColumnName(col) => {
                let target = match table {
                    Some(t) => self.column_target(t, col)?,
                    None => Target::Plain,
                };
                self.assigned_value(table, target_name, target, &a.value)
            }
            AssignmentTarget::Tuple(cols) => {
                let mut targets = Vec::with_capacity(cols.len());
                for col in cols {
                    targets.push(match table {
                        Some(t) => self.column_target(t, col)?,
                        None => Target::Plain,
                    });
                }
                match &a.value {
                    Expr::Tuple(values) if values.len() == targets.len() => {
                        for (target, value) in targets.into_iter().zip(values) {
                            self.assigned_value(table, target_name, target, value)?;
                        }
                        Ok(())
                    }
                    value => {
                        for target in targets {
                            match (target, table) {
                                (Target::Protected(c), _) => {
                                    return Err(self.refuse_col(c, reason::STORE_EXPR));
                                }
                                (Target::Tenant, Some(t)) => {
                                    return Err(self.forbid(t, reason::TENANT_VALUE));
                                }
                                _ => {}
                            }
                        }
                        self.operand(value, reason::COPY_PLAIN)
                    }
                }
            }
        }
    }

    fn assigned_value(
        &mut self,
        table: Option<usize>,
        target_name: &str,
        target: Target,
        value: &Expr,
    ) -> Result<(), Refusal> {
        match (target, table) {
            (Target::Protected(c), _) => {
                let form = self
                    .value_form(value)
                    .map_err(|why| self.refuse_col(c, why))?;
                match form {
                    Some(form) => self.encrypt(c, form, SlotRole::Store),
                    // Copying the column onto itself (`email = excluded.email`)
                    // keeps the ciphertext valid: same table, column, tenant.
                    None if self.column_of(value)? == Some(c) => Ok(()),
                    None => Err(self.refuse_col(c, reason::STORE_EXPR)),
                }
            }
            (Target::Tenant, Some(t)) => {
                if self.is_own_tenant_column(t, target_name, value) {
                    Ok(())
                } else {
                    self.tenant_value(t, value)
                }
            }
            _ => self.operand(value, reason::COPY_PLAIN),
        }
    }

    /// `tenant_id`, `excluded.tenant_id` or `<target>.tenant_id`: the row's
    /// own (already checked) tenant.
    fn is_own_tenant_column(&self, t: usize, target_name: &str, value: &Expr) -> bool {
        let table = self.policy.table(t);
        match value {
            Expr::Nested(inner) => self.is_own_tenant_column(t, target_name, inner),
            Expr::Identifier(id) => table.is_tenant_column(&fold(id)),
            Expr::CompoundIdentifier(ids) => match ids.as_slice() {
                [q, col] => {
                    let q = fold(q);
                    (q == "excluded" || q == target_name) && table.is_tenant_column(&fold(col))
                }
                _ => false,
            },
            _ => false,
        }
    }
}
