//! The protected tables as the planner sees them, and PostgreSQL's rules for
//! turning written names into stored ones.

use std::collections::HashMap;

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

pub use crate::config::ColumnMode;
use crate::rewrite::Classifier;

use super::{ColumnRef, Refusal};

/// PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
const MAX_IDENT_BYTES: usize = 63;

/// The schema an unqualified table name resolves to (search_path assumed to
/// be the default `"$user", public`; see docs/SQL-SUPPORT.md).
pub const DEFAULT_SCHEMA: &str = "public";

/// One protected table, with names already folded as PostgreSQL stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    pub schema: String,
    pub table: String,
    pub tenant_column: Option<String>,
    /// Protected columns and their modes (folded names).
    pub columns: Vec<(String, ColumnMode)>,
    pub append_only: bool,
    /// Column names of the table in attnum order, when known from the catalog
    /// (for INSERT without a column list and COPY); `None` = unknown.
    pub all_columns: Option<Vec<String>>,
}

impl PolicyTable {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|(c, _)| c == name)
    }

    pub fn is_tenant_column(&self, name: &str) -> bool {
        self.tenant_column.as_deref() == Some(name)
    }

    /// `schema.table`, quoted where PostgreSQL would need quotes.
    pub fn display_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }

    /// True when an INSERT or COPY needs to know which value goes where.
    pub fn needs_column_mapping(&self) -> bool {
        !self.columns.is_empty() || self.tenant_column.is_some()
    }
}

/// What the planner must enforce on an append-only relation beyond
/// refusing changes (docs/AUDIT.md).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuditRules {
    /// `chain_seq`, `prev_hash`, `row_hash` (folded) when `hash_chain` is on:
    /// the database trigger fills them, a client may not.
    pub chain: Option<[String; 3]>,
    /// The chain trigger is attached in the database. Without it an INSERT
    /// would store an unchained row, so INSERT and COPY FROM are refused.
    pub chain_ready: bool,
    /// A view over an append-only table: every write through it is refused.
    pub view: bool,
}

impl AuditRules {
    /// The chain column `name` is one of, if any.
    pub fn chain_column(&self, name: &str) -> Option<&str> {
        self.chain
            .as_ref()
            .and_then(|c| c.iter().find(|c| *c == name))
            .map(String::as_str)
    }
}

/// The protected tables, indexed for name resolution.
#[derive(Debug, Clone, Default)]
pub struct PolicyView {
    tables: Vec<PolicyTable>,
    by_name: HashMap<String, Vec<usize>>,
    classifier: Classifier,
    /// Append-only rules by table index (only for `append_only` tables).
    audit: HashMap<usize, AuditRules>,
}

