//! Queries: CTEs, set operations, SELECT lists, FROM items and joins,
//! ORDER BY / GROUP BY / DISTINCT.
//!
//! Each query returns its [`Outputs`], so a protected column keeps being
//! recognised through derived tables and CTEs (`WITH d AS (SELECT ssn ...)
//! SELECT ssn FROM d`). Whether outputs may carry protected columns is the
//! caller's decision: the client may receive them (the session decrypts by
//! RowDescription origin), a scalar subquery or INSERT ... SELECT may not.

use sqlparser::ast::{
    Distinct, Expr, GroupByExpr, LimitClause, NamedWindowExpr, ObjectName, OrderByExpr,
    OrderByKind, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableAlias, Value, WildcardAdditionalOptions,
};

use super::Refusal;
use super::literal::placeholder_index;
use super::policy::{fold, fold_name};
use super::refusal::reason;
use super::scope::{Cte, Cx, Lookup, OutItem, Outputs, table_outputs};

impl Cx<'_> {
    /// Walk a query; returns what it produces.
    pub fn query(&mut self, q: &Query) -> Result<Outputs, Refusal> {
        self.ctes.push(Vec::new());
        let out = self.query_inner(q);
        self.ctes.pop();
        out
    }

    fn query_inner(&mut self, q: &Query) -> Result<Outputs, Refusal> {
        self.register_ctes(q)?;
        if q.for_clause.is_some()
            || q.settings.is_some()
            || q.format_clause.is_some()
            || !q.pipe_operators.is_empty()
        {
            self.conservative(q)?;
        }
        let outputs = match q.body.as_ref() {
            SetExpr::Select(s) => {
                let order = q.order_by.as_ref().map(|o| &o.kind);
                self.in_frame(|cx| cx.select(s, order))?
            }
            body => {
                let out = self.set_expr(body)?;
                if let Some(o) = &q.order_by {
                    self.in_frame(|cx| cx.order_by(&o.kind, &out, false))?;
                }
                out
            }
        };
        match &q.limit_clause {
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                for x in limit
                    .iter()
                    .chain(offset.as_ref().map(|o| &o.value))
                    .chain(limit_by)
                {
                    self.operand(x, reason::FUNCTION)?;
                }
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.operand(offset, reason::FUNCTION)?;
                self.operand(limit, reason::FUNCTION)?;
            }
            None => {}
        }
        if let Some(x) = q.fetch.as_ref().and_then(|f| f.quantity.as_ref()) {
            self.operand(x, reason::FUNCTION)?;
        }
        Ok(outputs)
    }

    /// Register the CTEs of `q` in the current CTE level.
    pub fn register_ctes(&mut self, q: &Query) -> Result<(), Refusal> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.cte_definition(&cte.alias, &cte.query, with.recursive)?;
            }
        }
        Ok(())
    }

    fn cte_definition(
        &mut self,
        alias: &TableAlias,
        body: &Query,
        recursive: bool,
    ) -> Result<(), Refusal> {
        let name = fold(&alias.name);
        if recursive {
            // The recursive term sees the CTE itself; a protected column
            // could only reach it through UNION, which is refused anyway.
            self.register_cte(name.clone(), Outputs::unknown());
        }
        let out = self.query(body)?;
        let names: Vec<String> = alias.columns.iter().map(|c| fold(&c.name)).collect();
        let out = out
            .renamed(&names)
            .map_err(|c| self.refuse_col(c, reason::POSITIONS_UNKNOWN))?;
        self.register_cte(name, out);
        Ok(())
    }

    fn register_cte(&mut self, name: String, outputs: Outputs) {
        if self.ctes.is_empty() {
            self.ctes.push(Vec::new());
        }
        let level = self.ctes.len() - 1;
        let level = &mut self.ctes[level];
        level.retain(|c| c.name != name);
        level.push(Cte { name, outputs });
    }

    fn set_expr(&mut self, body: &SetExpr) -> Result<Outputs, Refusal> {
        match body {
            SetExpr::Select(s) => self.in_frame(|cx| cx.select(s, None)),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                let l = self.set_expr(left)?;
                let r = self.set_expr(right)?;
                if let Some(c) = l.first_protected().or_else(|| r.first_protected()) {
                    return Err(self.refuse_col(c, reason::SET_OPERATION));
                }
                Ok(l.plain())
            }
            SetExpr::Values(v) => {
                let mut width = 0;
                for row in &v.rows {
                    width = width.max(row.content.len());
                    for x in &row.content {
                        self.operand(x, reason::COPY_PLAIN)?;
                    }
                }
                Ok(Outputs {
                    items: (1..=width)
                        .map(|i| OutItem::Col {
                            name: Some(format!("column{i}")),
                            col: None,
                        })
                        .collect(),
                })
            }
            SetExpr::Insert(Statement::Insert(i)) => self.insert(i),
            SetExpr::Update(Statement::Update(u)) => self.update(u),
            SetExpr::Delete(Statement::Delete(d)) => self.delete(d),
            SetExpr::Table(t) => {
                // `TABLE name`: the parts come without quoting information,
                // so try them as written and folded.
                let written: Vec<String> = t
                    .schema_name
                    .iter()
                    .chain(t.table_name.iter())
                    .cloned()
                    .collect();
                let folded: Vec<String> = written.iter().map(|p| p.to_ascii_lowercase()).collect();
                if let [single] = folded.as_slice()
                    && let Some(c) = self.cte(single)
                {
                    return Ok(c.outputs.clone());
                }
                let mut table = None;
                for parts in [&written, &folded] {
                    let name = ObjectName::from(
                        parts
                            .iter()
                            .map(|p| sqlparser::ast::Ident::with_quote('"', p.as_str()))
                            .collect::<Vec<_>>(),
                    );
                    table = table.or(self.protected_table(&name)?);
                }
                Ok(table_outputs(self.policy, table))
            }
            other => {
                self.conservative(other)?;
                Ok(Outputs::unknown())
            }
        }
    }

    /// One SELECT level (the frame is already pushed).
    fn select(&mut self, s: &Select, order: Option<&OrderByKind>) -> Result<Outputs, Refusal> {
        self.reject_foreign_select_syntax(s)?;
        for twj in &s.from {
            self.add_from_item(twj)?;
        }
        if let Some(w) = &s.selection {
            self.expr(w)?;
        }
        let out = self.projection(&s.projection)?;
        self.group_by(&s.group_by, &out)?;
        if let Some(h) = &s.having {
            self.expr(h)?;
        }
        match &s.distinct {
            Some(Distinct::Distinct) => {
                if let Some(c) = out.first_protected() {
                    return Err(self.refuse_col(c, &format!("{} (DISTINCT)", reason::ORDERING)));
                }
            }
            Some(Distinct::On(items)) => {
                for x in items {
                    self.order_item(x, &out, true, "DISTINCT ON")?;
                }
            }
            Some(Distinct::All) | None => {}
        }
        for w in &s.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.window_spec(spec)?;
            }
        }
        if let Some(kind) = order {
            self.order_by(kind, &out, true)?;
        }
        if s.into.is_some()
            && let Some(c) = out.first_protected()
        {
            return Err(self.refuse_col(c, reason::COPY_PLAIN));
        }
        Ok(out)
    }

    /// Clauses of other SQL dialects: checked conservatively.
    fn reject_foreign_select_syntax(&mut self, s: &Select) -> Result<(), Refusal> {
        let foreign = s.top.is_some()
            || s.exclude.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || s.qualify.is_some()
            || s.value_table_mode.is_some()
            || s.select_modifiers.is_some()
            || !s.optimizer_hints.is_empty();
        if foreign {
            self.conservative(s)?;
        }
        Ok(())
    }

    /// The SELECT list (also RETURNING).
    pub fn projection(&mut self, items: &[SelectItem]) -> Result<Outputs, Refusal> {
        let mut out = Outputs::default();
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => out.items.push(self.projected(e, None)?),
                SelectItem::ExprWithAlias { expr, alias } => {
                    out.items.push(self.projected(expr, Some(fold(alias)))?);
                }
                SelectItem::ExprWithAliases { expr, .. } => {
                    self.operand(expr, reason::UNSUPPORTED_SYNTAX)?;
                    out.items.push(OutItem::Unknown {
                        protected: Vec::new(),
                    });
                }
                SelectItem::Wildcard(opts) => {
                    self.wildcard_options(opts)?;
                    let frame = self.frame().clone();
                    for rel in &frame.rels {
                        let o = rel.outputs(self.policy);
                        let o = if frame.merged {
                            o.without_positions()
                        } else {
                            o
                        };
                        out.items.extend(o.items);
                    }
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    self.wildcard_options(opts)?;
                    match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => {
                            out.items.extend(self.qualified_star(name).items);
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            self.operand(e, reason::UNSUPPORTED_SYNTAX)?;
                            out.items.push(OutItem::Unknown {
                                protected: Vec::new(),
                            });
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    fn projected(&mut self, e: &Expr, alias: Option<String>) -> Result<OutItem, Refusal> {
        if let Some(c) = self.column_of(e)? {
            let name = alias.or_else(|| Some(self.policy.column_name(c).to_owned()));
            return Ok(OutItem::Col { name, col: Some(c) });
        }
        self.expr(e)?;
        let name = alias.or_else(|| match e {
            Expr::Identifier(i) => Some(fold(i)),
            Expr::CompoundIdentifier(ids) => ids.last().map(fold),
            _ => None,
        });
        Ok(OutItem::Col { name, col: None })
    }

    fn qualified_star(&self, name: &ObjectName) -> Outputs {
        let Some(parts) = fold_name(name) else {
            return Outputs::unknown();
        };
        let (schema, rel) = match parts.as_slice() {
            [rel] => (None, rel.as_str()),
            [.., schema, rel] => (Some(schema.as_str()), rel.as_str()),
            [] => return Outputs::unknown(),
        };
        match self.find_rel(schema, rel) {
            Some(r) => {
                let merged = self.frames.last().is_some_and(|f| f.merged);
                let o = r.outputs(self.policy);
                if merged { o.without_positions() } else { o }
            }
            None => Outputs::unknown(),
        }
    }

    fn wildcard_options(&mut self, o: &WildcardAdditionalOptions) -> Result<(), Refusal> {
        if o.opt_ilike.is_some()
            || o.opt_exclude.is_some()
            || o.opt_except.is_some()
            || o.opt_replace.is_some()
            || o.opt_rename.is_some()
        {
            let protected = self
                .frames
                .last()
                .and_then(|f| f.rels.iter().find_map(|r| r.some_protected(self.policy)));
            if let Some(c) = protected {
                return Err(self.refuse_col(c, reason::UNSUPPORTED_SYNTAX));
            }
            self.conservative(o)?;
        }
        Ok(())
    }

    fn group_by(&mut self, g: &GroupByExpr, out: &Outputs) -> Result<(), Refusal> {
        match g {
            GroupByExpr::All(_) => match out.first_protected() {
                Some(c) => Err(self.refuse_col(c, &format!("{} (GROUP BY)", reason::ORDERING))),
                None => Ok(()),
            },
            GroupByExpr::Expressions(items, _) => {
                for x in items {
                    self.order_item(x, out, true, "GROUP BY")?;
                }
                Ok(())
            }
        }
    }

    /// ORDER BY of a query level; `inputs` tells whether the level's FROM
    /// columns are in scope (a plain SELECT) or only its outputs.
    fn order_by(&mut self, kind: &OrderByKind, out: &Outputs, inputs: bool) -> Result<(), Refusal> {
        match kind {
            OrderByKind::All(_) => match out.first_protected() {
                Some(c) => Err(self.refuse_col(c, &format!("{} (ORDER BY)", reason::ORDERING))),
                None => Ok(()),
            },
            OrderByKind::Expressions(items) => {
                for OrderByExpr { expr, .. } in items {
                    self.order_item(expr, out, inputs, "ORDER BY")?;
                }
                Ok(())
            }
        }
    }

    /// One ORDER BY / GROUP BY / DISTINCT ON item: an output position, an
    /// output name, or an expression over the inputs.
    fn order_item(
        &mut self,
        e: &Expr,
        out: &Outputs,
        inputs: bool,
        clause: &str,
    ) -> Result<(), Refusal> {
        let why = format!("{} ({clause})", reason::ORDERING);
        if let Expr::Value(v) = e
            && let Value::Number(n, _) = &v.value
        {
            let position: usize = n.parse().unwrap_or(0);
            return match out.at(position) {
                Ok(Some(c)) => Err(self.refuse_col(c, &why)),
                Ok(None) => Ok(()),
                Err(c) => Err(self.refuse_col(c, reason::POSITIONS_UNKNOWN)),
            };
        }
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &v.value
            && placeholder_index(p).is_some()
        {
            return Ok(());
        }
        if let Expr::Identifier(id) = e
            && let Lookup::Protected(c) = out.lookup(&fold(id))
        {
            return Err(self.refuse_col(c, &why));
        }
        if inputs {
            self.operand(e, &why)
        } else {
            Ok(())
        }
    }
}
