//! Per-session view of the backend's prepared statements and portals, and
//! the queue that attributes each backend response to the client message
//! that caused it (needed to know which DataRows belong to which result when
//! a client pipelines many messages before Sync).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::rewrite::Plan;

/// Where a result column comes from, when it is a protected column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMark {
    pub table_oid: u32,
    pub attnum: i16,
    /// Index into the policy's tables / columns, resolved by the marker.
    pub column: usize,
}

/// Marks of one result shape: `marks[i]` for result column `i`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RowMarks {
    pub marks: Vec<Option<ColumnMark>>,
    /// Wire format of each column (from the RowDescription, or from Bind's
    /// result format codes when the marks come from Describe Statement).
    pub binary: Vec<bool>,
}

impl RowMarks {
    /// The same marks with the result formats a Bind asked for.
    #[must_use]
    pub fn with_formats(&self, formats: &[i16]) -> Self {
        let binary = (0..self.marks.len())
            .map(|i| match formats {
                [] => false,
                [one] => *one == 1,
                many => many.get(i).is_some_and(|f| *f == 1),
            })
            .collect();
        Self {
            marks: self.marks.clone(),
            binary,
        }
    }
}

/// A prepared statement as byokpg knows it.
#[derive(Debug, Default)]
pub struct Statement {
    /// The rewrite plan attached at Parse time; `None` = fast path.
    pub plan: Option<Plan>,
    /// Marks of its result columns, learned from `Describe Statement`.
    pub row_marks: OnceLock<Option<Arc<RowMarks>>>,
    /// The client asked to describe it (its marks will arrive).
    pub describe_requested: AtomicBool,
}

impl Statement {
    pub fn describing(&self) -> bool {
        self.describe_requested.load(Ordering::Relaxed)
    }
}

/// Result marks filled when the backend answers a Describe, shared by the
/// Describe's queue entry and every Execute issued after it: in a pipeline
/// the Execute is queued long before the RowDescription arrives.
pub type MarksCell = Arc<OnceLock<Option<Arc<RowMarks>>>>;

/// A bound portal: its statement and (if described) its own result marks.
#[derive(Debug, Clone, Default)]
pub struct Portal {
    pub statement: Option<Arc<Statement>>,
    /// Filled by the answer to a `Describe Portal` for this binding.
    pub described: Option<MarksCell>,
    /// Bind's result format codes (kept only when protected columns exist).
    pub result_formats: Option<Vec<i16>>,
}

impl Portal {
    /// Marks that apply to the rows this portal returns, as known now.
    pub fn marks(&self) -> Option<Arc<RowMarks>> {
        if let Some(m) = self.described.as_ref().and_then(|c| c.get()) {
            return m.clone();
        }
        let m = self
            .statement
            .as_ref()
            .and_then(|s| s.row_marks.get().cloned().flatten())?;
        Some(Arc::new(m.with_formats(
            self.result_formats.as_deref().unwrap_or_default(),
        )))
    }
}

/// The marks of an Execute's rows, resolved at the first DataRow (when every
/// Describe before it has been answered) and then kept.
#[derive(Debug, Default)]
pub struct ExecMarks {
    portal: Option<Portal>,
    /// Set at the first DataRow; `OnceLock` keeps "resolved to none" apart
    /// from "not resolved yet".
    resolved: OnceLock<Option<Arc<RowMarks>>>,
}

impl ExecMarks {
    pub fn new(portal: Option<Portal>) -> Self {
        Self {
            portal,
            resolved: OnceLock::new(),
        }
    }

    pub fn get(&mut self) -> Option<Arc<RowMarks>> {
        let portal = &self.portal;
        self.resolved
            .get_or_init(|| portal.as_ref().and_then(Portal::marks))
            .clone()
    }
}

/// What a Describe asked about.
#[derive(Debug, Clone)]
pub enum DescribeTarget {
    Statement(Option<Arc<Statement>>),
    Portal(MarksCell),
    /// A Describe byokpg added itself (the client executes a portal nobody
    /// described): its answer is used and not relayed.
    Injected(MarksCell),
}

/// One response the backend still owes, in order.
#[derive(Debug)]
pub enum Expect {
    /// `ParseComplete`; on failure the statement is forgotten again.
    Parse {
        name: Vec<u8>,
        statement: Option<Arc<Statement>>,
        swallow: bool,
    },
    Bind {
        swallow: bool,
    },
    Close {
        swallow: bool,
    },
    Describe(DescribeTarget),
    Execute {
        marks: ExecMarks,
    },
    Sync,
    /// A simple Query or FunctionCall: answered up to `ReadyForQuery`.
    Simple,
    /// Marker, no response: the client sent CopyDone/CopyFail here. Tells
    /// which Syncs were sent during a copy-in (see `Relay`); dropped when
    /// it reaches the front of the queue.
    CopyEnd,
}

impl Expect {
    /// Entries that end at `ReadyForQuery`.
    pub fn ends_at_ready(&self) -> bool {
        matches!(self, Self::Sync | Self::Simple)
    }
}

/// Statements and portals by name; the unnamed ones (used by most drivers
/// for every statement) live outside the maps to avoid hashing and allocating.
#[derive(Debug, Default)]
pub struct Registry {
    unnamed_statement: Option<Arc<Statement>>,
    statements: HashMap<Vec<u8>, Arc<Statement>>,
    unnamed_portal: Portal,
    portals: HashMap<Vec<u8>, Portal>,
}

impl Registry {
    pub fn statement(&self, name: &[u8]) -> Option<Arc<Statement>> {
        if name.is_empty() {
            self.unnamed_statement.clone()
        } else {
            self.statements.get(name).cloned()
        }
    }

    pub fn add_statement(&mut self, name: &[u8], stmt: Arc<Statement>) {
        if name.is_empty() {
            self.unnamed_statement = Some(stmt);
        } else {
            self.statements.insert(name.to_vec(), stmt);
        }
    }

    /// Forget `name` if it still refers to `stmt` (a failed Parse).
    pub fn forget_statement(&mut self, name: &[u8], stmt: &Arc<Statement>) {
        let current = self.statement(name);
        if current.is_some_and(|c| Arc::ptr_eq(&c, stmt)) {
            self.close_statement(name);
        }
    }

    pub fn close_statement(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed_statement = None;
        } else {
            self.statements.remove(name);
        }
    }

    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        if name.is_empty() {
            Some(&self.unnamed_portal)
        } else {
            self.portals.get(name)
        }
    }

    pub fn portal_mut(&mut self, name: &[u8]) -> Option<&mut Portal> {
        if name.is_empty() {
            Some(&mut self.unnamed_portal)
        } else {
            self.portals.get_mut(name)
        }
    }

    pub fn bind(&mut self, name: &[u8], portal: Portal) {
        if name.is_empty() {
            self.unnamed_portal = portal;
        } else {
            self.portals.insert(name.to_vec(), portal);
        }
    }

    pub fn close_portal(&mut self, name: &[u8]) {
        if name.is_empty() {
            self.unnamed_portal = Portal::default();
        } else {
            self.portals.remove(name);
        }
    }

    /// Portals do not outlive their transaction.
    pub fn end_transaction(&mut self) {
        self.unnamed_portal = Portal::default();
        self.portals.clear();
    }

    pub fn statement_count(&self) -> usize {
        self.statements.len() + usize::from(self.unnamed_statement.is_some())
    }
}

/// The pending-response queue.
pub type Pending = VecDeque<Expect>;
