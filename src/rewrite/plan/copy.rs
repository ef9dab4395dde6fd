//! COPY: which fields of the data stream belong to protected columns, and how
//! the stream is formatted, so the session can encrypt (FROM STDIN) or
//! decrypt (TO STDOUT) it row by row.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Ident, ObjectName,
    Query,
};

use super::policy::{fold, quote_ident};
use super::refusal::reason;
use super::scope::{Cx, OutItem, Outputs};
use super::{ColumnRef, Refusal, TenantFill};

/// Which way the data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyDirection {
    /// `COPY table FROM STDIN`: the client sends rows; encrypt them.
    FromStdin,
    /// `COPY table|(query) TO STDOUT`: the server sends rows; decrypt them.
    ToStdout,
}

/// The data format (binary is refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    Text {
        delimiter: char,
        null: String,
        header: bool,
    },
    Csv {
        delimiter: char,
        quote: char,
        escape: char,
        null: String,
        header: bool,
    },
}

/// The tenant column's field in a COPY FROM stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CopyTenant {
    /// Field index (in COPY column order).
    pub index: usize,
    /// True when the client's rows lack it: the statement's column list got
    /// the column appended (see [`super::StatementPlan::tenant_fill`]) and the
    /// session must append the tenant as the last field of every row.
    /// Otherwise the field must equal the tenant (`42501` if not).
    pub fill: bool,
}

/// What the session does with a COPY's data stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub direction: CopyDirection,
    /// The protected table copied; `None` for `COPY (query) TO STDOUT`.
    pub table: Option<usize>,
    /// One entry per field, in stream order: the protected column it holds.
    /// Fields beyond the end of this list (possible for `COPY (query)` with a
    /// `*` over unprotected tables) are not protected.
    pub columns: Vec<Option<ColumnRef>>,
    pub format: CopyFormat,
    /// Fields never read as NULL (`FORCE_NOT_NULL`), by index.
    pub force_not_null: Vec<usize>,
    /// Quoted fields matching the NULL string read as NULL (`FORCE_NULL`).
    pub force_null: Vec<usize>,
    pub tenant: Option<CopyTenant>,
}

/// Options gathered before the column list is known.
#[derive(Default)]
struct Options {
    csv: bool,
    delimiter: Option<char>,
    quote: Option<char>,
    escape: Option<char>,
    null: Option<String>,
    header: bool,
    force_not_null: Vec<String>,
    force_null: Vec<String>,
}

const FILE: &str = "COPY to or from a server-side file or program: byokpg can only encrypt \
    and decrypt data that passes through it (use FROM STDIN / TO STDOUT)";
const BINARY: &str = "binary COPY format is not supported on protected tables (use text or csv)";
const NO_COLUMN_LIST: &str = "COPY without a column list: byokpg does not know the table's \
    column order; list the columns";

