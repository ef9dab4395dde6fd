//! INSERT: VALUES rows (literals and parameters encrypted per target
//! column), the tenant column filled or checked, ON CONFLICT and RETURNING.

use sqlparser::ast::{
    ConflictTarget, Expr, Insert, ObjectName, OnConflictAction, OnInsert, Parens, Query, SetExpr,
    TableObject,
};
use sqlparser::tokenizer::Token;

use super::literal::ValueForm;
use super::policy::{ColumnMode, fold, fold_name, quote_ident};
use super::refusal::reason;
use super::scope::{Cx, Outputs, Rel, RelKind};
use super::{ColumnRef, Refusal, SlotRole, TenantCheck, TenantFill};

/// Where one value of an INSERT row goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Protected(ColumnRef),
    Tenant,
    Plain,
}

impl Cx<'_> {
    /// Plan an INSERT; returns its RETURNING outputs.
    pub fn insert(&mut self, ins: &Insert) -> Result<Outputs, Refusal> {
        let TableObject::TableName(name) = &ins.table else {
            self.conservative(ins)?;
            return Ok(Outputs::default());
        };
        let table = self.protected_table(name)?;
        if let Some(t) = table {
            self.guard_insert(ins, t)?;
        }
        if has_foreign_syntax(ins) {
            if let Some(t) = table {
                return Err(self.refuse_table(t, reason::UNSUPPORTED_SYNTAX));
            }
            self.conservative(ins)?;
        }
        let target = Rel {
            name: ins.table_alias.as_ref().map_or_else(
                || {
                    fold_name(name)
                        .and_then(|p| p.last().cloned())
                        .unwrap_or_default()
                },
                |a| fold(&a.alias),
            ),
            schema: table.map(|t| self.policy.table(t).schema.clone()),
            kind: RelKind::Table(table),
        };
        match (table, ins.source.as_deref()) {
            (None, Some(q)) => self.sink_query(q)?,
            (None, None) => {}
            (Some(t), source) => self.insert_protected(ins, t, source)?,
        }
        self.on_conflict(ins, table, &target)?;
        match &ins.returning {
            Some(items) => self.in_frame(|cx| {
                cx.frame().rels.push(target);
                cx.projection(items)
            }),
            None => Ok(Outputs::default()),
        }
    }

    /// A query whose rows are stored, not returned: it must not produce a
    /// protected column.
    pub fn sink_query(&mut self, q: &Query) -> Result<(), Refusal> {
        let out = self.query(q)?;
        match out.first_protected() {
            Some(c) => Err(self.refuse_col(c, reason::COPY_PLAIN)),
            None => Ok(()),
        }
    }

    fn insert_protected(
        &mut self,
        ins: &Insert,
        t: usize,
        source: Option<&Query>,
    ) -> Result<(), Refusal> {
        let needs_mapping = self.policy.table(t).needs_column_mapping();
        let Some(q) = source else {
            return if needs_mapping {
                Err(self.refuse_table(
                    t,
                    "INSERT ... DEFAULT VALUES: the encrypted and tenant columns would get \
                     their database defaults unencrypted or unchecked; list the columns",
                ))
            } else {
                Ok(())
            };
        };
        let targets = self.insert_targets(ins, t)?;
        let values = match q.body.as_ref() {
            SetExpr::Values(v)
                if q.order_by.is_none() && q.limit_clause.is_none() && q.fetch.is_none() =>
            {
                v
            }
            _ => return self.insert_select(t, q, targets.as_deref()),
        };
        let Some(targets) = targets else {
            return Err(self.refuse_table(t, reason::NO_COLUMN_LIST));
        };
        self.with_ctes(q, |cx| {
            for row in &values.rows {
                cx.insert_row(t, &targets, &row.content)?;
            }
            Ok(())
        })?;
        self.tenant_fill(ins, t, &targets, &values.rows)
    }

    /// The target of each value position; `None` when the table's column
    /// order is unknown and no column list is given.
    fn insert_targets(&self, ins: &Insert, t: usize) -> Result<Option<Vec<Target>>, Refusal> {
        let table = self.policy.table(t);
        if ins.columns.is_empty() && !table.needs_column_mapping() {
            return Ok(Some(Vec::new()));
        }
        if ins.columns.is_empty() {
            return Ok(table
                .all_columns
                .as_ref()
                .map(|all| all.iter().map(|n| self.target_of(t, n)).collect()));
        }
        let mut targets = Vec::with_capacity(ins.columns.len());
        for column in &ins.columns {
            targets.push(self.column_target(t, column)?);
        }
        Ok(Some(targets))
    }

    /// An assignment target name: `col`, or `col.field` / `col[1]` which
    /// would write part of a value (refused on protected columns).
    pub fn column_target(&self, t: usize, column: &ObjectName) -> Result<Target, Refusal> {
        let parts = fold_name(column).unwrap_or_default();
        match parts.as_slice() {
            [name] => Ok(self.target_of(t, name)),
            [first, ..] => match self.target_of(t, first) {
                Target::Protected(c) => Err(self.refuse_col(c, reason::FUNCTION)),
                Target::Tenant => Err(self.forbid(t, reason::TENANT_VALUE)),
                Target::Plain => Ok(Target::Plain),
            },
            [] => Ok(Target::Plain),
        }
    }

    pub fn target_of(&self, t: usize, name: &str) -> Target {
        if let Some(c) = self.policy.column(t, name) {
            Target::Protected(c)
        } else if self.policy.table(t).is_tenant_column(name) {
            Target::Tenant
        } else {
            Target::Plain
        }
    }

    fn insert_row(&mut self, t: usize, targets: &[Target], row: &[Expr]) -> Result<(), Refusal> {
        for (i, x) in row.iter().enumerate() {
            match targets.get(i).copied().unwrap_or(Target::Plain) {
                Target::Protected(c) => self.store(c, x)?,
                Target::Tenant => self.tenant_value(t, x)?,
                Target::Plain => self.operand(x, reason::COPY_PLAIN)?,
            }
        }
        Ok(())
    }

    /// A value written to protected column `c`.
    pub fn store(&mut self, c: ColumnRef, x: &Expr) -> Result<(), Refusal> {
        match self.value_form(x).map_err(|why| self.refuse_col(c, why))? {
            Some(form) => self.encrypt(c, form, SlotRole::Store),
            None => Err(self.refuse_col(c, reason::STORE_EXPR)),
        }
    }

    /// A value written to the tenant column of table `t`.
    pub fn tenant_value(&mut self, t: usize, x: &Expr) -> Result<(), Refusal> {
        let check = match self.value_form(x) {
            Ok(Some(ValueForm::Literal { value, .. })) => TenantCheck::Literal { table: t, value },
            Ok(Some(ValueForm::Param(param))) => TenantCheck::Param { table: t, param },
            _ => return Err(self.forbid(t, reason::TENANT_VALUE)),
        };
        self.plan.tenant_checks.push(check);
        Ok(())
    }

    /// INSERT ... SELECT (or any non-VALUES source) into a protected table.
    fn insert_select(
        &mut self,
        t: usize,
        q: &Query,
        targets: Option<&[Target]>,
    ) -> Result<(), Refusal> {
        let Some(targets) = targets else {
            return if self.policy.table(t).needs_column_mapping() {
                Err(self.refuse_table(t, reason::NO_COLUMN_LIST))
            } else {
                self.sink_query(q)
            };
        };
        if let Some(Target::Protected(c)) =
            targets.iter().find(|x| matches!(x, Target::Protected(_)))
        {
            return Err(self.refuse_col(*c, reason::INSERT_SELECT));
        }
        if self.policy.table(t).tenant_column.is_some() {
            return Err(self.refuse_table(t, reason::TENANT_UNCHECKABLE));
        }
        self.sink_query(q)
    }

    /// Run `f` with the CTEs of `q` registered.
    pub fn with_ctes(
        &mut self,
        q: &Query,
        f: impl FnOnce(&mut Self) -> Result<(), Refusal>,
    ) -> Result<(), Refusal> {
        self.ctes.push(Vec::new());
        let out = self.register_ctes(q).and_then(|()| f(self));
        self.ctes.pop();
        out
    }

    /// Add the tenant column to an INSERT that omits it.
    fn tenant_fill(
        &mut self,
        ins: &Insert,
        t: usize,
        targets: &[Target],
        rows: &[Parens<Vec<Expr>>],
    ) -> Result<(), Refusal> {
        let Some(tenant) = self.policy.table(t).tenant_column.clone() else {
            return Ok(());
        };
        if targets.contains(&Target::Tenant)
            && rows
                .iter()
                .all(|r| targets.iter().position(|x| *x == Target::Tenant) < Some(r.content.len()))
        {
            return Ok(());
        }
        if ins.columns.is_empty() {
            return Err(self.forbid(
                t,
                "a row omits the tenant column; list the columns so byokpg can fill it",
            ));
        }
        if self.plan.tenant_fill.is_some() {
            return Err(self.refuse_table(
                t,
                "two INSERTs in one statement omit the tenant column; list it in each",
            ));
        }
        let misplaced = || self.refuse_table(t, reason::UNSUPPORTED_SYNTAX);
        let last = ins
            .columns
            .last()
            .and_then(|c| c.0.last())
            .and_then(|p| p.as_ident())
            .ok_or_else(misplaced)?;
        let column_at = self
            .closing_paren_after(last.span.start)
            .ok_or_else(misplaced)?;
        let mut rows_at = Vec::with_capacity(rows.len());
        for row in rows {
            let i = self
                .src
                .token_at(row.closing_token.0.span.start)
                .filter(|&i| self.src.tokens[i].token == Token::RParen)
                .ok_or_else(misplaced)?;
            rows_at.push(self.src.bytes[i].start);
        }
        self.plan.tenant_fill = Some(TenantFill {
            table: t,
            column: quote_ident(&tenant),
            column_at,
            rows_at,
        });
        Ok(())
    }

    /// Byte offset of the `)` that follows the token starting at `start`.
    pub fn closing_paren_after(&self, start: sqlparser::tokenizer::Location) -> Option<usize> {
        let i = self.src.token_at(start)?;
        let next = self.src.next_significant(i)?;
        (self.src.tokens[next].token == Token::RParen).then(|| self.src.bytes[next].start)
    }

    fn on_conflict(
        &mut self,
        ins: &Insert,
        table: Option<usize>,
        target: &Rel,
    ) -> Result<(), Refusal> {
        let oc = match &ins.on {
            Some(OnInsert::OnConflict(oc)) => oc,
            Some(other) => return self.conservative(other),
            None => return Ok(()),
        };
        if let (Some(t), Some(ConflictTarget::Columns(cols))) = (table, &oc.conflict_target) {
            for c in cols {
                if let Some(col) = self.policy.column(t, &fold(c))
                    && self.policy.mode(col) == ColumnMode::Randomized
                {
                    return Err(self.refuse_col(col, reason::ON_CONFLICT_RANDOMIZED));
                }
            }
        }
        let OnConflictAction::DoUpdate(du) = &oc.action else {
            return Ok(());
        };
        self.in_frame(|cx| {
            cx.frame().rels.push(target.clone());
            cx.frame().rels.push(Rel {
                name: "excluded".to_owned(),
                schema: None,
                kind: RelKind::Table(table),
            });
            for a in &du.assignments {
                cx.assignment(table, &target.name, a)?;
            }
            du.selection.as_ref().map_or(Ok(()), |w| cx.expr(w))
        })
    }
}

/// Syntax of other dialects PostgreSQL does not have.
fn has_foreign_syntax(ins: &Insert) -> bool {
    ins.or.is_some()
        || ins.ignore
        || ins.overwrite
        || !ins.assignments.is_empty()
        || ins.partitioned.is_some()
        || !ins.after_columns.is_empty()
        || ins.has_table_keyword
        || ins.output.is_some()
        || ins.replace_into
        || ins.priority.is_some()
        || ins.insert_alias.is_some()
        || ins.settings.is_some()
        || ins.format_clause.is_some()
        || ins.multi_table_insert_type.is_some()
        || !ins.multi_table_into_clauses.is_empty()
        || !ins.multi_table_when_clauses.is_empty()
        || ins.multi_table_else_clause.is_some()
        || !ins.optimizer_hints.is_empty()
}
