//! Text → `Config`, one section at a time so that one bad entry does not
//! hide the problems of the others.
use std::collections::BTreeMap;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer as _};
use toml_edit::{ImDocument, Item, Table};

use super::interp::{Interpolator, scrub};
use super::locate::{Locator, join};
use super::validate::{Names, Origins, TableOrigin, validate};
use super::{AuditConfig, Config, ConfigError, ServerConfig, TableConfig, ident};

const SECTIONS: &str = "server, users, regions, kms, tenants, table, audit";

/// Collects problems for one file, each resolved to a line and key path.
pub(crate) struct Problems<'a> {
    pub file: &'a Path,
    pub loc: &'a Locator,
    pub list: Vec<ConfigError>,
}

impl Problems<'_> {
    /// A problem at the key `path` (or its nearest present ancestor).
    pub(crate) fn at(&mut self, path: &str, message: impl Into<String>) {
        let line = self.loc.line_of(path);
        self.push(line, path, message);
    }

    pub(crate) fn push(&mut self, line: Option<usize>, key: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    fn serde(&mut self, section: &str, err: &toml_edit::de::Error) {
        let span_path = err
            .span()
            .and_then(|s| self.loc.path_at(s.start))
            .filter(|p| p.starts_with(section))
            .map(str::to_owned);
        let line = err
            .span()
            .map(|s| self.loc.line_at(s.start))
            .or_else(|| self.loc.line_of(section));
        let mut key = span_path.unwrap_or_else(|| section.to_owned());
        let message = without_quoted_string(err.message().trim());
        // serde's "missing field `x`" carries no span; name the field in the key.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            key = join(&key, field);
        }
        self.push(line, &key, message);
    }
}

/// serde's type errors quote the string they got (`invalid type: string
/// "postgres://u:pw@…", expected …`); that string may be a password written
/// where a table was expected, so it is cut out.
fn without_quoted_string(message: &str) -> String {
    for prefix in ["invalid type: string \"", "invalid value: string \""] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let kind = &prefix[..prefix.len() - 2];
            return match rest.rfind("\", expected ") {
                Some(i) => format!("{kind}{}", &rest[i + 1..]),
                None => kind.to_owned(),
            };
        }
    }
    message.to_owned()
}

/// Parses, interpolates and validates `text`; `env` looks variables up.
pub(crate) fn parse_with_env(
    text: &str,
    file: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => return Err(vec![syntax_error(text, file, &e)]),
    };
    let loc = Locator::new(doc.as_table(), text);
    let mut p = Problems {
        file,
        loc: &loc,
        list: Vec::new(),
    };
    let mut root = doc.as_table().clone();
    let mut interp = Interpolator::new(env);
    interp.table(&mut root, "");
    for e in &interp.errors {
        let line = e
            .span
            .as_ref()
            .map(|s| loc.line_at(s.start))
            .or_else(|| loc.line_of(&e.path));
        p.push(line, &e.path, e.message.clone());
    }
    let names = Names::from_document(&root);
    let (cfg, origins) = build(&root, file, &mut p);
    validate(&cfg, &names, &origins, &mut p);
    let Problems { mut list, .. } = p;
    if list.is_empty() {
        return Ok(cfg);
    }
    for e in &mut list {
        e.message = scrub(&e.message, &interp.substituted);
    }
    list.sort_by_key(|e| e.line.unwrap_or(0));
    Err(list)
}

fn syntax_error(text: &str, file: &Path, e: &toml_edit::TomlError) -> ConfigError {
    // Parse errors carry a character span, not a byte span.
    let line = e
        .span()
        .map(|s| 1 + text.chars().take(s.start).filter(|&c| c == '\n').count());
    let message = e.message().trim().replace('\n', "; ");
    ConfigError {
        file: file.to_path_buf(),
        line,
        key: "(syntax)".to_owned(),
        message: format!("invalid TOML: {message}"),
    }
}

/// Builds as much of the config as deserializes; problems go to `p`.
/// `Origins` remembers where each list entry sits in the file.
fn build(root: &Table, file: &Path, p: &mut Problems<'_>) -> (Config, Origins) {
    let mut origins = Origins::default();
    let mut cfg = Config {
        path: file.to_path_buf(),
        server: ServerConfig::default(),
        users: Vec::new(),
        regions: BTreeMap::new(),
        kms: BTreeMap::new(),
        tenants: BTreeMap::new(),
        tables: Vec::new(),
        audit: AuditConfig::default(),
    };
    for (name, item) in root {
        match name {
            "server" => cfg.server = one(item, "server", p).unwrap_or_default(),
            "audit" => cfg.audit = one(item, "audit", p).unwrap_or_default(),
            "users" => {
                (origins.users, cfg.users) = list(item, "users", p).into_iter().unzip();
            }
            "table" => {
                let (idx, tables): (Vec<usize>, Vec<TableConfig>) =
                    list(item, "table", p).into_iter().unzip();
                cfg.tables = tables;
                origins.tables = idx
                    .into_iter()
                    .map(|index| TableOrigin {
                        index,
                        raw_columns: BTreeMap::new(),
                    })
                    .collect();
            }
            "regions" => cfg.regions = named(item, "regions", p),
            "kms" => cfg.kms = named(item, "kms", p),
            "tenants" => cfg.tenants = named(item, "tenants", p),
            other => {
                let hint = match other {
                    "tables" => " (policy tables are written [[table]])",
                    "user" => " (users are written [[users]])",
                    "region" | "tenant" => " (the section name is plural)",
                    _ => "",
                };
                p.at(
                    &join("", other),
                    format!("unknown section{hint}; expected one of {SECTIONS}"),
                );
            }
        }
    }
    normalize_tables(&mut cfg.tables, &mut origins.tables, p);
    (cfg, origins)
}

