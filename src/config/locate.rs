//! Maps dotted key paths (`tenants.acme.region`, `table[1].columns.email`)
//! to lines of the file, and byte offsets back to paths.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;

use toml_edit::{Item, Table, TableLike, Value};

struct Entry {
    path: String,
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
}

/// Built once per parse from the spans `toml_edit::ImDocument` keeps.
pub(crate) struct Locator {
    entries: Vec<Entry>,
    by_path: HashMap<String, usize>,
    line_starts: Vec<usize>,
}

impl Locator {
    pub(crate) fn new(root: &Table, text: &str) -> Self {
        let mut loc = Self {
            entries: Vec::new(),
            by_path: HashMap::new(),
            line_starts: std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        };
        loc.walk_table(root, "");
        loc
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line_at(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    /// Line of the key at `path`, or of the nearest enclosing key that the
    /// file has (a missing `users[0].password` is reported at its
    /// `[[users]]` header).
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(&i) = self.by_path.get(p) {
                let e = &self.entries[i];
                if let Some(span) = e.key.as_ref().or(e.value.as_ref()) {
                    return Some(self.line_at(span.start));
                }
            }
            p = parent(p)?;
        }
    }

    /// The deepest path whose key or value contains `offset`.
    pub(crate) fn path_at(&self, offset: usize) -> Option<&str> {
        let inside = |r: &Option<Range<usize>>| r.as_ref().is_some_and(|r| r.contains(&offset));
        self.entries
            .iter()
            .filter(|e| inside(&e.key) || inside(&e.value))
            .max_by_key(|e| e.path.len())
            .map(|e| e.path.as_str())
    }

    fn push(&mut self, path: String, key: Option<Range<usize>>, value: Option<Range<usize>>) {
        self.by_path.insert(path.clone(), self.entries.len());
        self.entries.push(Entry { path, key, value });
    }

    fn walk_table(&mut self, table: &dyn TableLike, prefix: &str) {
        for (name, item) in table.iter() {
            let path = join(prefix, name);
            let key_span = table.key(name).and_then(toml_edit::Key::span);
            self.push(path.clone(), key_span, item.span());
            self.walk_item(item, &path);
        }
    }

    fn walk_item(&mut self, item: &Item, path: &str) {
        match item {
            Item::Table(t) => self.walk_table(t, path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(p.clone(), t.span(), t.span());
                    self.walk_table(t, &p);
                }
            }
            Item::Value(v) => self.walk_value(v, path),
            Item::None => {}
        }
    }

    fn walk_value(&mut self, value: &Value, path: &str) {
        match value {
            Value::InlineTable(t) => self.walk_table(t, path),
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    self.push(p.clone(), None, v.span());
                    self.walk_value(v, &p);
                }
            }
            _ => {}
        }
    }
}

/// `a.b` + `c` → `a.b.c`, quoting keys that are not bare TOML keys.
pub(crate) fn join(prefix: &str, name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let mut out = String::from(prefix);
    if !prefix.is_empty() {
        out.push('.');
    }
    if bare {
        out.push_str(name);
    } else {
        out.push('"');
        for c in name.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{:04X}", u32::from(c));
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a`; quoted segments are respected.
fn parent(path: &str) -> Option<&str> {
    let mut in_quotes = false;
    let mut escaped = false;
    let mut cut = None;
    for (i, c) in path.char_indices() {
        if in_quotes {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_quotes = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' => in_quotes = true,
            '.' | '[' => cut = Some(i),
            _ => {}
        }
    }
    cut.map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents() {
        assert_eq!(parent("a.b[2].c"), Some("a.b[2]"));
        assert_eq!(parent("a.b[2]"), Some("a.b"));
        assert_eq!(parent("a.\"x.y\""), Some("a"));
        assert_eq!(parent("a"), None);
        assert_eq!(join("kms", "prod-aws"), "kms.prod-aws");
        assert_eq!(join("t", "a.b"), "t.\"a.b\"");
    }
}
