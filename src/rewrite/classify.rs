//! The fast-path gate: does this SQL text possibly name a protected table?
//!
//! It matches table names as whole identifiers, ASCII case-insensitively,
//! anywhere in the text (also inside comments and string literals). False
//! positives are allowed (they cost a parse later); false negatives are not,
//! so anything that could hide a name from a plain text match — Unicode
//! escaped identifiers `U&"..."` — counts as a hit. Names built at run time
//! (dynamic SQL in functions, `EXECUTE` of concatenated strings) cannot be
//! seen by any proxy: the database-side guards cover those.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

/// Matches protected table names in SQL text.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    matcher: Option<AhoCorasick>,
    /// Display name of each pattern's table (schema-qualified).
    tables: Vec<String>,
}

/// Pseudo-pattern appended after the table names.
const UNICODE_ESCAPE: &str = "u&\"";

impl Classifier {
    /// `tables`: (bare table name as PostgreSQL stores it, display name).
    pub fn new(tables: impl IntoIterator<Item = (String, String)>) -> Self {
        let (mut names, mut display): (Vec<String>, Vec<String>) = tables.into_iter().unzip();
        if names.is_empty() {
            return Self::default();
        }
        names.push(UNICODE_ESCAPE.to_owned());
        display.push("(unicode-escaped identifier)".to_owned());
        let matcher = AhoCorasickBuilder::new()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .build(&names)
            .ok();
        Self {
            matcher,
            tables: display,
        }
    }

    /// True when there is no protected table at all.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The protected tables `sql` may touch; empty means "relay untouched".
    pub fn hits(&self, sql: &[u8]) -> Vec<String> {
        let Some(m) = &self.matcher else {
            return Vec::new();
        };
        let escape_pattern = self.tables.len() - 1;
        let mut out: Vec<String> = Vec::new();
        for hit in m.find_overlapping_iter(sql) {
            let id = hit.pattern().as_usize();
            let whole = id == escape_pattern || is_whole_identifier(sql, hit.start(), hit.end());
            if whole && !out.contains(&self.tables[id]) {
                out.push(self.tables[id].clone());
            }
        }
        out
    }

    pub fn touches(&self, sql: &[u8]) -> bool {
        self.matcher.is_some() && !self.hits(sql).is_empty()
    }
}

/// PostgreSQL identifier characters: letters, digits, `_`, `$`, and any
/// non-ASCII byte (multibyte letters).
fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_whole_identifier(sql: &[u8], start: usize, end: usize) -> bool {
    let before_ok = start == 0 || !is_ident_byte(sql[start - 1]);
    let after_ok = end == sql.len() || !is_ident_byte(sql[end]);
    before_ok && after_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Classifier {
        Classifier::new([
            ("customers".to_owned(), "public.customers".to_owned()),
            ("Audit Log".to_owned(), "app.\"Audit Log\"".to_owned()),
        ])
    }

    #[test]
    fn whole_identifiers_match_in_any_case_and_quoting() {
        let c = c();
        for sql in [
            "select * from customers",
            "SELECT * FROM Public.CUSTOMERS",
            "select * from \"customers\"",
            "with d as (delete from customers returning *) select 1",
            "insert into app.\"Audit Log\" values (1)",
            "select 1; update customers set x = 1",
            "copy customers from stdin",
            "select * from U&\"\\0063ustomers\"",
        ] {
            assert!(c.touches(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn other_identifiers_do_not_match() {
        let c = c();
        for sql in [
            "select * from customers_archive",
            "select * from old_customers",
            "select customers1 from t",
            "select 1",
        ] {
            assert!(!c.touches(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn empty_policy_never_matches() {
        let c = Classifier::new(std::iter::empty());
        assert!(c.is_empty());
        assert!(!c.touches(b"select * from customers"));
    }

    #[test]
    fn hits_name_each_table_once() {
        let h = c().hits(b"select * from customers join customers c2 using (id)");
        assert_eq!(h, vec!["public.customers".to_owned()]);
    }

    proptest::proptest! {
        /// No false negatives: any text that contains the name delimited by
        /// non-identifier bytes is flagged, whatever surrounds it.
        #[test]
        fn no_false_negatives(pre in "[ -~]{0,40}", post in "[ -~]{0,40}", sep1 in "[ ;(,.\"]", sep2 in "[ ;),.\"]") {
            let sql = format!("{pre}{sep1}CusTomers{sep2}{post}");
            proptest::prop_assert!(c().touches(sql.as_bytes()));
        }
    }
}