impl PolicyView {
    pub fn new(tables: Vec<PolicyTable>) -> Self {
        let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, t) in tables.iter().enumerate() {
            by_name.entry(t.table.clone()).or_default().push(i);
        }
        let classifier =
            Classifier::new(tables.iter().map(|t| (t.table.clone(), t.display_name())));
        Self {
            tables,
            by_name,
            classifier,
            audit: HashMap::new(),
        }
    }

    /// Attach the append-only rules of tables (by index).
    #[must_use]
    pub fn with_audit(mut self, rules: impl IntoIterator<Item = (usize, AuditRules)>) -> Self {
        self.audit.extend(rules);
        self
    }

    /// The append-only rules of table `t` (default rules when it is
    /// append-only without any recorded; `None` when it is not append-only).
    pub fn audit(&self, t: usize) -> Option<std::borrow::Cow<'_, AuditRules>> {
        if !self.tables[t].append_only {
            return None;
        }
        Some(match self.audit.get(&t) {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(AuditRules::default()),
        })
    }

    /// The append-only table a written name (folded parts) may denote.
    /// Deliberately wider than [`PolicyView::resolve_table`]: an unqualified
    /// name matches an append-only table of that name in any schema, since
    /// the session's `search_path` (which byokpg does not track) decides
    /// which one PostgreSQL picks.
    pub fn append_only_named(&self, parts: &[String]) -> Option<usize> {
        let (schema, name) = match parts {
            [name] => (None, name),
            [schema, name] | [_, schema, name] => (Some(schema), name),
            _ => return None,
        };
        self.by_name.get(name)?.iter().copied().find(|&i| {
            self.tables[i].append_only && schema.is_none_or(|s| *s == self.tables[i].schema)
        })
    }

    /// Display names of the append-only relations `text` may name, joined.
    pub fn append_only_mentions(&self, text: &str) -> Option<String> {
        let hits: Vec<String> = self
            .classifier
            .hits(text.as_bytes())
            .into_iter()
            .filter(|h| {
                self.tables
                    .iter()
                    .any(|t| t.append_only && t.display_name() == *h)
            })
            .collect();
        (!hits.is_empty()).then(|| hits.join(", "))
    }

    pub fn tables(&self) -> &[PolicyTable] {
        &self.tables
    }

    pub fn table(&self, index: usize) -> &PolicyTable {
        &self.tables[index]
    }

    pub fn column_name(&self, column: ColumnRef) -> &str {
        &self.tables[column.table].columns[column.column].0
    }

    pub fn mode(&self, column: ColumnRef) -> ColumnMode {
        self.tables[column.table].columns[column.column].1
    }

    /// `schema.table.column` for messages.
    pub fn column_display(&self, column: ColumnRef) -> String {
        format!(
            "{}.{}",
            self.tables[column.table].display_name(),
            quote_ident(self.column_name(column))
        )
    }

    /// The protected column `name` of `table`, if it is one.
    pub fn column(&self, table: usize, name: &str) -> Option<ColumnRef> {
        self.tables[table]
            .column_index(name)
            .map(|column| ColumnRef { table, column })
    }

    /// The refusal for a tenant value that is not the connection's tenant.
    pub fn other_tenant(&self, table: usize) -> Refusal {
        Refusal::Forbidden {
            table: self.tables[table].display_name(),
            reason: "the row's tenant column names another tenant than the connection's".to_owned(),
        }
    }

    /// Display names of the protected tables `text` may name (the
    /// classifier's conservative whole-identifier match), joined by ", ".
    pub fn mentions(&self, text: &str) -> Option<String> {
        let hits = self.classifier.hits(text.as_bytes());
        (!hits.is_empty()).then(|| hits.join(", "))
    }

    /// A protected table with this bare name, in any schema.
    pub fn table_named(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).and_then(|v| v.first().copied())
    }

    /// Resolve a table name written as `parts` (folded) to a protected table.
    /// Unqualified names resolve to the `public` table of that name, else to
    /// the only protected table of that name in another schema (it may be on
    /// the search_path); several such candidates → refused as ambiguous.
    pub fn resolve_table(&self, parts: &[String]) -> Result<Option<usize>, Refusal> {
        let (schema, name) = match parts {
            [name] => (None, name),
            [schema, name] | [_, schema, name] => (Some(schema), name),
            _ => return Ok(None),
        };
        let Some(candidates) = self.by_name.get(name) else {
            return Ok(None);
        };
        if let Some(schema) = schema {
            return Ok(candidates
                .iter()
                .copied()
                .find(|&i| &self.tables[i].schema == schema));
        }
        if let Some(&i) = candidates
            .iter()
            .find(|&&i| self.tables[i].schema == DEFAULT_SCHEMA)
        {
            return Ok(Some(i));
        }
        match candidates.as_slice() {
            [only] => Ok(Some(*only)),
            _ => Err(Refusal::table(
                candidates
                    .iter()
                    .map(|&i| self.tables[i].display_name())
                    .collect::<Vec<_>>()
                    .join(", "),
                "an unqualified table name matches protected tables in several schemas; \
                 qualify it with its schema",
            )),
        }
    }
}

/// An identifier as PostgreSQL stores it: quoted ones verbatim, unquoted ones
/// ASCII-lowercased; both truncated to 63 bytes.
pub fn fold(ident: &Ident) -> String {
    let mut s = if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    };
    if s.len() > MAX_IDENT_BYTES {
        let mut end = MAX_IDENT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The folded parts of an object name; `None` if a part is not a plain
/// identifier.
pub fn fold_name(name: &ObjectName) -> Option<Vec<String>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(fold(i)),
            ObjectNamePart::Function(_) => None,
        })
        .collect()
}

/// Quote an identifier the way `quote_ident` would (without the keyword
/// check).
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_owned()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}
