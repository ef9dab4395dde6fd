//! The SQL text as tokens with exact byte ranges.
//!
//! sqlparser reports locations as (line, column) with columns counted in
//! chars; this module maps every token to its byte range once, by replaying
//! the tokenizer's own counting rule (`\n` starts a new line, every other
//! char advances the column), so multi-byte UTF-8 text is handled exactly.

use std::collections::HashMap;
use std::ops::Range;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};

pub struct Source<'a> {
    pub sql: &'a str,
    pub tokens: Vec<TokenWithSpan>,
    /// Byte range of each token.
    pub bytes: Vec<Range<usize>>,
    by_start: HashMap<(u64, u64), usize>,
}

/// The text could not be tokenized, or the token locations did not map back.
#[derive(Debug)]
pub struct Untokenizable;

impl<'a> Source<'a> {
    pub fn new(sql: &'a str) -> Result<Self, Untokenizable> {
        let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql)
            .tokenize_with_location()
            .map_err(|_| Untokenizable)?;
        let mut walker = LocationWalker::new(sql);
        let mut bytes = Vec::with_capacity(tokens.len());
        let mut by_start = HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let start = walker.advance_to(t.span.start)?;
            let end = walker.advance_to(t.span.end)?;
            bytes.push(start..end);
            by_start.insert((t.span.start.line, t.span.start.column), i);
        }
        if walker.byte != sql.len() {
            return Err(Untokenizable);
        }
        Ok(Self {
            sql,
            tokens,
            bytes,
            by_start,
        })
    }

    /// Token index ranges of the statements, split at `;`, trimmed of
    /// whitespace and comments; empty statements are dropped.
    pub fn statements(&self) -> Vec<Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, t) in self.tokens.iter().enumerate() {
            if t.token == Token::SemiColon {
                self.push_trimmed(start..i, &mut out);
                start = i + 1;
            }
        }
        self.push_trimmed(start..self.tokens.len(), &mut out);
        out
    }

    fn push_trimmed(&self, r: Range<usize>, out: &mut Vec<Range<usize>>) {
        let significant = |i: &usize| !self.is_whitespace(*i);
        let Some(first) = r.clone().find(significant) else {
            return;
        };
        let last = r.rev().find(significant).unwrap_or(first);
        out.push(first..last + 1);
    }

    pub fn is_whitespace(&self, i: usize) -> bool {
        matches!(self.tokens[i].token, Token::Whitespace(_))
    }

    /// Byte range covered by a token index range.
    pub fn byte_range(&self, tokens: Range<usize>) -> Range<usize> {
        if tokens.is_empty() {
            return 0..0;
        }
        self.bytes[tokens.start].start..self.bytes[tokens.end - 1].end
    }

    /// Parse the statement made of `tokens`; `None` if sqlparser cannot, or
    /// if it would not consume every token.
    pub fn parse(&self, tokens: Range<usize>) -> Option<Statement> {
        let dialect = PostgreSqlDialect {};
        let mut parser =
            Parser::new(&dialect).with_tokens_with_locations(self.tokens[tokens].to_vec());
        let statement = parser.parse_statement().ok()?;
        (parser.peek_token_ref().token == Token::EOF).then_some(statement)
    }

    /// The token that starts at `location`.
    pub fn token_at(&self, location: Location) -> Option<usize> {
        self.by_start
            .get(&(location.line, location.column))
            .copied()
    }

    /// The next non-whitespace token after `i`.
    pub fn next_significant(&self, i: usize) -> Option<usize> {
        (i + 1..self.tokens.len()).find(|&j| !self.is_whitespace(j))
    }

    /// The previous non-whitespace token before `i`.
    pub fn prev_significant(&self, i: usize) -> Option<usize> {
        (0..i).rev().find(|&j| !self.is_whitespace(j))
    }

    /// The raw text of token `i`.
    pub fn text(&self, i: usize) -> &'a str {
        &self.sql[self.bytes[i].clone()]
    }

    /// True if a standard-conforming `'...'` literal contains a backslash
    /// (which means something else when standard_conforming_strings is off).
    pub fn has_backslash_in_plain_literal(&self) -> bool {
        self.tokens.iter().enumerate().any(|(i, t)| {
            matches!(
                t.token,
                Token::SingleQuotedString(_) | Token::NationalStringLiteral(_)
            ) && self.text(i).contains('\\')
        })
    }
}

/// Replays the tokenizer's (line, column) counting over the text.
struct LocationWalker<'a> {
    chars: std::str::CharIndices<'a>,
    line: u64,
    column: u64,
    byte: usize,
}

impl<'a> LocationWalker<'a> {
    fn new(sql: &'a str) -> Self {
        Self {
            chars: sql.char_indices(),
            line: 1,
            column: 1,
            byte: 0,
        }
    }

    /// Advance to `target` and return its byte offset.
    fn advance_to(&mut self, target: Location) -> Result<usize, Untokenizable> {
        while (self.line, self.column) < (target.line, target.column) {
            let (i, c) = self.chars.next().ok_or(Untokenizable)?;
            self.byte = i + c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.column = 1;
            } else {
                self.column += 1;
            }
        }
        if (self.line, self.column) == (target.line, target.column) {
            Ok(self.byte)
        } else {
            Err(Untokenizable)
        }
    }
}
