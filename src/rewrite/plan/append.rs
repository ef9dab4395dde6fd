//! Append-only tables (SPEC §6): rows may be read and added, never changed.
//!
//! Refused with `42501`: UPDATE, DELETE, TRUNCATE, MERGE, DROP TABLE, ALTER
//! TABLE, CREATE / DROP TRIGGER on the table, `INSERT ... ON CONFLICT DO
//! UPDATE`, any write through a view over it, and — on hash-chained tables —
//! client-supplied values for the chain columns. Anything the planner does
//! not understand that names such a table is escalated to `42501` by
//! `plan::escalate`. Name matching is wider than for encryption: an
//! unqualified name matches the append-only table of that name in any
//! schema, because `SET search_path` can make it mean that one.

use sqlparser::ast::{
    Ident, Insert, ObjectName, OnConflictAction, OnInsert, SetExpr, TableFactor, TableWithJoins,
};

use super::Refusal;
use super::policy::{AuditRules, fold, fold_name};
use super::scope::{Cx, undo_only};

const VIEW: &str = "append-only table: writes through a view over it are not allowed; \
    insert into the table itself";
const NO_COLUMN_LIST: &str = "hash-chained table: a row without a column list would supply \
    the chain columns, which byokpg fills; list the other columns";

impl Cx<'_> {
    /// `what` (UPDATE, DELETE, ...) on the relation `name`: refused when the
    /// name may denote an append-only table.
    pub fn guard_change(&mut self, name: &ObjectName, what: &str) -> Result<(), Refusal> {
        let Some(parts) = fold_name(name) else {
            return Ok(());
        };
        match self.policy.append_only_named(&parts) {
            Some(t) => {
                self.plan.touches = true;
                Err(self.forbid(
                    t,
                    &format!("append-only table: {what} is not allowed (rows can only be added)"),
                ))
            }
            None => Ok(()),
        }
    }

    /// The target of an UPDATE or DELETE.
    pub fn guard_dml(&mut self, twj: &TableWithJoins, what: &str) -> Result<(), Refusal> {
        if let TableFactor::Table { name, alias, .. } = &twj.relation {
            let (name, _) = undo_only(name, alias.as_ref());
            self.guard_change(&name, what)?;
        }
        Ok(())
    }

    /// An INSERT into policy table `t`.
    pub fn guard_insert(&self, ins: &Insert, t: usize) -> Result<(), Refusal> {
        let Some(rules) = self.policy.audit(t) else {
            return Ok(());
        };
        if rules.view {
            return Err(self.forbid(t, VIEW));
        }
        if let Some(OnInsert::OnConflict(oc)) = &ins.on
            && matches!(oc.action, OnConflictAction::DoUpdate(_))
        {
            return Err(self.forbid(
                t,
                "append-only table: INSERT ... ON CONFLICT DO UPDATE would change a stored \
                 row (use ON CONFLICT DO NOTHING)",
            ));
        }
        self.chain_ready(t, &rules)?;
        if rules.chain.is_none() {
            return Ok(());
        }
        if !ins.columns.is_empty() {
            for c in &ins.columns {
                let first = fold_name(c).and_then(|p| p.into_iter().next());
                self.no_chain_column(t, &rules, first.as_deref())?;
            }
            return Ok(());
        }
        // No column list: values go by position; fine only while every row
        // stops before the first chain column.
        let Some(q) = ins.source.as_deref() else {
            return Ok(()); // DEFAULT VALUES
        };
        let first_chain = self
            .policy
            .table(t)
            .all_columns
            .as_ref()
            .and_then(|all| all.iter().position(|n| rules.chain_column(n).is_some()));
        let fits = match (q.body.as_ref(), first_chain) {
            (SetExpr::Values(v), Some(p)) => v.rows.iter().all(|r| r.content.len() <= p),
            _ => false,
        };
        if fits {
            Ok(())
        } else {
            Err(self.forbid(t, NO_COLUMN_LIST))
        }
    }

    /// `COPY t [(columns)] FROM STDIN` on policy table `t`.
    pub fn guard_copy_from(&self, t: usize, columns: &[Ident]) -> Result<(), Refusal> {
        let Some(rules) = self.policy.audit(t) else {
            return Ok(());
        };
        if rules.view {
            return Err(self.forbid(t, VIEW));
        }
        self.chain_ready(t, &rules)?;
        if rules.chain.is_none() {
            return Ok(());
        }
        if columns.is_empty() {
            return Err(self.forbid(t, NO_COLUMN_LIST));
        }
        for c in columns {
            self.no_chain_column(t, &rules, Some(&fold(c)))?;
        }
        Ok(())
    }

    /// Rows of a hash-chained table can only be added once its trigger is
    /// in place (fail closed: an unchained row would break the chain).
    fn chain_ready(&self, t: usize, rules: &AuditRules) -> Result<(), Refusal> {
        if rules.chain.is_some() && !rules.chain_ready {
            return Err(Refusal::NotReady {
                table: self.policy.table(t).display_name(),
                reason: "hash-chained table without its chain trigger in the database; run \
                         `byokpg setup` (serve runs it at start) after creating the table, \
                         then reload byokpg"
                    .to_owned(),
            });
        }
        Ok(())
    }

    fn no_chain_column(
        &self,
        t: usize,
        rules: &AuditRules,
        name: Option<&str>,
    ) -> Result<(), Refusal> {
        match name.and_then(|n| rules.chain_column(n)) {
            Some(c) => Err(self.forbid(
                t,
                &format!(
                    "hash-chained table: column {c} is filled by byokpg's hash chain and \
                     cannot be supplied by the client"
                ),
            )),
            None => Ok(()),
        }
    }
}
