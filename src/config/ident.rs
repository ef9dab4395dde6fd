//! `PostgreSQL` identifier rules for the names a policy uses.
//!
//! The policy must name exactly what the catalog holds, so names are folded
//! the way the server folds them: an unquoted identifier becomes lower case
//! (ASCII only, like `PostgreSQL` with a `UTF-8` database), a double-quoted one
//! is kept as is with `""` meaning one `"`.

/// `PostgreSQL` silently truncates longer names (`NAMEDATALEN` - 1).
const MAX_IDENT_BYTES: usize = 63;

/// Splits a possibly qualified name (`schema.table`, `"My Schema"."T"`)
/// into folded parts.
pub(crate) fn split_qualified(name: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut rest = name.trim();
    loop {
        let (part, tail) = take_ident(rest)?;
        parts.push(part);
        let tail = tail.trim_start();
        if tail.is_empty() {
            return Ok(parts);
        }
        rest = tail
            .strip_prefix('.')
            .ok_or_else(|| {
                "unexpected text after an identifier (quote names that contain spaces or punctuation, e.g. '\"My Table\"')"
                    .to_owned()
            })?
            .trim_start();
    }
}

/// Folds one identifier; a dot is only allowed inside quotes.
pub(crate) fn fold_one(name: &str) -> Result<String, String> {
    let (part, tail) = take_ident(name.trim())?;
    if tail.trim().is_empty() {
        Ok(part)
    } else {
        Err("expected a single column name (quote it if it contains dots or spaces)".to_owned())
    }
}

fn take_ident(s: &str) -> Result<(String, &str), String> {
    let (ident, tail) = if let Some(body) = s.strip_prefix('"') {
        take_quoted(body)?
    } else {
        take_unquoted(s)?
    };
    if ident.len() > MAX_IDENT_BYTES {
        return Err(format!(
            "identifier is longer than {MAX_IDENT_BYTES} bytes; PostgreSQL would truncate it"
        ));
    }
    Ok((ident, tail))
}

fn take_quoted(body: &str) -> Result<(String, &str), String> {
    let mut out = String::new();
    let mut chars = body.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            if chars.next_if(|&(_, n)| n == '"').is_some() {
                out.push('"');
                continue;
            }
            if out.is_empty() {
                return Err("empty quoted identifier".to_owned());
            }
            return Ok((out, &body[i + 1..]));
        }
        out.push(c);
    }
    Err("quoted identifier is missing its closing '\"'".to_owned())
}

fn take_unquoted(s: &str) -> Result<(String, &str), String> {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .unwrap_or(s.len());
    let ident = &s[..end];
    match ident.chars().next() {
        None => Err("empty name".to_owned()),
        Some(c) if !(c.is_alphabetic() || c == '_') => Err(
            "an unquoted identifier must start with a letter or '_' (quote it otherwise)"
                .to_owned(),
        ),
        Some(_) => Ok((ident.to_ascii_lowercase(), &s[end..])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_like_postgres() {
        assert_eq!(split_qualified("Customers").unwrap(), ["customers"]);
        assert_eq!(
            split_qualified("Sales.\"Big Orders\"").unwrap(),
            ["sales", "Big Orders"]
        );
        assert_eq!(split_qualified(" a . b ").unwrap(), ["a", "b"]);
        assert_eq!(split_qualified("\"a\"\"b\"").unwrap(), ["a\"b"]);
        assert_eq!(fold_one("\"x.y\"").unwrap(), "x.y");
        assert!(split_qualified("a b").is_err());
        assert!(split_qualified("1abc").is_err());
        assert!(split_qualified("\"open").is_err());
        assert!(split_qualified("a.").is_err());
        assert!(fold_one("a.b").is_err());
        assert!(fold_one(&"x".repeat(64)).is_err());
    }
}
