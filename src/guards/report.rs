//! What `guards status` found, and how it is shown.
use std::fmt;

/// The guards of every region.
#[derive(Debug, Clone)]
pub struct GuardsReport {
    pub regions: Vec<RegionReport>,
}

/// One region: its guards, or why they could not be read.
#[derive(Debug, Clone)]
pub struct RegionReport {
    pub region: String,
    /// The region DSN with its password redacted.
    pub target: String,
    pub outcome: Result<RegionGuards, String>,
}

/// The guards found in one region database.
#[derive(Debug, Clone)]
pub struct RegionGuards {
    /// State of `byokpg.reject_change()`; `None` when no table there is
    /// append-only (then the function is not needed).
    pub function: Option<GuardState>,
    pub tables: Vec<TableReport>,
}

/// One policy table in one region.
#[derive(Debug, Clone)]
pub struct TableReport {
    /// `schema.table`, unquoted, as in messages.
    pub table: String,
    pub state: TableState,
}

#[derive(Debug, Clone)]
pub enum TableState {
    /// No relation of that name in the region database.
    Missing,
    /// The name is a view, sequence, foreign table, …: guards need a table.
    NotATable(String),
    /// The table exists; each guard it should have.
    Present(Vec<Guard>),
}

/// One expected guard.
#[derive(Debug, Clone)]
pub struct Guard {
    pub kind: GuardKind,
    /// Constraint or trigger name.
    pub name: String,
    /// `schema.table` the guard lives on (a partition, for the triggers of a
    /// partitioned table's partitions).
    pub relation: String,
    pub state: GuardState,
    /// Quoted relation, for DDL.
    pub(crate) relation_sql: String,
    /// The CHECK condition, for constraints on a column that can hold it.
    pub(crate) condition: Option<String>,
    /// True for a trigger on a partition rather than on the policy table.
    pub(crate) on_partition: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardKind {
    /// CHECK constraint admitting only ciphertext or NULL in `column`.
    Ciphertext { column: String },
    /// Row trigger rejecting UPDATE and DELETE.
    AppendOnly,
    /// Statement trigger rejecting TRUNCATE.
    NoTruncate,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardState {
    /// Present and in force (a constraint: validated against every row).
    InPlace,
    /// A constraint checking new writes, but `NOT VALID`: rows written
    /// before it may not be ciphertext. Counts as present.
    NotValid,
    Missing,
    /// Present under byokpg's name but not what this byokpg installs
    /// (another version, or edited): `install` replaces it.
    Outdated,
    /// A trigger that is disabled (or fires only in replica mode).
    Disabled,
    /// The policy names a column the table does not have.
    NoColumn,
    /// The column's type cannot hold ciphertext (the type is given).
    WrongType(String),
}

impl GuardState {
    /// Whether the guard is in force for new writes.
    pub fn present(&self) -> bool {
        matches!(self, GuardState::InPlace | GuardState::NotValid)
    }

    pub(crate) fn describe(&self) -> String {
        match self {
            GuardState::InPlace => "in place".to_owned(),
            GuardState::NotValid => "NOT VALID (checks new writes; rows written before it may hold plaintext: `byokpg guards install` validates it once they are encrypted or cleared)".to_owned(),
            GuardState::Missing => "missing".to_owned(),
            GuardState::Outdated => "differs from what this byokpg installs (another version, or edited); `byokpg guards install` replaces it".to_owned(),
            GuardState::Disabled => "disabled; `byokpg guards install` enables it".to_owned(),
            GuardState::NoColumn => "cannot be installed: the column does not exist".to_owned(),
            GuardState::WrongType(t) => format!(
                "cannot be installed: the column has type {t}, which cannot hold ciphertext; use text, varchar without a length, or bytea"
            ),
        }
    }
}

impl Guard {
    /// "CHECK byokpg_ct_email on column email", "trigger byokpg_no_truncate
    /// on partition public.audit_2024", ...
    pub fn label(&self) -> String {
        let on = match &self.kind {
            GuardKind::Ciphertext { column } => format!("CHECK {} on column {column}", self.name),
            GuardKind::AppendOnly | GuardKind::NoTruncate => format!("trigger {}", self.name),
        };
        if self.on_partition {
            format!("{on} on partition {}", self.relation)
        } else {
            on
        }
    }
}

impl GuardsReport {
    /// True when every expected guard is in force in every region (a
    /// `NOT VALID` constraint counts: it checks every new write).
    pub fn ok(&self) -> bool {
        self.counts().0 == self.counts().1 && self.regions.iter().all(|r| r.outcome.is_ok())
    }

    /// (guards in force, guards expected, of which NOT VALID, tables missing).
    fn counts(&self) -> (usize, usize, usize, usize) {
        let (mut present, mut expected, mut not_valid, mut missing) = (0, 0, 0, 0);
        for r in self.regions.iter().filter_map(|r| r.outcome.as_ref().ok()) {
            if let Some(f) = &r.function {
                expected += 1;
                present += usize::from(f.present());
            }
            for t in &r.tables {
                let TableState::Present(guards) = &t.state else {
                    missing += 1;
                    expected += 1;
                    continue;
                };
                for g in guards {
                    expected += 1;
                    present += usize::from(g.state.present());
                    not_valid += usize::from(g.state == GuardState::NotValid);
                }
            }
        }
        (present, expected, not_valid, missing)
    }

    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (present, expected, not_valid, missing) = self.counts();
        let unreachable = self.regions.iter().filter(|r| r.outcome.is_err()).count();
        if self.ok() {
            let regions = self.regions.len();
            write!(
                f,
                "byokpg: every guard is in place ({present} in {regions} region(s))"
            )?;
        } else {
            write!(
                f,
                "byokpg: guards not complete: {present} of {expected} in place"
            )?;
            if missing > 0 {
                write!(f, ", {missing} table(s) missing or not tables")?;
            }
            if unreachable > 0 {
                write!(f, ", {unreachable} region(s) unreachable")?;
            }
            write!(f, "; run `byokpg guards install`")?;
        }
        if not_valid > 0 {
            write!(
                f,
                "; {not_valid} constraint(s) NOT VALID (existing rows not all ciphertext)"
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for GuardsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.regions {
            writeln!(f, "region {} ({}):", r.region, r.target)?;
            match &r.outcome {
                Err(e) => writeln!(f, "  cannot read guards: {e}")?,
                Ok(g) => write_region(f, g)?,
            }
        }
        self.write_summary(f)
    }
}

fn write_region(f: &mut fmt::Formatter<'_>, g: &RegionGuards) -> fmt::Result {
    if let Some(state) = &g.function {
        writeln!(f, "  function byokpg.reject_change(): {}", state.describe())?;
    }
    if g.tables.is_empty() {
        writeln!(f, "  (no table in the policy needs guards)")?;
    }
    for t in &g.tables {
        match &t.state {
            TableState::Missing => writeln!(f, "  {}: table does not exist", t.table)?,
            TableState::NotATable(what) => {
                writeln!(f, "  {}: is {what}; guards apply to tables", t.table)?;
            }
            TableState::Present(guards) => {
                writeln!(f, "  {}:", t.table)?;
                for g in guards {
                    writeln!(f, "    {}: {}", g.label(), g.state.describe())?;
                }
            }
        }
    }
    Ok(())
}
