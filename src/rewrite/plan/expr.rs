//! Expressions and predicates: where a protected column may appear and which
//! compared values must be encrypted.
//!
//! A protected column may be compared (`=`, `<>`, `IN`, `IS [NOT] DISTINCT
//! FROM`) on a deterministic column with literals or parameters (encrypted
//! with its key), with itself (`a.email = b.email`), or tested with `IS [NOT]
//! NULL`. Any other appearance inside an expression is refused with the
//! reason that fits the enclosing operator. Expression kinds this walker does
//! not know are checked conservatively: they are refused if anything inside
//! could be a protected column or table.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, ObjectName, OrderByExpr, Query, Visit, Visitor, WindowFrameBound,
    WindowSpec, WindowType,
};

use sqlparser::tokenizer::Token;

use super::literal::ValueForm;
use super::policy::ColumnMode;
use super::refusal::reason;
use super::scope::Cx;
use super::{ColumnRef, CompareValue, Comparison, LiteralSlot, Refusal, SlotRole};

impl Cx<'_> {
    /// Walk an expression evaluated as a value or condition.
    pub fn expr(&mut self, e: &Expr) -> Result<(), Refusal> {
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match self.column_of(e)? {
                Some(c) => Err(self.refuse_col(c, reason::FUNCTION)),
                None => Ok(()),
            },
            Expr::Nested(inner) => self.expr(inner),
            Expr::Value(_) | Expr::TypedString(_) | Expr::Wildcard(_) => Ok(()),
            Expr::QualifiedWildcard(name, _) => self.whole_row(name),
            Expr::BinaryOp { left, op, right } => self.binary(left, op, right),
            Expr::IsNull(x) | Expr::IsNotNull(x) => match self.column_of(x)? {
                Some(_) => Ok(()),
                None => self.expr(x),
            },
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.comparison(a, b, true)
            }
            Expr::InList { expr, list, .. } => self.in_list(expr, list),
            Expr::InSubquery { expr, subquery, .. } => self.in_subquery(expr, subquery),
            Expr::Between {
                expr, low, high, ..
            } => self.operands([&**expr, low, high], reason::RANGE),
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                self.operands([&**expr, pattern], reason::PATTERN)?;
                escape_char.as_deref().map_or(Ok(()), |x| self.expr(x))
            }
            Expr::RLike { expr, pattern, .. } => self.operands([&**expr, pattern], reason::PATTERN),
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.operands([&**left, right], reason::ANY_ARRAY)
            }
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.operand(o, reason::FUNCTION)?;
                }
                for w in conditions {
                    self.operand(&w.condition, reason::FUNCTION)?;
                    self.operand(&w.result, reason::FUNCTION)?;
                }
                else_result
                    .as_deref()
                    .map_or(Ok(()), |x| self.operand(x, reason::FUNCTION))
            }
            Expr::Exists { subquery, .. } => self.query(subquery).map(|_| ()),
            Expr::Subquery(q) => self.value_subquery(q),
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                for x in sets.iter().flatten() {
                    self.operand(x, reason::ORDERING)?;
                }
                Ok(())
            }
            _ => self.simple_operands(e),
        }
    }

    /// Expressions whose sub-expressions are plain operands (casts,
    /// operators, special-syntax functions); unknown kinds fall back to the
    /// conservative scan.
    fn simple_operands(&mut self, e: &Expr) -> Result<(), Refusal> {
        let children: Vec<&Expr> = match e {
            Expr::UnaryOp { expr, .. }
            | Expr::Cast { expr, .. }
            | Expr::Collate { expr, .. }
            | Expr::Extract { expr, .. }
            | Expr::Ceil { expr, .. }
            | Expr::Floor { expr, .. }
            | Expr::IsTrue(expr)
            | Expr::IsFalse(expr)
            | Expr::IsNotTrue(expr)
            | Expr::IsNotFalse(expr)
            | Expr::IsUnknown(expr)
            | Expr::IsNotUnknown(expr)
            | Expr::IsNormalized { expr, .. }
            | Expr::Named { expr, .. } => vec![expr],
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => vec![timestamp, time_zone],
            Expr::Position { expr, r#in } => vec![expr, r#in],
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => std::iter::once(&**expr)
                .chain(substring_from.as_deref())
                .chain(substring_for.as_deref())
                .collect(),
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => std::iter::once(&**expr)
                .chain(trim_what.as_deref())
                .chain(trim_characters.iter().flatten())
                .collect(),
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => [&**expr, overlay_what, overlay_from]
                .into_iter()
                .chain(overlay_for.as_deref())
                .collect(),
            Expr::Tuple(items) => items.iter().collect(),
            Expr::Array(a) => a.elem.iter().collect(),
            Expr::Interval(i) => vec![&i.value],
            _ => return self.conservative(e),
        };
        self.operands(children, reason::FUNCTION)
    }

    /// A sub-expression: a bare protected column here is refused with `why`.
    pub fn operand(&mut self, e: &Expr, why: &str) -> Result<(), Refusal> {
        match self.column_of(e)? {
            Some(c) => Err(self.refuse_col(c, why)),
            None => self.expr(e),
        }
    }

    fn operands<'e>(
        &mut self,
        items: impl IntoIterator<Item = &'e Expr>,
        why: &str,
    ) -> Result<(), Refusal> {
        for x in items {
            self.operand(x, why)?;
        }
        Ok(())
    }

    fn binary(&mut self, left: &Expr, op: &BinaryOperator, right: &Expr) -> Result<(), Refusal> {
        use BinaryOperator as B;
        let why = match op {
            B::Eq | B::NotEq => return self.comparison(left, right, false),
            B::Lt | B::Gt | B::LtEq | B::GtEq | B::Spaceship => reason::RANGE,
            B::PGRegexMatch
            | B::PGRegexIMatch
            | B::PGRegexNotMatch
            | B::PGRegexNotIMatch
            | B::PGLikeMatch
            | B::PGILikeMatch
            | B::PGNotLikeMatch
            | B::PGNotILikeMatch
            | B::PGStartsWith
            | B::Regexp
            | B::Glob
            | B::Match => reason::PATTERN,
            _ => reason::FUNCTION,
        };
        self.operands([left, right], why)
    }

    /// `a = b`, `a <> b`, `a IS [NOT] DISTINCT FROM b`.
    fn comparison(&mut self, left: &Expr, right: &Expr, null_safe: bool) -> Result<(), Refusal> {
        match (self.column_of(left)?, self.column_of(right)?) {
            (None, None) => {
                self.expr(left)?;
                self.expr(right)
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return Err(self.refuse_col(
                        a,
                        &format!(
                            "{} {}",
                            reason::DIFFERENT_KEYS,
                            self.policy.column_display(b)
                        ),
                    ));
                }
                self.require_deterministic(a)
            }
            (Some(c), None) => self.compared_with(c, left, right, null_safe),
            (None, Some(c)) => self.compared_with(c, right, left, null_safe),
        }
    }

    /// `c = other` (or `<>`, `IS [NOT] DISTINCT FROM`). Comparing with NULL
    /// needs no key, so it is fine on any column.
    fn compared_with(
        &mut self,
        c: ColumnRef,
        col_expr: &Expr,
        other: &Expr,
        null_safe: bool,
    ) -> Result<(), Refusal> {
        if let Ok(Some(ValueForm::Null)) = self.value_form(other) {
            return Ok(());
        }
        self.require_deterministic(c)?;
        let value = self.compared_value(c, other)?;
        self.record_comparison(c, col_expr, &[value], null_safe);
        Ok(())
    }

    /// Remember a comparison of `c` with encrypted values, so that during a
    /// rotation the session can match every live DEK version. Only bare
    /// literals and `$n` can be expanded; anything else makes the statement
    /// single-version ([`StatementPlan::rigid_compare`]).
    fn record_comparison(
        &mut self,
        c: ColumnRef,
        col_expr: &Expr,
        values: &[Compared],
        null_safe: bool,
    ) {
        if values.iter().all(|v| matches!(v, Compared::Nothing)) {
            return;
        }
        let bare: Option<Vec<CompareValue>> = values
            .iter()
            .filter_map(|v| match v {
                Compared::Bare(b) => Some(Some(b.clone())),
                Compared::Rigid => Some(None),
                Compared::Nothing => None,
            })
            .collect();
        if let (Some(column_range), Some(values)) = (self.ident_range(col_expr), bare) {
            for v in &values {
                if let CompareValue::Param { n, .. } = v {
                    self.compare_params.insert(*n);
                }
            }
            self.plan.comparisons.push(Comparison {
                column: c,
                column_range,
                null_safe,
                values,
            });
        } else {
            self.plan.rigid_compare = true;
            for v in values {
                if let Compared::Bare(CompareValue::Param { n, .. }) = v {
                    self.single_params.insert(*n);
                }
            }
        }
    }

    /// Byte range of a (possibly qualified, possibly parenthesized) column
    /// name.
    fn ident_range(&self, e: &Expr) -> Option<std::ops::Range<usize>> {
        let ids = match strip_nested(e) {
            Expr::Identifier(id) => std::slice::from_ref(id),
            Expr::CompoundIdentifier(ids) => ids.as_slice(),
            _ => return None,
        };
        let first = self.src.token_at(ids.first()?.span.start)?;
        let last = self.src.token_at(ids.last()?.span.start)?;
        Some(self.src.bytes[first].start..self.src.bytes[last].end)
    }

    /// What a compared value is for a multi-version lookup.
    fn bare_value(&self, other: &Expr, form: &ValueForm) -> Compared {
        // `'x'::text` / `$1::varchar`: the cast (to the unbounded string type
        // value_form accepted) is replaced together with the value.
        if let Expr::Cast {
            kind: CastKind::DoubleColon,
            expr,
            ..
        } = other
            && matches!(expr.as_ref(), Expr::Value(_) | Expr::UnaryOp { .. })
        {
            return match self.bare_value(expr, form) {
                Compared::Bare(v) => self.extend_over_cast(v),
                other => other,
            };
        }
        match (other, form) {
            (Expr::Value(_) | Expr::UnaryOp { .. }, ValueForm::Literal { range, .. }) => {
                Compared::Bare(CompareValue::Literal {
                    slot: range.clone(),
                    range: range.clone(),
                })
            }
            (Expr::Value(v), ValueForm::Param(n)) => match self.src.token_at(v.span.start) {
                Some(i) => Compared::Bare(CompareValue::Param {
                    n: *n,
                    range: self.src.bytes[i].clone(),
                }),
                None => Compared::Rigid,
            },
            (_, ValueForm::Null | ValueForm::Default) => Compared::Nothing,
            _ => Compared::Rigid,
        }
    }

    /// Extends a value's replaced range over a following `::type` (one
    /// word, `character varying`, or `pg_catalog.word`); [`Compared::Rigid`]
    /// when the tokens are not exactly that.
    fn extend_over_cast(&self, v: CompareValue) -> Compared {
        let range = match &v {
            CompareValue::Literal { range, .. } | CompareValue::Param { range, .. } => {
                range.clone()
            }
        };
        let Some(last) = (0..self.src.bytes.len()).find(|&i| self.src.bytes[i].end == range.end)
        else {
            return Compared::Rigid;
        };
        let word = |i: usize| match &self.src.tokens[i].token {
            Token::Word(w) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
            _ => None,
        };
        let next = |i: usize| self.src.next_significant(i);
        let Some(colons) = next(last).filter(|&i| self.src.tokens[i].token == Token::DoubleColon)
        else {
            return Compared::Rigid;
        };
        let Some(first) = next(colons) else {
            return Compared::Rigid;
        };
        let end = match word(first).as_deref() {
            Some("character") => next(first).filter(|&i| word(i).as_deref() == Some("varying")),
            Some("pg_catalog") => next(first)
                .filter(|&i| self.src.tokens[i].token == Token::Period)
                .and_then(next)
                .filter(|&i| word(i).is_some()),
            Some(_) => Some(first),
            None => None,
        };
        let Some(end) = end else {
            return Compared::Rigid;
        };
        let range = range.start..self.src.bytes[end].end;
        Compared::Bare(match v {
            CompareValue::Literal { slot, .. } => CompareValue::Literal { slot, range },
            CompareValue::Param { n, .. } => CompareValue::Param { n, range },
        })
    }

    fn require_deterministic(&self, c: ColumnRef) -> Result<(), Refusal> {
        match self.policy.mode(c) {
            ColumnMode::Deterministic => Ok(()),
            ColumnMode::Randomized => Err(self.refuse_col(c, reason::EQ_RANDOMIZED)),
        }
    }

    /// The other side of a comparison with deterministic column `c`.
    fn compared_value(&mut self, c: ColumnRef, other: &Expr) -> Result<Compared, Refusal> {
        if let Some(form) = self
            .value_form(other)
            .map_err(|why| self.refuse_col(c, why))?
        {
            let bare = self.bare_value(other, &form);
            self.encrypt(c, form, SlotRole::Compare)?;
            return Ok(bare);
        }
        if let Expr::Subquery(q) = strip_nested(other) {
            return self.same_column_subquery(c, q).map(|()| Compared::Nothing);
        }
        if matches!(
            strip_nested(other),
            Expr::Identifier(_) | Expr::CompoundIdentifier(_)
        ) {
            return Err(self.refuse_col(c, reason::COMPARE_PLAIN));
        }
        Err(self.refuse_col(c, reason::COMPARE_EXPR))
    }

    /// Record the encryption of a value for column `c`.
    pub fn encrypt(
        &mut self,
        c: ColumnRef,
        form: ValueForm,
        role: SlotRole,
    ) -> Result<(), Refusal> {
        match form {
            ValueForm::Literal { range, value } => {
                self.plan.literals.push(LiteralSlot {
                    range,
                    value,
                    column: c,
                    role,
                });
                Ok(())
            }
            ValueForm::Param(n) => {
                if role == SlotRole::Store {
                    self.single_params.insert(n);
                }
                self.encrypt_param(n, c)
            }
            ValueForm::Null => Ok(()),
            ValueForm::Default => match role {
                SlotRole::Store => Ok(()),
                SlotRole::Compare => Err(self.refuse_col(c, reason::COMPARE_EXPR)),
            },
        }
    }

    fn in_list(&mut self, expr: &Expr, list: &[Expr]) -> Result<(), Refusal> {
        let Some(c) = self.column_of(expr)? else {
            self.expr(expr)?;
            return self.operands(list, reason::IN_LIST_MEMBER);
        };
        self.require_deterministic(c)?;
        let mut values = Vec::with_capacity(list.len());
        for item in list {
            values.push(self.compared_value(c, item)?);
        }
        self.record_comparison(c, expr, &values, false);
        Ok(())
    }

    fn in_subquery(&mut self, expr: &Expr, q: &Query) -> Result<(), Refusal> {
        if let Some(c) = self.column_of(expr)? {
            self.require_deterministic(c)?;
            self.same_column_subquery(c, q)
        } else {
            self.expr(expr)?;
            self.value_subquery(q)
        }
    }

    /// A subquery compared with column `c` must return exactly `c`.
    fn same_column_subquery(&mut self, c: ColumnRef, q: &Query) -> Result<(), Refusal> {
        let out = self.query(q)?;
        match out.items.as_slice() {
            [super::scope::OutItem::Col { col: Some(x), .. }] if *x == c => Ok(()),
            _ => Err(self.refuse_col(c, reason::COMPARE_EXPR)),
        }
    }

    /// A subquery used as a value must not return a protected column.
    fn value_subquery(&mut self, q: &Query) -> Result<(), Refusal> {
        let out = self.query(q)?;
        match out.first_protected() {
            Some(c) => Err(self.refuse_col(c, reason::SUBQUERY_VALUE)),
            None => Ok(()),
        }
    }

    pub fn function(&mut self, f: &Function) -> Result<(), Refusal> {
        for args in [&f.parameters, &f.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => self.value_subquery(q)?,
                FunctionArguments::List(list) => {
                    for arg in &list.args {
                        self.function_arg(arg)?;
                    }
                    for clause in &list.clauses {
                        match clause {
                            FunctionArgumentClause::OrderBy(items) => self.order_items(items)?,
                            FunctionArgumentClause::Where(x) | FunctionArgumentClause::Limit(x) => {
                                self.operand(x, reason::FUNCTION)?;
                            }
                            FunctionArgumentClause::IgnoreOrRespectNulls(_) => {}
                            other => self.conservative(other)?,
                        }
                    }
                }
            }
        }
        if let Some(filter) = &f.filter {
            self.expr(filter)?;
        }
        self.order_items(&f.within_group)?;
        if let Some(WindowType::WindowSpec(spec)) = &f.over {
            self.window_spec(spec)?;
        }
        Ok(())
    }

    pub fn function_arg(&mut self, arg: &FunctionArg) -> Result<(), Refusal> {
        let value = match arg {
            FunctionArg::Named { arg, .. } | FunctionArg::Unnamed(arg) => arg,
            FunctionArg::ExprNamed { name, arg, .. } => {
                self.operand(name, reason::FUNCTION)?;
                arg
            }
        };
        match value {
            FunctionArgExpr::Expr(x) => self.operand(x, reason::FUNCTION),
            FunctionArgExpr::QualifiedWildcard(name) => self.whole_row(name),
            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => Ok(()),
        }
    }

    /// ORDER BY items inside aggregates and windows.
    fn order_items(&mut self, items: &[OrderByExpr]) -> Result<(), Refusal> {
        for item in items {
            self.operand(&item.expr, reason::ORDERING)?;
        }
        Ok(())
    }

    pub fn window_spec(&mut self, spec: &WindowSpec) -> Result<(), Refusal> {
        for x in &spec.partition_by {
            self.operand(x, reason::ORDERING)?;
        }
        self.order_items(&spec.order_by)?;
        if let Some(frame) = &spec.window_frame {
            for bound in std::iter::once(&frame.start_bound).chain(frame.end_bound.as_ref()) {
                if let WindowFrameBound::Preceding(Some(x)) | WindowFrameBound::Following(Some(x)) =
                    bound
                {
                    self.operand(x, reason::FUNCTION)?;
                }
            }
        }
        Ok(())
    }

    /// For syntax this walker does not model: refuse if anything inside
    /// could be a protected column, a whole row of one, or a protected table.
    pub fn conservative<T: Visit + ?Sized>(&mut self, node: &T) -> Result<(), Refusal> {
        let mut scan = Scan { cx: self };
        match node.visit(&mut scan) {
            ControlFlow::Break(r) => Err(r),
            ControlFlow::Continue(()) => Ok(()),
        }
    }
}

