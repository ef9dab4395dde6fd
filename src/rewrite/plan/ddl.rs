//! The statement dispatcher, and the statements that are not queries or
//! writes: DDL that would detach or weaken a protected column, EXPLAIN,
//! cursors, SQL-level PREPARE, and everything else.

use sqlparser::ast::{
    AlterColumnOperation, AlterTable, AlterTableOperation, ColumnDef, ColumnOption, CreateTable,
    Expr, ObjectType, SetExpr, Statement, UtilityOption, Value,
};

use super::policy::{fold, fold_name};
use super::refusal::reason;
use super::scope::Cx;
use super::{ColumnRef, Refusal};

impl Cx<'_> {
    /// Plan one parsed statement.
    pub fn statement(&mut self, s: &Statement) -> Result<(), Refusal> {
        match s {
            Statement::Query(q) => self.query(q).map(drop),
            Statement::Insert(i) => self.insert(i).map(drop),
            Statement::Update(u) => self.update(u).map(drop),
            Statement::Delete(d) => self.delete(d).map(drop),
            Statement::Copy {
                source,
                to,
                target,
                options,
                legacy_options,
                ..
            } => self.copy(source, *to, target, options, legacy_options),
            Statement::AlterTable(a) => {
                self.guard_change(&a.name, "ALTER TABLE")?;
                self.alter_table(a)
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    self.guard_change(&target.name, "TRUNCATE")?;
                }
                Ok(())
            }
            Statement::Drop {
                object_type: ObjectType::Table,
                names,
                ..
            } => {
                for name in names {
                    self.guard_change(name, "DROP TABLE")?;
                }
                Ok(())
            }
            Statement::CreateTrigger(c) => self.guard_change(&c.table_name, "CREATE TRIGGER"),
            Statement::DropTrigger(d) => match &d.table_name {
                Some(name) => self.guard_change(name, "DROP TRIGGER"),
                None => Ok(()),
            },
            Statement::CreateTable(c) => self.create_table(c),
            Statement::Explain {
                analyze,
                statement,
                options,
                ..
            } => self.explain(*analyze, options.as_deref(), statement),
            Statement::Declare { stmts } => {
                for d in stmts {
                    if let Some(q) = &d.for_query {
                        self.query(q)?;
                    }
                }
                Ok(())
            }
            Statement::Prepare { statement, .. } => {
                self.statement(statement)?;
                if self.plan.touches {
                    return self.unsupported(
                        "SQL-level PREPARE / EXECUTE on a protected table: the EXECUTE \
                         arguments would reach the database unencrypted (use the protocol's \
                         prepared statements, as drivers do)",
                    );
                }
                Ok(())
            }
            s if is_passthrough(s) => Ok(()),
            _ => self.unsupported(""),
        }
    }

    /// Refuse a statement kind byokpg does not plan, if it names a protected
    /// table; statements that do not are relayed untouched.
    /// (`touches`: the statement is known to touch one; refuse regardless.)
    fn unsupported(&self, why: &str) -> Result<(), Refusal> {
        let tables = match self.policy.mentions(self.text) {
            Some(tables) => tables,
            None if self.plan.touches => "(protected table)".to_owned(),
            None => return Ok(()),
        };
        let why = if why.is_empty() {
            format!(
                "{} {}",
                statement_kind(self.text),
                super::refusal::UNSUPPORTED_KIND
            )
        } else {
            why.to_owned()
        };
        Err(Refusal::table(tables, why))
    }

    fn explain(
        &mut self,
        analyze: bool,
        options: Option<&[UtilityOption]>,
        inner: &Statement,
    ) -> Result<(), Refusal> {
        let analyze = analyze
            || options
                .into_iter()
                .flatten()
                .any(|o| fold(&o.name) == "analyze" && o.arg.as_ref().is_none_or(option_enabled));
        self.statement(inner)?;
        if analyze && self.plan.touches && writes(inner) {
            return self.unsupported(
                "EXPLAIN ANALYZE of a write on a protected table (it would run the write)",
            );
        }
        Ok(())
    }

    fn alter_table(&mut self, a: &AlterTable) -> Result<(), Refusal> {
        let Some(parts) = fold_name(&a.name) else {
            return Ok(());
        };
        let Some(t) = self.policy.resolve_table(&parts)? else {
            return Ok(());
        };
        let table = self.policy.table(t);
        for op in &a.operations {
            match op {
                AlterTableOperation::AlterColumn { column_name, op } => {
                    if let Some(c) = self.policy.column(t, &fold(column_name)) {
                        match op {
                            AlterColumnOperation::SetDataType { .. } => {
                                return Err(self.refuse_col(c, reason::TYPE_CHANGE));
                            }
                            AlterColumnOperation::SetDefault { value } if !is_null(value) => {
                                return Err(self.refuse_col(c, reason::DEFAULT_VALUE));
                            }
                            AlterColumnOperation::AddGenerated { .. } => {
                                return Err(self.refuse_col(c, reason::DEFAULT_VALUE));
                            }
                            _ => {}
                        }
                    }
                }
                AlterTableOperation::AddColumn { column_def, .. } => {
                    self.check_column_def(t, column_def)?;
                }
                AlterTableOperation::RenameColumn {
                    old_column_name, ..
                } => {
                    let old = fold(old_column_name);
                    if let Some(c) = self.policy.column(t, &old) {
                        return Err(self.refuse_col(c, reason::RENAME_COLUMN));
                    }
                    if table.is_tenant_column(&old) {
                        return Err(self.refuse_table(t, reason::RENAME_COLUMN));
                    }
                }
                AlterTableOperation::RenameTable { .. } => {
                    return Err(self.refuse_table(t, reason::RENAME_TABLE));
                }
                AlterTableOperation::ChangeColumn { old_name: name, .. }
                | AlterTableOperation::ModifyColumn { col_name: name, .. } => {
                    if let Some(c) = self.policy.column(t, &fold(name)) {
                        return Err(self.refuse_col(c, reason::TYPE_CHANGE));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn create_table(&mut self, c: &CreateTable) -> Result<(), Refusal> {
        let target = match fold_name(&c.name) {
            Some(parts) => self.policy.resolve_table(&parts)?,
            None => None,
        };
        if let Some(q) = &c.query {
            if let Some(t) = target
                && self.policy.table(t).needs_column_mapping()
            {
                return Err(self.refuse_table(t, reason::INSERT_SELECT));
            }
            self.sink_query(q)?;
        }
        if let Some(t) = target {
            for col in &c.columns {
                self.check_column_def(t, col)?;
            }
        }
        Ok(())
    }

    /// A protected column must not get a default or generated value.
    fn check_column_def(&self, t: usize, def: &ColumnDef) -> Result<(), Refusal> {
        let Some(c) = self.policy.column(t, &fold(&def.name)) else {
            return Ok(());
        };
        for opt in &def.options {
            match &opt.option {
                ColumnOption::Default(x) if !is_null(x) => return Err(self.default_refusal(c)),
                ColumnOption::Generated { .. }
                | ColumnOption::Materialized(_)
                | ColumnOption::Alias(_)
                | ColumnOption::Ephemeral(Some(_))
                | ColumnOption::OnUpdate(_)
                | ColumnOption::Identity(_) => return Err(self.default_refusal(c)),
                _ => {}
            }
        }
        Ok(())
    }

    fn default_refusal(&self, c: ColumnRef) -> Refusal {
        self.refuse_col(c, reason::DEFAULT_VALUE)
    }
}

/// Statements that neither read nor write protected values: relayed as is.
/// (DROP / TRUNCATE of protected tables included: they destroy, not leak;
/// on append-only tables they are refused earlier, in `statement`.)
fn is_passthrough(s: &Statement) -> bool {
    matches!(
        s,
        Statement::Set(_)
            | Statement::ShowVariable { .. }
            | Statement::ShowVariables { .. }
            | Statement::ShowStatus { .. }
            | Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. }
            | Statement::Discard { .. }
            | Statement::Deallocate { .. }
            | Statement::LISTEN { .. }
            | Statement::UNLISTEN { .. }
            | Statement::NOTIFY { .. }
            | Statement::Reset(_)
            | Statement::Close { .. }
            | Statement::Fetch { .. }
            | Statement::Truncate(_)
            | Statement::Drop { .. }
            | Statement::CreateIndex(_)
            | Statement::Analyze(_)
            | Statement::Vacuum(_)
            | Statement::Comment { .. }
            | Statement::Grant(_)
            | Statement::Revoke(_)
            | Statement::Lock(_)
            | Statement::AlterIndex { .. }
            | Statement::CreateSequence { .. }
            | Statement::CreateSchema { .. }
            | Statement::CreateDatabase { .. }
            | Statement::CreateRole(_)
            | Statement::AlterRole { .. }
            | Statement::CreateExtension(_)
            | Statement::DropExtension(_)
            | Statement::CreateType { .. }
            | Statement::CreateDomain(_)
            | Statement::DropFunction(_)
            | Statement::DropProcedure { .. }
            | Statement::DropTrigger(_)
            | Statement::DropPolicy(_)
            | Statement::DropDomain(_)
            | Statement::CreateTrigger(_)
            | Statement::AlterSchema(_)
            | Statement::AlterType(_)
    )
}

/// Does `s` write (so that EXPLAIN ANALYZE would run a write)?
fn writes(s: &Statement) -> bool {
    match s {
        Statement::Query(q) => {
            let dml = |body: &SetExpr| {
                matches!(
                    body,
                    SetExpr::Insert(_)
                        | SetExpr::Update(_)
                        | SetExpr::Delete(_)
                        | SetExpr::Merge(_)
                )
            };
            dml(&q.body)
                || q.with
                    .as_ref()
                    .is_some_and(|w| w.cte_tables.iter().any(|c| dml(&c.query.body)))
        }
        _ => true,
    }
}

fn is_null(e: &Expr) -> bool {
    match e {
        Expr::Nested(x) | Expr::Cast { expr: x, .. } => is_null(x),
        Expr::Value(v) => v.value == Value::Null,
        _ => false,
    }
}

/// `EXPLAIN (ANALYZE false)`, `(ANALYZE off)`, `(ANALYZE 0)` turn it off.
fn option_enabled(arg: &Expr) -> bool {
    match arg {
        Expr::Value(v) => {
            !matches!(&v.value, Value::Boolean(false))
                && !matches!(&v.value, Value::Number(n, _) if n == "0")
                && !matches!(&v.value, Value::SingleQuotedString(s) if s.eq_ignore_ascii_case("off") || s.eq_ignore_ascii_case("false"))
        }
        Expr::Identifier(i) => {
            !i.value.eq_ignore_ascii_case("off") && !i.value.eq_ignore_ascii_case("false")
        }
        _ => true,
    }
}

/// "MERGE", "CREATE VIEW", ... for messages.
fn statement_kind(text: &str) -> String {
    let mut words = text
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_uppercase);
    let mut kind = words.next().unwrap_or_default();
    if matches!(kind.as_str(), "CREATE" | "ALTER" | "DROP") {
        // CREATE [OR REPLACE] [TEMP] [MATERIALIZED] VIEW ...
        for word in words {
            kind.push(' ');
            kind.push_str(&word);
            let modifier = matches!(
                word.as_str(),
                "OR" | "REPLACE"
                    | "TEMP"
                    | "TEMPORARY"
                    | "MATERIALIZED"
                    | "UNLOGGED"
                    | "RECURSIVE"
                    | "UNIQUE"
                    | "GLOBAL"
                    | "LOCAL"
                    | "CONSTRAINT"
            );
            if !modifier {
                break;
            }
        }
    }
    kind
}
