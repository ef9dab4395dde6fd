//! A bound on how deep a statement's syntax tree can get, checked on the
//! raw text before any parser builds the tree. Deeply nested expressions
//! (20,000 `OR`s, 5,000 parentheses) make recursive walks and even the
//! tree's drop overflow the stack, which aborts the process for every
//! tenant; refusing them up front keeps one client's input from doing that.
//!
//! The scan lexes just enough of PostgreSQL to never miss an operator:
//! quoted strings (with `E''` backslash escapes), quoted identifiers,
//! dollar-quoted strings and comments are skipped, so nothing can hide
//! operators from the count. Anything it cannot classify is counted.

/// Most binary operators and AND/OR a planned statement may hold.
pub const MAX_OPERATORS: usize = 2_000;
/// Deepest parenthesis nesting a planned statement may have.
pub const MAX_NESTING: usize = 100;

/// True when `sql` is too deeply nested or operator-heavy to analyse safely.
pub fn too_complex(sql: &[u8]) -> bool {
    let (operators, nesting) = measure(sql);
    operators > MAX_OPERATORS || nesting > MAX_NESTING
}

/// (operator count, maximum parenthesis depth).
pub fn measure(sql: &[u8]) -> (usize, usize) {
    let (mut i, mut ops, mut depth, mut max_depth) = (0, 0usize, 0usize, 0usize);
    while i < sql.len() {
        let c = sql[i];
        i = match c {
            b'\'' => skip_quoted(sql, i, escape_string(sql, i)),
            b'"' => skip_quoted(sql, i, false),
            b'-' if sql.get(i + 1) == Some(&b'-') => skip_line(sql, i),
            b'/' if sql.get(i + 1) == Some(&b'*') => skip_block(sql, i),
            b'$' => skip_dollar(sql, i),
            b'(' => {
                depth += 1;
                max_depth = max_depth.max(depth);
                i + 1
            }
            b')' => {
                depth = depth.saturating_sub(1);
                i + 1
            }
            b'+' | b'-' | b'*' | b'/' | b'<' | b'>' | b'=' | b'~' | b'!' | b'@' | b'#' | b'%'
            | b'^' | b'&' | b'|' | b'`' | b'?' => {
                ops += 1;
                let mut j = i + 1;
                while j < sql.len() && b"+-*/<>=~!@#%^&|`?".contains(&sql[j]) {
                    j += 1;
                }
                j
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 => {
                let mut j = i + 1;
                while j < sql.len()
                    && (sql[j].is_ascii_alphanumeric()
                        || sql[j] == b'_'
                        || sql[j] == b'$'
                        || sql[j] >= 0x80)
                {
                    j += 1;
                }
                let word = &sql[i..j];
                if word.eq_ignore_ascii_case(b"and")
                    || word.eq_ignore_ascii_case(b"or")
                    || word.eq_ignore_ascii_case(b"not")
                {
                    ops += 1;
                }
                j
            }
            _ => i + 1,
        };
    }
    (ops, max_depth)
}

/// `E'...'` / `e'...'`: backslash escapes inside.
fn escape_string(sql: &[u8], quote: usize) -> bool {
    quote > 0
        && matches!(sql[quote - 1], b'E' | b'e')
        && (quote < 2 || !(sql[quote - 2].is_ascii_alphanumeric() || sql[quote - 2] == b'_'))
}

/// Past the closing quote (a doubled quote continues the string).
fn skip_quoted(sql: &[u8], open: usize, backslash: bool) -> usize {
    let q = sql[open];
    let mut i = open + 1;
    while i < sql.len() {
        if backslash && sql[i] == b'\\' {
            i += 2;
            continue;
        }
        if sql[i] == q {
            if sql.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    sql.len()
}

fn skip_line(sql: &[u8], start: usize) -> usize {
    memchr::memchr(b'\n', &sql[start..]).map_or(sql.len(), |n| start + n + 1)
}

/// Block comments nest in PostgreSQL.
fn skip_block(sql: &[u8], start: usize) -> usize {
    let (mut i, mut depth) = (start + 2, 1usize);
    while i < sql.len() {
        if sql[i] == b'/' && sql.get(i + 1) == Some(&b'*') {
            depth += 1;
            i += 2;
        } else if sql[i] == b'*' && sql.get(i + 1) == Some(&b'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    sql.len()
}

/// `$tag$ ... $tag$`; a `$` that does not open one (e.g. `$1`) is skipped.
fn skip_dollar(sql: &[u8], start: usize) -> usize {
    let mut j = start + 1;
    while j < sql.len() && (sql[j].is_ascii_alphanumeric() || sql[j] == b'_') {
        j += 1;
    }
    if j >= sql.len() || sql[j] != b'$' || sql[start + 1..j].first().is_some_and(u8::is_ascii_digit)
    {
        return start + 1;
    }
    let tag = &sql[start..=j];
    let body = j + 1;
    sql[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(sql.len(), |p| body + p + tag.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_operators_and_nesting() {
        assert_eq!(
            measure(b"select a from t where x = 1 and (y < 2 or z)"),
            (4, 1)
        );
        assert!(too_complex(" or id = 0".repeat(3_000).as_bytes()));
        assert!(too_complex(
            format!("{}1{}", "(".repeat(200), ")".repeat(200)).as_bytes()
        ));
        assert!(!too_complex(
            b"insert into t (a, b) values ('x', 'y'), ('z', 'w')"
        ));
    }

    #[test]
    fn strings_and_comments_cannot_hide_operators() {
        let tail = " or x = 1".repeat(3_000);
        for prefix in [
            "E'\\''",
            "'it''s'",
            "-- '\n",
            "/* ' /* nested */ ' */",
            "$$ ' $$",
            "$a$ x $a$",
            "\"col'\"",
        ] {
            let sql = format!("select 1 where {prefix}{tail}");
            assert!(too_complex(sql.as_bytes()), "{prefix}");
        }
    }

    #[test]
    fn operators_inside_strings_do_not_count() {
        let sql = format!("select '{}'", " or ".repeat(5_000));
        assert!(!too_complex(sql.as_bytes()));
    }
}
