//! `${NAME}` interpolation from the environment.
//!
//! Done on the parsed document's string values, not on the raw text: a value
//! with a quote or a newline cannot break the TOML, and every other span (so
//! every line number) stays as the file has it. `$${` writes a literal `${`.
use toml_edit::{Formatted, Item, TableLike, Value};

use super::locate::join;

/// One problem found while interpolating: where, and what.
pub(crate) struct InterpError {
    pub path: String,
    pub span: Option<std::ops::Range<usize>>,
    pub message: String,
}

/// Walks the tree, replaces `${NAME}` in every string value, and returns
/// the values that came from the environment (so messages can scrub them).
pub(crate) struct Interpolator<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    pub errors: Vec<InterpError>,
    pub substituted: Vec<String>,
}

impl<'a> Interpolator<'a> {
    pub(crate) fn new(env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            env,
            errors: Vec::new(),
            substituted: Vec::new(),
        }
    }

    pub(crate) fn table(&mut self, table: &mut dyn TableLike, prefix: &str) {
        for (key, item) in table.iter_mut() {
            let path = join(prefix, key.get());
            self.item(item, &path);
        }
    }

    fn item(&mut self, item: &mut Item, path: &str) {
        match item {
            Item::Table(t) => self.table(t, path),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter_mut().enumerate() {
                    self.table(t, &format!("{path}[{i}]"));
                }
            }
            Item::Value(v) => self.value(v, path),
            Item::None => {}
        }
    }

    fn value(&mut self, value: &mut Value, path: &str) {
        match value {
            Value::String(s) if s.value().contains('$') => {
                let span = s.span();
                match expand(s.value(), self.env) {
                    Ok(Expanded { text, from_env }) => {
                        if from_env {
                            self.substituted.push(text.clone());
                        }
                        *s = Formatted::new(text);
                    }
                    Err(message) => self.errors.push(InterpError {
                        path: path.to_owned(),
                        span,
                        message,
                    }),
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter_mut().enumerate() {
                    self.value(v, &format!("{path}[{i}]"));
                }
            }
            Value::InlineTable(t) => self.table(t, path),
            _ => {}
        }
    }
}

#[derive(Debug)]
pub(crate) struct Expanded {
    pub text: String,
    pub from_env: bool,
}

/// Expands one string. Errors name the variable, never a value.
pub(crate) fn expand(
    input: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, String> {
    let mut text = String::with_capacity(input.len());
    let mut from_env = false;
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        text.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$${") {
            text.push_str("${");
            rest = after;
        } else if let Some(after) = tail.strip_prefix("${") {
            let end = after.find('}').ok_or_else(|| {
                "`${` without a closing `}` (write `$${` for a literal `${`)".to_owned()
            })?;
            let name = &after[..end];
            if !valid_name(name) {
                return Err(format!(
                    "`${{{name}}}` is not a valid variable name (letters, digits and '_', not starting with a digit; write `$${{` for a literal `${{`)"
                ));
            }
            let value = env(name).ok_or_else(|| {
                format!("environment variable {name} is not set (or is not valid UTF-8)")
            })?;
            text.push_str(&value);
            from_env = true;
            rest = &after[end + 1..];
        } else {
            text.push('$');
            rest = &tail[1..];
        }
    }
    text.push_str(rest);
    Ok(Expanded { text, from_env })
}

fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Replaces every value that came from the environment by `***` in a
/// message (serde's type errors quote the offending value). Very short
/// values are left alone: they cannot be secrets worth the garbling.
pub(crate) fn scrub(message: &str, substituted: &[String]) -> String {
    let mut out = message.to_owned();
    for value in substituted.iter().filter(|v| v.len() >= 3) {
        out = out.replace(value.as_str(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "PW" => Some("s3cr\"et\nx".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_and_escapes() {
        let e = expand("a${PW}b", &env).unwrap();
        assert_eq!(e.text, "as3cr\"et\nxb");
        assert!(e.from_env);
        let e = expand("cost $5 $${PW} $$", &env).unwrap();
        assert_eq!(e.text, "cost $5 ${PW} $$");
        assert!(!e.from_env);
        assert_eq!(expand("${EMPTY}", &env).unwrap().text, "");
    }

    #[test]
    fn errors_name_the_variable_only() {
        let err = expand("${NOPE}", &env).unwrap_err();
        assert!(err.contains("NOPE"), "{err}");
        assert!(expand("${PW", &env).is_err());
        assert!(expand("${1X}", &env).is_err());
        assert!(expand("${}", &env).is_err());
    }

    #[test]
    fn scrubs_substituted_values() {
        let subs = vec!["hunter22".to_owned(), "ab".to_owned()];
        assert_eq!(
            scrub("invalid type: string \"hunter22\", expected u16 ab", &subs),
            "invalid type: string \"***\", expected u16 ab"
        );
    }
}
