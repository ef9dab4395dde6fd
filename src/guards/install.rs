//! `guards install` in one region: add what is missing under an advisory
//! lock in one transaction, then validate constraints one by one.
use std::time::Duration;

use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use super::inspect::{self, pg_message};
use super::report::{Guard, GuardKind, GuardState, TableState};
use super::sql::{self, GUARDS_LOCK_KEY};
use crate::config::{Dsn, TableConfig};

/// Report lines of one region, and how many are problems.
#[derive(Debug, Default)]
pub struct Outcome {
    pub lines: Vec<String>,
    pub problems: usize,
}

impl Outcome {
    fn note(&mut self, line: String) {
        self.lines.push(line);
    }

    fn problem(&mut self, line: String) {
        self.lines.push(line);
        self.problems += 1;
    }

    fn append(&mut self, other: Outcome) {
        self.lines.extend(other.lines);
        self.problems += other.problems;
    }
}

/// A constraint added (or found) `NOT VALID`, to validate after the commit.
struct Pending {
    /// Index of its report line, rewritten once the validation is done.
    line: usize,
    label: String,
    relation_sql: String,
    name: String,
    condition: String,
    action: Action,
}

#[derive(Clone, Copy)]
enum Action {
    Added,
    Replaced,
    WasNotValid,
}

impl Action {
    fn outcome(self, validated: bool) -> &'static str {
        match (self, validated) {
            (Action::Added, true) => "added and validated",
            (Action::Added, false) => "added but left NOT VALID",
            (Action::Replaced, true) => "replaced and validated",
            (Action::Replaced, false) => "replaced but left NOT VALID",
            (Action::WasNotValid, true) => "validated",
            (Action::WasNotValid, false) => "still NOT VALID",
        }
    }
}

/// Installs the guards of `tables` in region `name`. Never fails: whatever
/// goes wrong is a problem line.
pub async fn region(name: &str, dsn: &Dsn, timeout: Duration, tables: &[&TableConfig]) -> Outcome {
    let mut raw = Outcome::default();
    match crate::pgmeta::connect(dsn, timeout).await {
        Err(e) => raw.problem(format!("cannot connect: {e}")),
        // `byokpg setup` normally made the schema already; running it (its
        // own transaction, its own lock) makes sure the function has a home.
        Ok(client) => match crate::setup::setup_region(&client).await {
            Err(e) => raw.problem(e.to_string()),
            Ok(()) => install(&client, tables, &mut raw).await,
        },
    }
    Outcome {
        lines: raw
            .lines
            .into_iter()
            .map(|l| format!("region {name}: {l}"))
            .collect(),
        problems: raw.problems,
    }
}

async fn install(client: &Client, tables: &[&TableConfig], out: &mut Outcome) {
    let pending = match transaction(client, tables, out).await {
        Ok(p) => p,
        Err(e) => {
            out.problem(format!("guards not installed: {}", pg_message(&e)));
            return;
        }
    };
    for p in pending {
        out.lines[p.line] = match validate(client, &p).await {
            Ok(line) => line,
            Err(e) => {
                out.problems += 1;
                format!(
                    "{}: {}, but validating it failed: {}",
                    p.label,
                    p.action.outcome(false),
                    pg_message(&e)
                )
            }
        };
    }
}

