//! Name resolution: which relation, and which protected column, a written
//! name refers to — through aliases, CTEs, derived tables and correlated
//! subqueries.
//!
//! The model is deliberately conservative: columns of unprotected tables are
//! unknown ("maybe"), so an unqualified name that matches a protected column
//! of an outer query while an inner relation might also have it is refused as
//! ambiguous rather than guessed.

use std::collections::BTreeMap;
use std::ops::Range;

use sqlparser::ast::{Expr, Ident, ObjectName, TableAlias};

use super::policy::{fold, fold_name};
use super::refusal::reason;
use super::source::Source;
use super::{ColumnRef, PolicyView, Refusal, StatementPlan};

/// One output column of a relation or query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutItem {
    /// A column at a known position; `col` is set when it is a protected one.
    Col {
        name: Option<String>,
        col: Option<ColumnRef>,
    },
    /// Columns whose number and order are unknown (a `*` over a table whose
    /// columns are not known), among them these protected ones.
    Unknown { protected: Vec<(String, ColumnRef)> },
}

/// What a query or relation produces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outputs {
    pub items: Vec<OutItem>,
}

/// How a name resolves within one relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Protected(ColumnRef),
    /// Known to exist, not protected.
    Plain,
    /// Might exist (columns unknown), never protected.
    Maybe,
    No,
}

impl Outputs {
    pub fn unknown() -> Self {
        Self {
            items: vec![OutItem::Unknown {
                protected: Vec::new(),
            }],
        }
    }

    pub fn first_protected(&self) -> Option<ColumnRef> {
        self.items.iter().find_map(|i| match i {
            OutItem::Col { col, .. } => *col,
            OutItem::Unknown { protected } => protected.first().map(|p| p.1),
        })
    }

    pub fn lookup(&self, name: &str) -> Lookup {
        let mut maybe = false;
        for item in &self.items {
            match item {
                OutItem::Col { name: Some(n), col } if n == name => {
                    return col.map_or(Lookup::Plain, Lookup::Protected);
                }
                OutItem::Col { .. } => {}
                OutItem::Unknown { protected } => {
                    if let Some((_, c)) = protected.iter().find(|(n, _)| n == name) {
                        return Lookup::Protected(*c);
                    }
                    maybe = true;
                }
            }
        }
        if maybe { Lookup::Maybe } else { Lookup::No }
    }

    /// The item at 1-based `position`: `Err` when an unknown-width item
    /// holding protected columns precedes or is at it.
    pub fn at(&self, position: usize) -> Result<Option<ColumnRef>, ColumnRef> {
        let mut index = 0;
        for item in &self.items {
            match item {
                OutItem::Col { col, .. } => {
                    index += 1;
                    if index == position {
                        return Ok(*col);
                    }
                }
                OutItem::Unknown { protected } => {
                    return match protected.first() {
                        Some((_, c)) => Err(*c),
                        None => Ok(None),
                    };
                }
            }
        }
        Ok(None)
    }

    /// Rename the first `names.len()` columns (an alias column list);
    /// `Err(col)` if a protected column's position cannot be known.
    pub fn renamed(&self, names: &[String]) -> Result<Self, ColumnRef> {
        if names.is_empty() {
            return Ok(self.clone());
        }
        let mut items = Vec::with_capacity(self.items.len());
        let mut pending = names.iter();
        for (idx, item) in self.items.iter().enumerate() {
            if pending.len() == 0 {
                items.push(item.clone());
                continue;
            }
            match item {
                OutItem::Col { col, .. } => items.push(OutItem::Col {
                    name: pending.next().cloned(),
                    col: *col,
                }),
                OutItem::Unknown { .. } => {
                    // Which columns the remaining names rename is unknown:
                    // fine only if none of the rest is protected.
                    let rest = Self {
                        items: self.items[idx..].to_vec(),
                    };
                    if let Some(c) = rest.first_protected() {
                        return Err(c);
                    }
                    items.extend(rest.items);
                    break;
                }
            }
        }
        Ok(Self { items })
    }

    /// The same columns, none of them traceable to a protected column.
    pub fn plain(&self) -> Self {
        Self {
            items: self
                .items
                .iter()
                .map(|i| match i {
                    OutItem::Col { name, .. } => OutItem::Col {
                        name: name.clone(),
                        col: None,
                    },
                    OutItem::Unknown { .. } => OutItem::Unknown {
                        protected: Vec::new(),
                    },
                })
                .collect(),
        }
    }

