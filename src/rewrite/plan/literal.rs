//! Values byokpg can encrypt: literals (decoded from their exact source
//! text), `$n` parameters, NULL and DEFAULT — optionally behind a cast to an
//! unbounded string type.
//!
//! Literals are decoded here from the raw token text, independently of
//! sqlparser, and the two decodings must agree: a literal byokpg might read
//! differently from PostgreSQL is refused rather than encrypted wrongly.

use std::ops::Range;

use sqlparser::ast::{CastKind, DataType, Expr, UnaryOperator, Value, ValueWithSpan};
use sqlparser::tokenizer::{Token, Word};

use super::policy::fold_name;
use super::scope::Cx;

/// Why a value that looks encryptable is not: the caller names the column.
pub const UNDECODABLE: &str = "byokpg could not locate or decode this literal unambiguously \
    (write it as '...' or use a parameter)";
const NOT_A_PARAMETER: &str = "only $n parameters are supported";

/// What a value expression is, as far as encryption goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueForm {
    Literal { range: Range<usize>, value: String },
    Param(usize),
    Null,
    Default,
}

/// `$n` → `n` (1-based); `None` for anything else.
pub fn placeholder_index(p: &str) -> Option<usize> {
    let digits = p.strip_prefix('$')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&n| n >= 1)
}

impl Cx<'_> {
    /// The encryptable form of `e`, or `None` if it is an expression;
    /// `Err(reason)` for a literal byokpg cannot read unambiguously.
    pub fn value_form(&self, e: &Expr) -> Result<Option<ValueForm>, &'static str> {
        match e {
            Expr::Nested(inner) => self.value_form(inner),
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } if is_unbounded_string_type(data_type) => self.value_form(expr),
            Expr::Identifier(id)
                if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default") =>
            {
                Ok(Some(ValueForm::Default))
            }
            Expr::Value(v) => self.plain_value(v, None),
            Expr::UnaryOp {
                op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
                expr,
            } => match expr.as_ref() {
                Expr::Value(v) if matches!(v.value, Value::Number(..)) => {
                    self.plain_value(v, Some(*op))
                }
                _ => Ok(None),
            },
            _ => Ok(None),
        }
    }

    fn plain_value(
        &self,
        v: &ValueWithSpan,
        sign: Option<UnaryOperator>,
    ) -> Result<Option<ValueForm>, &'static str> {
        match &v.value {
            Value::Null => Ok(Some(ValueForm::Null)),
            Value::Placeholder(p) => match placeholder_index(p) {
                Some(n) => Ok(Some(ValueForm::Param(n))),
                None => Err(NOT_A_PARAMETER),
            },
            Value::Number(..)
            | Value::SingleQuotedString(_)
            | Value::EscapedStringLiteral(_)
            | Value::DollarQuotedString(_)
            | Value::UnicodeStringLiteral(_)
            | Value::NationalStringLiteral(_) => self.literal(v, sign).map(Some),
            _ => Ok(None),
        }
    }

    /// Locate and decode a literal token; its decoding must match sqlparser's.
    fn literal(
        &self,
        v: &ValueWithSpan,
        sign: Option<UnaryOperator>,
    ) -> Result<ValueForm, &'static str> {
        let i = self.src.token_at(v.span.start).ok_or(UNDECODABLE)?;
        let raw = self.src.text(i);
        let decoded = decode(raw, &self.src.tokens[i].token).ok_or(UNDECODABLE)?;
        if !agrees(&decoded, &v.value) {
            return Err(UNDECODABLE);
        }
        if matches!(v.value, Value::UnicodeStringLiteral(_))
            && let Some(next) = self.src.next_significant(i)
            && matches!(&self.src.tokens[next].token, Token::Word(Word { value, .. }) if value.eq_ignore_ascii_case("uescape"))
        {
            return Err(UNDECODABLE);
        }
        let mut range = self.src.bytes[i].clone();
        let mut value = decoded;
        if let Some(op) = sign {
            let s = self.src.prev_significant(i).ok_or(UNDECODABLE)?;
            let expected = if op == UnaryOperator::Minus {
                Token::Minus
            } else {
                Token::Plus
            };
            if self.src.tokens[s].token != expected {
                return Err(UNDECODABLE);
            }
            range.start = self.src.bytes[s].start;
            if op == UnaryOperator::Minus {
                value.insert(0, '-');
            }
        }
        Ok(ValueForm::Literal { range, value })
    }
}