async fn transaction(
    client: &Client,
    tables: &[&TableConfig],
    out: &mut Outcome,
) -> Result<Vec<Pending>, tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    match changes(client, tables, out).await {
        Ok(pending) => {
            client.batch_execute("COMMIT").await?;
            Ok(pending)
        }
        Err(e) => {
            // Already aborted; ROLLBACK only ends it. Its own error adds nothing.
            let _ = client.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

/// Everything inside the transaction. Each table runs under a savepoint, so
/// one table that fails (not its owner, say) is reported and the others
/// still get their guards.
async fn changes(
    client: &Client,
    tables: &[&TableConfig],
    out: &mut Outcome,
) -> Result<Vec<Pending>, tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_xact_lock($1)", &[&GUARDS_LOCK_KEY])
        .await?;
    if tables.iter().any(|t| t.append_only)
        && inspect::function(client).await? != GuardState::InPlace
    {
        client.batch_execute(&sql::reject_function_sql()).await?;
        out.note(format!("function {} installed", sql::REJECT_FUNCTION));
    }
    let mut pending = Vec::new();
    for t in tables {
        client.batch_execute("SAVEPOINT byokpg_guards").await?;
        match table(client, t).await {
            Ok((o, p)) => {
                client
                    .batch_execute("RELEASE SAVEPOINT byokpg_guards")
                    .await?;
                let offset = out.lines.len();
                out.append(o);
                pending.extend(p.into_iter().map(|p| Pending {
                    line: p.line + offset,
                    ..p
                }));
            }
            Err(e) => {
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT byokpg_guards")
                    .await?;
                out.problem(format!(
                    "{}: guards not installed: {}",
                    t.qualified(),
                    pg_message(&e)
                ));
            }
        }
    }
    Ok(pending)
}

async fn table(
    client: &Client,
    t: &TableConfig,
) -> Result<(Outcome, Vec<Pending>), tokio_postgres::Error> {
    let mut out = Outcome::default();
    let mut pending = Vec::new();
    let report = inspect::table(client, t).await?;
    let guards = match report.state {
        TableState::Missing => {
            out.problem(format!(
                "{}: table does not exist; no guards installed",
                report.table
            ));
            return Ok((out, pending));
        }
        TableState::NotATable(what) => {
            out.problem(format!(
                "{}: is {what}; guards apply to tables",
                report.table
            ));
            return Ok((out, pending));
        }
        TableState::Present(guards) => guards,
    };
    let mut parent_row_trigger_made = false;
    for g in &guards {
        let prefix = format!("{}: {}", report.table, g.label());
        if let GuardKind::Ciphertext { .. } = g.kind {
            if let Some(p) = constraint(client, g, &prefix, &mut out).await? {
                pending.push(p);
            }
        } else {
            trigger(client, g, &prefix, &mut parent_row_trigger_made, &mut out).await?;
        }
    }
    Ok((out, pending))
}

async fn constraint(
    client: &Client,
    g: &Guard,
    label: &str,
    out: &mut Outcome,
) -> Result<Option<Pending>, tokio_postgres::Error> {
    let (action, condition) = match (&g.state, &g.condition) {
        (GuardState::InPlace, _) => {
            out.note(format!("{label}: in place"));
            return Ok(None);
        }
        (GuardState::NotValid, Some(c)) => (Action::WasNotValid, c),
        (GuardState::Missing, Some(c)) => (Action::Added, c),
        (GuardState::Outdated, Some(c)) => (Action::Replaced, c),
        (state, _) => {
            out.problem(format!("{label}: {}", state.describe()));
            return Ok(None);
        }
    };
    if !matches!(action, Action::WasNotValid) {
        let replace = matches!(action, Action::Replaced);
        let ddl = sql::add_constraint_sql(&g.relation_sql, &g.name, condition, replace);
        client.batch_execute(&ddl).await?;
    }
    // Placeholder until the validation after the commit says how it went.
    out.note(format!("{label}: pending validation"));
    Ok(Some(Pending {
        line: out.lines.len() - 1,
        label: label.to_owned(),
        relation_sql: g.relation_sql.clone(),
        name: g.name.clone(),
        condition: condition.clone(),
        action,
    }))
}

async fn trigger(
    client: &Client,
    g: &Guard,
    label: &str,
    parent_row_trigger_made: &mut bool,
    out: &mut Outcome,
) -> Result<(), tokio_postgres::Error> {
    let name = sql::quote_ident(&g.name);
    let rel = &g.relation_sql;
    let is_row = g.kind == GuardKind::AppendOnly;
    // A partition's row trigger is a clone of the parent's: creating (or
    // re-creating) the parent's made it already.
    if g.on_partition && is_row && *parent_row_trigger_made && g.state != GuardState::InPlace {
        out.note(format!("{label}: added with the parent table's"));
        return Ok(());
    }
    let done = match g.state {
        GuardState::InPlace => "in place",
        GuardState::Missing => {
            client
                .batch_execute(&sql::create_trigger_sql(rel, &g.name))
                .await?;
            "added"
        }
        GuardState::Disabled => {
            client
                .batch_execute(&format!("ALTER TABLE {rel} ENABLE TRIGGER {name}"))
                .await?;
            "enabled"
        }
        _ => {
            let create = sql::create_trigger_sql(rel, &g.name);
            client
                .batch_execute(&format!("DROP TRIGGER IF EXISTS {name} ON {rel}; {create}"))
                .await?;
            "replaced"
        }
    };
    if is_row && !g.on_partition && matches!(g.state, GuardState::Missing | GuardState::Outdated) {
        *parent_row_trigger_made = true;
    }
    out.note(format!("{label}: {done}"));
    Ok(())
}

/// `VALIDATE CONSTRAINT` scans the table under SHARE UPDATE EXCLUSIVE, so
/// reads and writes go on meanwhile; new writes are already checked by the
/// NOT VALID constraint, so a count of 0 offending rows cannot go stale.
async fn validate(client: &Client, p: &Pending) -> Result<String, tokio_postgres::Error> {
    let validate = format!(
        "ALTER TABLE {} VALIDATE CONSTRAINT {}",
        p.relation_sql,
        sql::quote_ident(&p.name)
    );
    match client.batch_execute(&validate).await {
        Ok(()) => Ok(format!("{}: {}", p.label, p.action.outcome(true))),
        Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
            let count = format!(
                "SELECT count(*) FROM {} WHERE NOT {}",
                p.relation_sql, p.condition
            );
            let rows: i64 = client.query_one(&count, &[]).await?.get(0);
            Ok(format!(
                "{}: {}: {rows} existing row(s) hold values that are not byokpg ciphertext \
                 (legacy plaintext?); new writes are checked. Encrypt or clear those values, \
                 then run `byokpg guards install` again to validate it",
                p.label,
                p.action.outcome(false)
            ))
        }
        Err(e) => Err(e),
    }
}