    /// Collapse positions (after a USING / NATURAL join, `*` order differs).
    pub fn without_positions(&self) -> Self {
        let protected = self
            .items
            .iter()
            .flat_map(|i| match i {
                OutItem::Col {
                    name: Some(n),
                    col: Some(c),
                } => vec![(n.clone(), *c)],
                OutItem::Col { .. } => Vec::new(),
                OutItem::Unknown { protected } => protected.clone(),
            })
            .collect();
        Self {
            items: vec![OutItem::Unknown { protected }],
        }
    }
}

/// A relation in a FROM list (or a DML target).
#[derive(Debug, Clone)]
pub struct Rel {
    /// Alias, or table name; empty for an unnamed subquery.
    pub name: String,
    /// Schema of an unaliased base table, for `schema.table.column`.
    pub schema: Option<String>,
    pub kind: RelKind,
}

#[derive(Debug, Clone)]
pub enum RelKind {
    /// A base table; `Some` when protected.
    Table(Option<usize>),
    /// A subquery, CTE, or a table under a column alias list.
    Derived(Outputs),
    /// Function results, VALUES lists and the like: columns unknown, never
    /// protected.
    Opaque,
}

impl Rel {
    pub fn lookup(&self, policy: &PolicyView, name: &str) -> Lookup {
        match &self.kind {
            RelKind::Table(Some(t)) => {
                if let Some(c) = policy.column(*t, name) {
                    return Lookup::Protected(c);
                }
                match &policy.table(*t).all_columns {
                    Some(all) if all.iter().any(|c| c == name) => Lookup::Plain,
                    Some(_) => Lookup::No,
                    None => Lookup::Maybe,
                }
            }
            RelKind::Table(None) | RelKind::Opaque => Lookup::Maybe,
            RelKind::Derived(o) => o.lookup(name),
        }
    }

    /// Any protected column of this relation (for messages).
    pub fn some_protected(&self, policy: &PolicyView) -> Option<ColumnRef> {
        match &self.kind {
            RelKind::Table(Some(t)) => policy.column(*t, &policy.table(*t).columns.first()?.0),
            RelKind::Derived(o) => o.first_protected(),
            RelKind::Table(None) | RelKind::Opaque => None,
        }
    }

    /// What `*` over this relation produces.
    pub fn outputs(&self, policy: &PolicyView) -> Outputs {
        match &self.kind {
            RelKind::Table(t) => table_outputs(policy, *t),
            RelKind::Derived(o) => o.clone(),
            RelKind::Opaque => Outputs::unknown(),
        }
    }
}

/// The columns of a base table, as far as they are known.
pub fn table_outputs(policy: &PolicyView, table: Option<usize>) -> Outputs {
    let Some(t) = table else {
        return Outputs::unknown();
    };
    let p = policy.table(t);
    match &p.all_columns {
        Some(all) => Outputs {
            items: all
                .iter()
                .map(|n| OutItem::Col {
                    name: Some(n.clone()),
                    col: policy.column(t, n),
                })
                .collect(),
        },
        None => Outputs {
            items: vec![OutItem::Unknown {
                protected: p
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(column, (n, _))| (n.clone(), ColumnRef { table: t, column }))
                    .collect(),
            }],
        },
    }
}

/// sqlparser reads `ONLY name` (no inheritance children) as a table called
/// `only` with the alias `name`; ONLY is reserved in PostgreSQL, so undo it.
pub fn undo_only(
    name: &ObjectName,
    alias: Option<&TableAlias>,
) -> (ObjectName, Option<TableAlias>) {
    let is_only = matches!(name.0.as_slice(), [p] if p.as_ident().is_some_and(|i| {
        i.quote_style.is_none() && i.value.eq_ignore_ascii_case("only")
    }));
    match alias {
        Some(a) if is_only => {
            let real = ObjectName::from(vec![a.name.clone()]);
            let alias = (!a.columns.is_empty()).then(|| a.clone());
            (real, alias)
        }
        _ => (name.clone(), alias.cloned()),
    }
}

/// The relations of one query level.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    pub rels: Vec<Rel>,
    /// A USING / NATURAL join merged columns: `*` positions are unknown.
    pub merged: bool,
}