/// Casts that keep a value's text as is: `text`, `varchar`, `bytea`.
/// (A length-limited type would truncate the ciphertext.)
fn is_unbounded_string_type(t: &DataType) -> bool {
    match t {
        DataType::Text
        | DataType::Bytea
        | DataType::Varchar(None)
        | DataType::CharacterVarying(None)
        | DataType::String(None) => true,
        DataType::Custom(name, modifiers) if modifiers.is_empty() => {
            fold_name(name).is_some_and(|p| {
                matches!(
                    p.iter().map(String::as_str).collect::<Vec<_>>().as_slice(),
                    ["text" | "varchar" | "bytea"] | ["pg_catalog", "text" | "varchar" | "bytea"]
                )
            })
        }
        _ => false,
    }
}

/// Does our decoding match the value sqlparser produced?
fn agrees(decoded: &str, value: &Value) -> bool {
    match value {
        Value::Number(n, _) => n == decoded,
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s)
        | Value::NationalStringLiteral(s) => s == decoded,
        Value::DollarQuotedString(d) => d.value == decoded,
        _ => false,
    }
}

/// Decode a literal token's raw text the way PostgreSQL reads it (with
/// standard_conforming_strings on).
pub fn decode(raw: &str, token: &Token) -> Option<String> {
    match token {
        Token::Number(..) => Some(raw.to_owned()),
        Token::SingleQuotedString(_) => quoted_body(raw).map(|b| b.replace("''", "'")),
        Token::NationalStringLiteral(_) => {
            quoted_body(raw.strip_prefix(['N', 'n'])?).map(|b| b.replace("''", "'"))
        }
        Token::EscapedStringLiteral(_) => {
            decode_escape(quoted_body(raw.strip_prefix(['E', 'e'])?)?)
        }
        Token::UnicodeStringLiteral(_) => {
            let rest = raw.strip_prefix(['U', 'u'])?.strip_prefix('&')?;
            decode_unicode(quoted_body(rest)?)
        }
        Token::DollarQuotedString(d) => {
            let tag = format!("${}$", d.tag.as_deref().unwrap_or(""));
            raw.strip_prefix(tag.as_str())?
                .strip_suffix(tag.as_str())
                .map(str::to_owned)
        }
        _ => None,
    }
}

/// The text between the opening and closing `'`.
fn quoted_body(raw: &str) -> Option<&str> {
    raw.strip_prefix('\'')?.strip_suffix('\'')
}

/// `E'...'`: backslash escapes and doubled quotes, producing bytes that must
/// be valid UTF-8 without NUL (as PostgreSQL requires).
fn decode_escape(body: &str) -> Option<String> {
    let mut out: Vec<u8> = Vec::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                // Inside the body a quote is always doubled.
                if chars.next()? != '\'' {
                    return None;
                }
                out.push(b'\'');
            }
            '\\' => {
                let e = chars.next()?;
                match e {
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    '0'..='7' => {
                        let mut v = e.to_digit(8)?;
                        for _ in 0..2 {
                            match chars.peek().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    chars.next();
                                }
                                None => break,
                            }
                        }
                        out.push(u8::try_from(v & 0xff).ok()?);
                    }
                    'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 {
                            match chars.peek().and_then(|d| d.to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    chars.next();
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 {
                            out.push(b'x');
                        } else {
                            out.push(u8::try_from(v).ok()?);
                        }
                    }
                    'u' => push_char(&mut out, hex_char(&mut chars, 4)?),
                    'U' => push_char(&mut out, hex_char(&mut chars, 8)?),
                    other => push_char(&mut out, other),
                }
            }
            other => push_char(&mut out, other),
        }
    }
    if out.contains(&0) {
        return None;
    }
    String::from_utf8(out).ok()
}

/// `U&'...'` (default escape `\`): `\XXXX`, `\+XXXXXX`, `\\`, doubled quotes.
fn decode_unicode(body: &str) -> Option<String> {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                if chars.next()? != '\'' {
                    return None;
                }
                out.push('\'');
            }
            '\\' => match chars.peek() {
                Some('\\') => {
                    chars.next();
                    out.push('\\');
                }
                Some('+') => {
                    chars.next();
                    out.push(hex_char(&mut chars, 6)?);
                }
                _ => out.push(hex_char(&mut chars, 4)?),
            },
            other => out.push(other),
        }
    }
    (!out.contains('\0')).then_some(out)
}

/// Exactly `digits` hex digits → a char (surrogates and NUL refused).
fn hex_char(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, digits: usize) -> Option<char> {
    let mut v = 0u32;
    for _ in 0..digits {
        v = v.checked_mul(16)? + chars.next()?.to_digit(16)?;
    }
    char::from_u32(v).filter(|&c| c != '\0')
}

fn push_char(out: &mut Vec<u8>, c: char) {
    let mut buf = [0u8; 4];
    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
}