/// A compared value, as a multi-version lookup sees it.
enum Compared {
    /// A bare literal or `$n`: expandable.
    Bare(CompareValue),
    /// Encrypted, but behind a cast or parentheses: one version only.
    Rigid,
    /// NULL or a subquery: nothing encrypted.
    Nothing,
}

fn strip_nested(e: &Expr) -> &Expr {
    match e {
        Expr::Nested(inner) => strip_nested(inner),
        other => other,
    }
}

/// The conservative scan behind [`Cx::conservative`].
struct Scan<'c, 'a> {
    cx: &'c mut Cx<'a>,
}

impl Visitor for Scan<'_, '_> {
    type Break = Refusal;

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<Refusal> {
        let found = match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => self.cx.column_of(e),
            Expr::QualifiedWildcard(name, _) => self.cx.whole_row(name).map(|()| None),
            _ => Ok(None),
        };
        match found {
            Err(r) => ControlFlow::Break(r),
            Ok(Some(c)) => ControlFlow::Break(self.cx.refuse_col(c, reason::UNSUPPORTED_SYNTAX)),
            Ok(None) => ControlFlow::Continue(()),
        }
    }

    /// Any identifier spelling a protected table's name (ONLY, aliases,
    /// names in positions this scan does not model) counts.
    fn pre_visit_ident(&mut self, ident: &sqlparser::ast::Ident) -> ControlFlow<Refusal> {
        match self.cx.policy.table_named(&super::policy::fold(ident)) {
            Some(t) => ControlFlow::Break(self.cx.refuse_table(t, reason::UNSUPPORTED_SYNTAX)),
            None => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<Refusal> {
        match self.cx.protected_table(name) {
            Err(r) => ControlFlow::Break(r),
            Ok(Some(t)) => ControlFlow::Break(self.cx.refuse_table(t, reason::UNSUPPORTED_SYNTAX)),
            Ok(None) => ControlFlow::Continue(()),
        }
    }
}