/// Deserializes one entry. serde stops at the first error, so after each
/// error the offending key is dropped and the entry tried again: an unknown
/// key does not hide a bad value beside it. What is left is returned so the
/// cross-field checks still see it (the file is refused anyway).
fn one<T: DeserializeOwned>(item: &Item, path: &str, p: &mut Problems<'_>) -> Option<T> {
    let mut item = item.clone();
    let mut removed: Vec<String> = Vec::new();
    // Each round removes one key, so this ends; the bound is a backstop.
    for _ in 0..256 {
        let value = item.clone().into_value().ok()?;
        let err = match T::deserialize(value.into_deserializer()) {
            Ok(v) => return Some(v),
            Err(e) => e,
        };
        let missing = err
            .message()
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'));
        if missing.is_some_and(|f| removed.iter().any(|r| r == f)) {
            return None; // already reported under its own key
        }
        p.serde(path, &err);
        let offset = err.span()?.start;
        let key_path = deepest_key(item.as_table_like()?, offset)?;
        removed.push(remove_path(&mut item, &key_path)?);
    }
    None
}

/// Key path (within one entry) of the deepest key whose key or value
/// contains `offset`.
fn deepest_key(table: &dyn toml_edit::TableLike, offset: usize) -> Option<Vec<String>> {
    let hit = |r: Option<std::ops::Range<usize>>| r.is_some_and(|r| r.contains(&offset));
    for (name, child) in table.iter() {
        if let Some(mut deeper) = child.as_table_like().and_then(|t| deepest_key(t, offset)) {
            deeper.insert(0, name.to_owned());
            return Some(deeper);
        }
        if hit(child.span()) || hit(table.key(name).and_then(toml_edit::Key::span)) {
            return Some(vec![name.to_owned()]);
        }
    }
    None
}

/// Removes the key at `path` and returns its name.
fn remove_path(item: &mut Item, path: &[String]) -> Option<String> {
    let (last, parents) = path.split_last()?;
    let mut cur = item;
    for name in parents {
        cur = cur.as_table_like_mut()?.get_mut(name)?;
    }
    cur.as_table_like_mut()?.remove(last)?;
    Some(last.clone())
}

/// `[[users]]` / `[[table]]` (or an inline array of tables), each with its
/// index in the file.
fn list<T: DeserializeOwned>(item: &Item, path: &str, p: &mut Problems<'_>) -> Vec<(usize, T)> {
    let elements: Vec<Item> = match item {
        Item::ArrayOfTables(a) => a.iter().cloned().map(Item::Table).collect(),
        Item::Value(toml_edit::Value::Array(a)) => a.iter().cloned().map(Item::Value).collect(),
        _ => {
            p.at(
                path,
                format!("must be an array of tables: write [[{path}]] for each entry"),
            );
            return Vec::new();
        }
    };
    elements
        .iter()
        .enumerate()
        .filter_map(|(i, el)| one(el, &format!("{path}[{i}]"), p).map(|v| (i, v)))
        .collect()
}

/// `[regions.NAME]`, `[kms.NAME]`, `[tenants.NAME]`.
fn named<T: DeserializeOwned>(
    item: &Item,
    path: &str,
    p: &mut Problems<'_>,
) -> BTreeMap<String, T> {
    let Some(table) = item.as_table_like() else {
        p.at(
            path,
            format!("must be a table of named entries: write [{path}.NAME]"),
        );
        return BTreeMap::new();
    };
    table
        .iter()
        .filter_map(|(name, el)| one(el, &join(path, name), p).map(|v| (name.to_owned(), v)))
        .collect()
}

/// Folds column names the way `PostgreSQL` does, so the policy names exactly
/// what the catalog holds. Two spellings of one column are a problem.
fn normalize_tables(tables: &mut [TableConfig], origins: &mut [TableOrigin], p: &mut Problems<'_>) {
    for (t, origin) in tables.iter_mut().zip(origins) {
        let base = format!("table[{}]", origin.index);
        let mut columns = BTreeMap::new();
        let cols = join(&base, "columns");
        for (raw, mode) in std::mem::take(&mut t.columns) {
            let key = join(&cols, &raw);
            let folded = match ident::fold_one(&raw) {
                Ok(f) => f,
                Err(e) => {
                    p.at(&key, format!("invalid column name: {e}"));
                    continue;
                }
            };
            let Some(prev) = columns.insert(folded.clone(), mode) else {
                origin.raw_columns.insert(folded, raw);
                continue;
            };
            let what = if prev == mode {
                "is listed twice"
            } else {
                "is listed in two modes"
            };
            // Report at whichever spelling comes later in the file.
            let other = join(&cols, &origin.raw_columns[&folded]);
            let (first, second) = if p.loc.line_of(&other) <= p.loc.line_of(&key) {
                (other, key)
            } else {
                (key, other)
            };
            let at = p
                .loc
                .line_of(&first)
                .map_or_else(String::new, |l| format!(" (also at line {l})"));
            p.at(
                &second,
                format!("column `{folded}` {what}{at}; unquoted names are folded to lower case"),
            );
        }
        t.columns = columns;
        let fields = [
            ("tenant_column", t.tenant_column.as_mut()),
            ("chain_seq_column", Some(&mut t.chain_seq_column)),
            ("prev_hash_column", Some(&mut t.prev_hash_column)),
            ("row_hash_column", Some(&mut t.row_hash_column)),
        ];
        for (field, value) in fields {
            if let Some(v) = value {
                match ident::fold_one(v) {
                    Ok(folded) => *v = folded,
                    Err(e) => p.at(&join(&base, field), format!("invalid column name: {e}")),
                }
            }
        }
    }
}
