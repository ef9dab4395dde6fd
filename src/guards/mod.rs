//! `byokpg guards install|status`: database-side defences (SPEC §2, §5, §6).
//!
//! The proxy protects every write it sees; these guards catch the writes it
//! does not see (psql straight to the database, functions, dynamic SQL, a
//! misconfigured application):
//! - a CHECK constraint `byokpg_ct_<column>` per encrypted column admitting
//!   only byokpg ciphertext or NULL (docs/FORMAT.md §6);
//! - on append-only tables, triggers `byokpg_append_only` (UPDATE, DELETE)
//!   and `byokpg_no_truncate` (TRUNCATE) calling `byokpg.reject_change()`,
//!   which raises `42501`.
//!
//! `install` works in two steps per region. First, one transaction holding
//! an advisory lock adds what is missing, constraints as `NOT VALID`, so it
//! takes each table's ACCESS EXCLUSIVE lock only for a catalog change and
//! two concurrent installs cannot race. Then each new or unvalidated
//! constraint is validated in its own statement, which scans the table under
//! a lock that lets reads and writes go on; a table still holding legacy
//! plaintext keeps its constraint `NOT VALID` and the report says how many
//! rows are in the way. docs/GUARDS.md is the user-facing description.
mod inspect;
mod install;
mod report;
pub mod sql;

#[cfg(test)]
mod tests;

pub use report::{
    Guard, GuardKind, GuardState, GuardsReport, RegionGuards, RegionReport, TableReport, TableState,
};
pub use sql::{
    APPEND_ONLY_TRIGGER, CONSTRAINT_PREFIX, GUARDS_LOCK_KEY, NO_TRUNCATE_TRIGGER, REJECT_FUNCTION,
    constraint_name,
};

use crate::config::{Config, TableConfig};

/// Why `guards install` did not put every guard in place. The message holds
/// the whole report (what was done and what was not), so printing it is
/// enough.
#[derive(Debug, thiserror::Error)]
pub enum GuardsError {
    #[error("{}", render_incomplete(.lines, *.problems))]
    Incomplete {
        /// Every report line, problems included.
        lines: Vec<String>,
        /// How many of the lines are problems.
        problems: usize,
    },
}

fn render_incomplete(lines: &[String], problems: usize) -> String {
    let last = format!(
        "byokpg: guards install left {problems} problem(s); fix them and run `byokpg guards install` again"
    );
    let mut all: Vec<&str> = lines.iter().map(String::as_str).collect();
    all.push(&last);
    all.join("\n")
}

/// Adds every missing guard in every region; idempotent. `Ok` holds one line
/// per guard (added, validated, already in place, or left `NOT VALID`
/// because existing rows hold non-ciphertext); `Err` when some guard could
/// not be put in place (unreachable region, missing table or column, a type
/// that cannot hold ciphertext, a failing statement), with the same lines.
pub async fn install(cfg: &Config) -> Result<Vec<String>, GuardsError> {
    let tables = guarded_tables(cfg);
    if tables.is_empty() {
        return Ok(vec![
            "byokpg: no table in the policy has encrypted columns or append_only; nothing to guard"
                .to_owned(),
        ]);
    }
    let mut lines = Vec::new();
    let mut problems = 0;
    for (region, r) in &cfg.regions {
        let out = install::region(region, &r.dsn, cfg.server.connect_timeout, &tables).await;
        problems += out.problems;
        lines.extend(out.lines);
    }
    if problems == 0 {
        Ok(lines)
    } else {
        Err(GuardsError::Incomplete { lines, problems })
    }
}

/// What is in place in every region. Never fails: an unreachable region is
/// part of the report (and makes it not [`GuardsReport::ok`]).
pub async fn status(cfg: &Config) -> Result<GuardsReport, GuardsError> {
    let tables = guarded_tables(cfg);
    let mut regions = Vec::with_capacity(cfg.regions.len());
    for (region, r) in &cfg.regions {
        let target = r.dsn.redacted();
        let outcome = match crate::pgmeta::connect(&r.dsn, cfg.server.connect_timeout).await {
            Err(e) => Err(e.to_string()),
            Ok(client) => inspect::region(&client, &tables)
                .await
                .map_err(|e| inspect::pg_message(&e)),
        };
        regions.push(RegionReport {
            region: region.clone(),
            target,
            outcome,
        });
    }
    Ok(GuardsReport { regions })
}

/// Policy tables that call for at least one guard.
fn guarded_tables(cfg: &Config) -> Vec<&TableConfig> {
    cfg.tables
        .iter()
        .filter(|t| t.append_only || !t.columns.is_empty())
        .collect()
}