impl Cx<'_> {
    pub fn copy(
        &mut self,
        source: &CopySource,
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<(), Refusal> {
        match source {
            CopySource::Table {
                table_name,
                columns,
            } => self.copy_table(table_name, columns, to, target, options, legacy),
            CopySource::Query(q) => self.copy_query(q, target, options, legacy),
        }
    }

    fn copy_table(
        &mut self,
        name: &ObjectName,
        columns: &[Ident],
        to: bool,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<(), Refusal> {
        let Some(t) = self.protected_table(name)? else {
            return Ok(());
        };
        let direction = match (to, target) {
            (false, CopyTarget::Stdin) => CopyDirection::FromStdin,
            (true, CopyTarget::Stdout) => CopyDirection::ToStdout,
            _ => return Err(self.refuse_table(t, FILE)),
        };
        if direction == CopyDirection::FromStdin {
            self.guard_copy_from(t, columns)?;
        }
        let opts = parse_options(options, legacy).map_err(|why| self.refuse_table(t, why))?;
        let table = self.policy.table(t);
        let mut names: Vec<String> = if columns.is_empty() {
            match &table.all_columns {
                Some(all) => all.clone(),
                None if table.needs_column_mapping() => {
                    return Err(self.refuse_table(t, NO_COLUMN_LIST));
                }
                None => Vec::new(),
            }
        } else {
            columns.iter().map(fold).collect()
        };
        let mut tenant = None;
        if direction == CopyDirection::FromStdin
            && let Some(tc) = table.tenant_column.clone()
        {
            tenant = Some(if let Some(index) = names.iter().position(|n| *n == tc) {
                CopyTenant { index, fill: false }
            } else {
                self.copy_tenant_fill(t, columns, &tc)?;
                names.push(tc);
                CopyTenant {
                    index: names.len() - 1,
                    fill: true,
                }
            });
        }
        let cols = names.iter().map(|n| self.policy.column(t, n)).collect();
        self.plan.copy = Some(CopyPlan {
            direction,
            table: Some(t),
            columns: cols,
            format: opts.format(),
            force_not_null: indexes(&names, &opts.force_not_null),
            force_null: indexes(&names, &opts.force_null),
            tenant,
        });
        Ok(())
    }

    /// The COPY column list omits the tenant column: append it.
    fn copy_tenant_fill(
        &mut self,
        t: usize,
        columns: &[Ident],
        tenant: &str,
    ) -> Result<(), Refusal> {
        let at = columns
            .last()
            .and_then(|c| self.closing_paren_after(c.span.start));
        let Some(column_at) = at else {
            return Err(self.forbid(
                t,
                "COPY FROM omits the tenant column; list the columns so byokpg can fill it",
            ));
        };
        self.plan.tenant_fill = Some(TenantFill {
            table: t,
            column: quote_ident(tenant),
            column_at,
            rows_at: Vec::new(),
        });
        Ok(())
    }

    fn copy_query(
        &mut self,
        q: &Query,
        target: &CopyTarget,
        options: &[CopyOption],
        legacy: &[CopyLegacyOption],
    ) -> Result<(), Refusal> {
        let out = self.query(q)?;
        if !self.plan.touches {
            return Ok(());
        }
        let Some(first) = out.first_protected() else {
            // Touches a protected table, returns none of its columns.
            return Ok(());
        };
        if *target != CopyTarget::Stdout {
            return Err(self.refuse_col(first, FILE));
        }
        let opts = parse_options(options, legacy).map_err(|why| self.refuse_col(first, why))?;
        // Fields after an unknown-width `*` cannot be placed; that is fine
        // as long as none of them is protected (fields beyond `columns` are
        // plain).
        let mut columns = Vec::with_capacity(out.items.len());
        for (i, item) in out.items.iter().enumerate() {
            match item {
                OutItem::Col { col, .. } => columns.push(*col),
                OutItem::Unknown { .. } => {
                    let rest = Outputs {
                        items: out.items[i..].to_vec(),
                    };
                    if let Some(c) = rest.first_protected() {
                        return Err(self.refuse_col(c, reason::POSITIONS_UNKNOWN));
                    }
                    break;
                }
            }
        }
        let names: Vec<String> = out
            .items
            .iter()
            .map(|i| match i {
                OutItem::Col { name, .. } => name.clone().unwrap_or_default(),
                OutItem::Unknown { .. } => String::new(),
            })
            .collect();
        self.plan.copy = Some(CopyPlan {
            direction: CopyDirection::ToStdout,
            table: None,
            columns,
            format: opts.format(),
            force_not_null: indexes(&names, &opts.force_not_null),
            force_null: indexes(&names, &opts.force_null),
            tenant: None,
        });
        Ok(())
    }
}

fn indexes(names: &[String], wanted: &[String]) -> Vec<usize> {
    names
        .iter()
        .enumerate()
        .filter(|(_, n)| wanted.contains(n))
        .map(|(i, _)| i)
        .collect()
}

impl Options {
    fn format(&self) -> CopyFormat {
        if self.csv {
            let quote = self.quote.unwrap_or('"');
            CopyFormat::Csv {
                delimiter: self.delimiter.unwrap_or(','),
                quote,
                escape: self.escape.unwrap_or(quote),
                null: self.null.clone().unwrap_or_default(),
                header: self.header,
            }
        } else {
            CopyFormat::Text {
                delimiter: self.delimiter.unwrap_or('\t'),
                null: self.null.clone().unwrap_or_else(|| "\\N".to_owned()),
                header: self.header,
            }
        }
    }
}

/// Both option syntaxes; anything byokpg does not model is refused.
fn parse_options(
    options: &[CopyOption],
    legacy: &[CopyLegacyOption],
) -> Result<Options, &'static str> {
    let mut o = Options::default();
    for opt in options {
        match opt {
            CopyOption::Format(f) => match fold(f).as_str() {
                "text" => o.csv = false,
                "csv" => o.csv = true,
                "binary" => return Err(BINARY),
                _ => return Err(reason::UNSUPPORTED_SYNTAX),
            },
            CopyOption::Freeze(_) | CopyOption::ForceQuote(_) => {}
            CopyOption::Delimiter(c) => o.delimiter = Some(*c),
            CopyOption::Null(s) => o.null = Some(s.clone()),
            CopyOption::Header(h) => o.header = *h,
            CopyOption::Quote(c) => o.quote = Some(*c),
            CopyOption::Escape(c) => o.escape = Some(*c),
            CopyOption::ForceNotNull(cols) => o.force_not_null.extend(cols.iter().map(fold)),
            CopyOption::ForceNull(cols) => o.force_null.extend(cols.iter().map(fold)),
            CopyOption::Encoding(e) => {
                let e = e.to_ascii_lowercase().replace(['-', '_'], "");
                if e != "utf8" && e != "unicode" {
                    return Err("COPY with an ENCODING other than UTF8 is not supported on \
                        protected tables");
                }
            }
        }
    }
    for opt in legacy {
        match opt {
            CopyLegacyOption::Binary => return Err(BINARY),
            CopyLegacyOption::Delimiter(c) => o.delimiter = Some(*c),
            CopyLegacyOption::Null(s) => o.null = Some(s.clone()),
            CopyLegacyOption::Header => o.header = true,
            CopyLegacyOption::Csv(csv) => {
                o.csv = true;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => o.header = true,
                        CopyLegacyCsvOption::Quote(q) => o.quote = Some(*q),
                        CopyLegacyCsvOption::Escape(e) => o.escape = Some(*e),
                        CopyLegacyCsvOption::ForceNotNull(cols) => {
                            o.force_not_null.extend(cols.iter().map(fold));
                        }
                        CopyLegacyCsvOption::ForceQuote(_) => {}
                    }
                }
            }
            _ => return Err(reason::UNSUPPORTED_SYNTAX),
        }
    }
    Ok(o)
}
