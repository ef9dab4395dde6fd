//! FROM items and joins: which relations a query level sees, under which
//! names, and whether a join condition compares protected columns.

use sqlparser::ast::{
    JoinConstraint, JoinOperator, ObjectName, TableAlias, TableFactor, TableWithJoins,
};

use super::policy::{fold, fold_name};
use super::refusal::reason;
use super::scope::{Cx, Lookup, Outputs, Rel, RelKind, table_outputs, undo_only};
use super::{ColumnRef, Refusal};

impl Cx<'_> {
    /// Add a FROM item (with its joins) to the current frame.
    pub fn add_from_item(&mut self, twj: &TableWithJoins) -> Result<(), Refusal> {
        self.table_factor(&twj.relation)?;
        for join in &twj.joins {
            let left = self.frame().rels.len();
            self.table_factor(&join.relation)?;
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c) => c,
                other => {
                    self.conservative(other)?;
                    continue;
                }
            };
            self.join_constraint(constraint, left)?;
        }
        Ok(())
    }

    fn join_constraint(&mut self, c: &JoinConstraint, left: usize) -> Result<(), Refusal> {
        match c {
            JoinConstraint::On(e) => self.expr(e),
            JoinConstraint::None => Ok(()),
            JoinConstraint::Natural => {
                self.frame().merged = true;
                let frame = self.frame().clone();
                match frame
                    .rels
                    .iter()
                    .find_map(|r| r.some_protected(self.policy))
                {
                    Some(col) => Err(self.refuse_col(col, reason::NATURAL_JOIN)),
                    None => Ok(()),
                }
            }
            JoinConstraint::Using(names) => {
                self.frame().merged = true;
                for name in names {
                    let Some(parts) = fold_name(name) else {
                        continue;
                    };
                    let Some(col) = parts.last() else { continue };
                    self.using_column(col, left)?;
                }
                Ok(())
            }
        }
    }

    /// `USING (col)`: both sides must be the same deterministic column, or
    /// neither protected.
    fn using_column(&mut self, col: &str, left: usize) -> Result<(), Refusal> {
        let frame = self.frame().clone();
        let protected = |r: &Rel| match r.lookup(self.policy, col) {
            Lookup::Protected(c) => Some(c),
            _ => None,
        };
        let l: Vec<ColumnRef> = frame.rels[..left].iter().filter_map(protected).collect();
        let r: Vec<ColumnRef> = frame.rels[left..].iter().filter_map(protected).collect();
        match (l.first(), r.first()) {
            (None, None) => Ok(()),
            (Some(a), Some(b)) if a == b => {
                let a = *a;
                if self.policy.mode(a) == super::ColumnMode::Deterministic {
                    Ok(())
                } else {
                    Err(self.refuse_col(a, reason::EQ_RANDOMIZED))
                }
            }
            (Some(a), Some(b)) => Err(self.refuse_col(
                *a,
                &format!(
                    "{} {}",
                    reason::DIFFERENT_KEYS,
                    self.policy.column_display(*b)
                ),
            )),
            (Some(c), None) | (None, Some(c)) => Err(self.refuse_col(*c, reason::COMPARE_PLAIN)),
        }
    }

    fn table_factor(&mut self, tf: &TableFactor) -> Result<(), Refusal> {
        let rel = match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                partitions,
                json_path,
                index_hints,
                ..
            } => {
                if args.is_some() {
                    self.conservative(tf)?;
                    named_opaque(alias.as_ref(), name)
                } else {
                    if !with_hints.is_empty()
                        || version.is_some()
                        || !partitions.is_empty()
                        || json_path.is_some()
                        || !index_hints.is_empty()
                    {
                        self.conservative(tf)?;
                    }
                    let (name, alias) = undo_only(name, alias.as_ref());
                    self.table_rel(&name, alias.as_ref())?
                }
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                ..
            } => {
                let out = if *lateral {
                    self.query(subquery)?
                } else {
                    self.without_current_frame(|cx| cx.query(subquery))?
                };
                self.derived_rel(alias.as_ref(), &out)?
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                for a in args {
                    self.function_arg(a)?;
                }
                named_opaque(alias.as_ref(), name)
            }
            TableFactor::TableFunction { expr, alias } => {
                self.operand(expr, reason::FUNCTION)?;
                alias_opaque(alias.as_ref())
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                for x in array_exprs {
                    self.operand(x, reason::FUNCTION)?;
                }
                alias_opaque(alias.as_ref())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    self.conservative(tf)?;
                    alias_opaque(alias.as_ref())
                } else {
                    return self.add_from_item(table_with_joins);
                }
            }
            other => {
                self.conservative(other)?;
                Rel {
                    name: String::new(),
                    schema: None,
                    kind: RelKind::Opaque,
                }
            }
        };
        self.frame().rels.push(rel);
        Ok(())
    }

    /// A named table: a CTE, a protected table or another table.
    pub fn table_rel(
        &mut self,
        name: &ObjectName,
        alias: Option<&TableAlias>,
    ) -> Result<Rel, Refusal> {
        let parts = fold_name(name).unwrap_or_default();
        if let [single] = parts.as_slice()
            && let Some(cte) = self.cte(single).cloned()
        {
            let rel_name = alias.map_or(cte.name.clone(), |a| fold(&a.name));
            let out = self.renamed_by_alias(alias, &cte.outputs)?;
            return Ok(Rel {
                name: rel_name,
                schema: None,
                kind: RelKind::Derived(out),
            });
        }
        let table = self.protected_table(name)?;
        let schema = match table {
            Some(t) => Some(self.policy.table(t).schema.clone()),
            None if parts.len() >= 2 => Some(parts[parts.len() - 2].clone()),
            None => None,
        };
        let Some(alias) = alias else {
            return Ok(Rel {
                name: parts.last().cloned().unwrap_or_default(),
                schema,
                kind: RelKind::Table(table),
            });
        };
        let kind = if alias.columns.is_empty() {
            RelKind::Table(table)
        } else {
            RelKind::Derived(
                self.renamed_by_alias(Some(alias), &table_outputs(self.policy, table))?,
            )
        };
        Ok(Rel {
            name: fold(&alias.name),
            schema: None,
            kind,
        })
    }

    fn derived_rel(&mut self, alias: Option<&TableAlias>, out: &Outputs) -> Result<Rel, Refusal> {
        let out = self.renamed_by_alias(alias, out)?;
        Ok(Rel {
            name: alias.map(|a| fold(&a.name)).unwrap_or_default(),
            schema: None,
            kind: RelKind::Derived(out),
        })
    }

    fn renamed_by_alias(
        &self,
        alias: Option<&TableAlias>,
        out: &Outputs,
    ) -> Result<Outputs, Refusal> {
        let names: Vec<String> = alias
            .map(|a| a.columns.iter().map(|c| fold(&c.name)).collect())
            .unwrap_or_default();
        out.renamed(&names)
            .map_err(|c| self.refuse_col(c, reason::POSITIONS_UNKNOWN))
    }
}

fn alias_opaque(alias: Option<&TableAlias>) -> Rel {
    Rel {
        name: alias.map(|a| fold(&a.name)).unwrap_or_default(),
        schema: None,
        kind: RelKind::Opaque,
    }
}

fn named_opaque(alias: Option<&TableAlias>, name: &ObjectName) -> Rel {
    Rel {
        name: alias.map_or_else(
            || {
                fold_name(name)
                    .and_then(|p| p.last().cloned())
                    .unwrap_or_default()
            },
            |a| fold(&a.name),
        ),
        schema: None,
        kind: RelKind::Opaque,
    }
}