/// A CTE visible by name.
#[derive(Debug, Clone)]
pub struct Cte {
    pub name: String,
    pub outputs: Outputs,
}

/// The planning state of one statement.
pub struct Cx<'a> {
    pub policy: &'a PolicyView,
    pub src: &'a Source<'a>,
    /// The statement's own text (for messages).
    pub text: &'a str,
    pub plan: StatementPlan,
    pub frames: Vec<Frame>,
    pub ctes: Vec<Vec<Cte>>,
    /// Encrypted parameter → (column, number of encrypted uses).
    pub param_uses: BTreeMap<usize, (ColumnRef, usize)>,
    /// Parameters compared in an expandable comparison.
    pub compare_params: std::collections::BTreeSet<usize>,
    /// Parameters stored, or compared in a non-expandable way: bound as one
    /// ciphertext.
    pub single_params: std::collections::BTreeSet<usize>,
}

impl<'a> Cx<'a> {
    pub fn new(
        policy: &'a PolicyView,
        src: &'a Source<'a>,
        text: &'a str,
        range: Range<usize>,
    ) -> Self {
        Self {
            policy,
            src,
            text,
            plan: StatementPlan {
                range,
                ..StatementPlan::default()
            },
            frames: Vec::new(),
            ctes: Vec::new(),
            param_uses: BTreeMap::new(),
            compare_params: std::collections::BTreeSet::new(),
            single_params: std::collections::BTreeSet::new(),
        }
    }

    pub fn finish(mut self) -> StatementPlan {
        self.plan.literals.sort_by_key(|s| s.range.start);
        self.plan.params = self.param_uses.iter().map(|(&n, &(c, _))| (n, c)).collect();
        self.plan.compare_params = self.compare_params.iter().copied().collect();
        self.plan
    }

    pub fn refuse_col(&self, column: ColumnRef, why: &str) -> Refusal {
        Refusal::NotSupported {
            table: self.policy.table(column.table).display_name(),
            column: Some(crate::rewrite::plan::policy::quote_ident(
                self.policy.column_name(column),
            )),
            reason: why.to_owned(),
        }
    }

    pub fn refuse_table(&self, table: usize, why: &str) -> Refusal {
        Refusal::table(self.policy.table(table).display_name(), why)
    }

    pub fn forbid(&self, table: usize, why: &str) -> Refusal {
        Refusal::Forbidden {
            table: self.policy.table(table).display_name(),
            reason: why.to_owned(),
        }
    }

    /// Resolve a table name, marking the statement as touching it.
    pub fn protected_table(&mut self, name: &ObjectName) -> Result<Option<usize>, Refusal> {
        let Some(parts) = fold_name(name) else {
            return Ok(None);
        };
        let t = self.policy.resolve_table(&parts)?;
        if t.is_some() {
            self.plan.touches = true;
        }
        Ok(t)
    }

    /// A CTE named `name`, innermost first.
    pub fn cte(&self, name: &str) -> Option<&Cte> {
        self.ctes
            .iter()
            .rev()
            .flat_map(|level| level.iter().rev())
            .find(|c| c.name == name)
    }

    pub fn frame(&mut self) -> &mut Frame {
        if self.frames.is_empty() {
            self.frames.push(Frame::default());
        }
        let last = self.frames.len() - 1;
        &mut self.frames[last]
    }

