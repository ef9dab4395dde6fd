//! Per-session view of the backend's prepared statements and portals, and
//! the queue that attributes each backend response to the client message
//! that caused it (needed to know which DataRows belong to which result when
//! a client pipelines many messages before Sync).

use std::collections::{HashMap, VecDeque};
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
}

/// A prepared statement as byokpg knows it.
#[derive(Debug, Default)]
pub struct Statement {
    /// The rewrite plan attached at Parse time; `None` = fast path.
    pub plan: Option<Plan>,
    /// Marks of its result columns, learned from `Describe Statement`.
    pub row_marks: OnceLock<Option<Arc<RowMarks>>>,
}

/// A bound portal: its statement and (if described) its own result marks.
#[derive(Debug, Clone, Default)]
pub struct Portal {
    pub statement: Option<Arc<Statement>>,
    pub row_marks: Option<Arc<RowMarks>>,
}

impl Portal {
    /// Marks that apply to the rows this portal returns.
    pub fn marks(&self) -> Option<Arc<RowMarks>> {
        self.row_marks.clone().or_else(|| {
            self.statement
                .as_ref()
                .and_then(|s| s.row_marks.get().cloned().flatten())
        })
    }
}

/// What a Describe asked about.
#[derive(Debug, Clone)]
pub enum DescribeTarget {
    Statement(Option<Arc<Statement>>),
    Portal(Vec<u8>),
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
        marks: Option<Arc<RowMarks>>,
    },
    Sync,
    /// A simple Query or FunctionCall: answered up to `ReadyForQuery`.
    Simple,
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