    /// The protected column `e` is, if it is a bare (possibly parenthesized)
    /// column reference to one. Whole-row references to relations with
    /// protected columns are refused here.
    pub fn column_of(&self, e: &Expr) -> Result<Option<ColumnRef>, Refusal> {
        match e {
            Expr::Nested(inner) => self.column_of(inner),
            Expr::Identifier(id) => {
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") {
                    return Ok(None);
                }
                self.resolve(std::slice::from_ref(id))
            }
            Expr::CompoundIdentifier(ids) => self.resolve(ids),
            _ => Ok(None),
        }
    }

    /// Resolve a (possibly qualified) column name.
    pub fn resolve(&self, ids: &[Ident]) -> Result<Option<ColumnRef>, Refusal> {
        let names: Vec<String> = ids.iter().map(fold).collect();
        match names.as_slice() {
            [] => Ok(None),
            [name] => self.resolve_unqualified(name),
            [.., qualifier, column] => {
                let schema = (names.len() >= 3).then(|| names[names.len() - 3].as_str());
                if let Some(rel) = self.find_rel(schema, qualifier) {
                    return Ok(match rel.lookup(self.policy, column) {
                        Lookup::Protected(c) => Some(c),
                        _ => None,
                    });
                }
                // Not a relation: `a.b` may be field `b` of a composite
                // column `a` (or of `t.a` for three parts).
                let base = self.resolve(&ids[..ids.len() - 1])?;
                match base {
                    Some(c) => Err(self.refuse_col(c, reason::FUNCTION)),
                    None => Ok(None),
                }
            }
        }
    }

    fn resolve_unqualified(&self, name: &str) -> Result<Option<ColumnRef>, Refusal> {
        let mut maybe_inner = false;
        for frame in self.frames.iter().rev() {
            let mut found: Option<ColumnRef> = None;
            let (mut plain, mut maybe) = (false, false);
            for rel in &frame.rels {
                match rel.lookup(self.policy, name) {
                    Lookup::Protected(c) => match found {
                        Some(f) if f != c => {
                            return Err(self.refuse_col(
                                f,
                                &format!(
                                    "ambiguous column reference {name}: it could be {} or {}; \
                                     qualify it with the table name",
                                    self.policy.column_display(f),
                                    self.policy.column_display(c)
                                ),
                            ));
                        }
                        _ => found = Some(c),
                    },
                    Lookup::Plain => plain = true,
                    Lookup::Maybe => maybe = true,
                    Lookup::No => {}
                }
            }
            if let Some(c) = found {
                if maybe_inner {
                    return Err(self.refuse_col(
                        c,
                        &format!(
                            "column reference {name} could be this encrypted column of an \
                             outer query or a column of a table in the subquery; qualify it \
                             with the table name"
                        ),
                    ));
                }
                return Ok(Some(c));
            }
            if plain {
                return Ok(None);
            }
            if let Some(rel) = frame.rels.iter().find(|r| r.name == name)
                && let Some(c) = rel.some_protected(self.policy)
            {
                return Err(self.refuse_col(c, reason::WHOLE_ROW));
            }
            maybe_inner |= maybe;
        }
        Ok(None)
    }

    /// The relation named `name` (and `schema`, for unaliased tables),
    /// innermost first.
    pub fn find_rel(&self, schema: Option<&str>, name: &str) -> Option<&Rel> {
        self.frames
            .iter()
            .rev()
            .flat_map(|f| f.rels.iter())
            .find(|r| r.name == name && schema.is_none_or(|s| r.schema.as_deref() == Some(s)))
    }

    /// `t.*` used as a value (`row_to_json(t.*)`): refused when `t` has
    /// protected columns.
    pub fn whole_row(&self, name: &ObjectName) -> Result<(), Refusal> {
        let Some(parts) = fold_name(name) else {
            return Ok(());
        };
        let (schema, rel) = match parts.as_slice() {
            [rel] => (None, rel),
            [.., schema, rel] => (Some(schema.as_str()), rel),
            [] => return Ok(()),
        };
        if let Some(r) = self.find_rel(schema, rel)
            && let Some(c) = r.some_protected(self.policy)
        {
            return Err(self.refuse_col(c, reason::WHOLE_ROW));
        }
        Ok(())
    }

    /// Run `f` in a new query level.
    pub fn in_frame<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        self.frames.push(Frame::default());
        let out = f(self);
        self.frames.pop();
        out
    }

    /// Run `f` with the current level hidden (a non-LATERAL subquery in FROM
    /// cannot see its siblings).
    pub fn without_current_frame<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, Refusal>,
    ) -> Result<T, Refusal> {
        let hidden = self.frames.pop();
        let out = f(self);
        if let Some(h) = hidden {
            self.frames.push(h);
        }
        out
    }

    /// Record an encrypted use of parameter `n` for `column`.
    pub fn encrypt_param(&mut self, n: usize, column: ColumnRef) -> Result<(), Refusal> {
        let entry = self.param_uses.entry(n).or_insert((column, 0));
        if entry.0 != column {
            let other = entry.0;
            return Err(self.refuse_col(
                column,
                &format!(
                    "parameter ${n} is used for two encrypted columns ({} and {}); a \
                     parameter can be encrypted for one column only",
                    self.policy.column_display(other),
                    self.policy.column_display(column)
                ),
            ));
        }
        entry.1 += 1;
        Ok(())
    }
}
