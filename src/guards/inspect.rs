//! Reads the catalog: which guards a region database has, and in what state.
//! `status` shows the result; `install` acts on it.
use std::collections::BTreeMap;

use tokio_postgres::Client;

use super::report::{Guard, GuardKind, GuardState, RegionGuards, TableReport, TableState};
use super::sql::{
    self, APPEND_ONLY_TGTYPE, APPEND_ONLY_TRIGGER, NO_TRUNCATE_TGTYPE, NO_TRUNCATE_TRIGGER,
    REJECT_BODY, Storage,
};
use crate::config::TableConfig;

const RELATION_SQL: &str = "\
SELECT c.oid, c.relkind::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = $1 AND c.relname = $2";

/// Columns with their base type (domains resolved one level, as `check`).
const COLUMNS_SQL: &str = "\
SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), bt.typname::text,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped";

const CONSTRAINTS_SQL: &str = "\
SELECT conname::text, convalidated, obj_description(oid, 'pg_constraint')
  FROM pg_constraint WHERE conrelid = $1 AND contype = 'c'";

/// Every partition below a partitioned table, at any depth.
const PARTITIONS_SQL: &str = "\
SELECT c.oid, n.nspname::text, c.relname::text
  FROM pg_partition_tree($1::oid::regclass) p
  JOIN pg_class c ON c.oid = p.relid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE p.relid <> $1::oid::regclass AND c.relkind IN ('r', 'p')
 ORDER BY p.level, n.nspname, c.relname";

const TRIGGERS_SQL: &str = "\
SELECT t.tgname::text, t.tgenabled::text, t.tgtype::int4,
       t.tgfoid = coalesce(to_regprocedure('byokpg.reject_change()')::oid, 0::oid)
  FROM pg_trigger t
 WHERE t.tgrelid = $1 AND NOT t.tgisinternal AND t.tgname IN ($2, $3)";

const FUNCTION_SQL: &str =
    "SELECT prosrc FROM pg_proc WHERE oid = to_regprocedure('byokpg.reject_change()')";

/// A PostgreSQL error as one line (no DSN in it, so no password).
pub fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    }
}

/// Every guard of `tables` in the database `client` is connected to.
pub async fn region(
    client: &Client,
    tables: &[&TableConfig],
) -> Result<RegionGuards, tokio_postgres::Error> {
    let function = if tables.iter().any(|t| t.append_only) {
        Some(function(client).await?)
    } else {
        None
    };
    let mut out = Vec::with_capacity(tables.len());
    for t in tables {
        out.push(table(client, t).await?);
    }
    Ok(RegionGuards {
        function,
        tables: out,
    })
}

/// State of `byokpg.reject_change()`: its body must be ours.
pub async fn function(client: &Client) -> Result<GuardState, tokio_postgres::Error> {
    let row = client.query_opt(FUNCTION_SQL, &[]).await?;
    Ok(match row {
        None => GuardState::Missing,
        Some(r) if r.get::<_, String>(0) == REJECT_BODY => GuardState::InPlace,
        Some(_) => GuardState::Outdated,
    })
}

/// The guards one policy table should have, and their state.
pub async fn table(client: &Client, t: &TableConfig) -> Result<TableReport, tokio_postgres::Error> {
    let (schema, name) = (t.schema(), t.table());
    let report = |state| TableReport {
        table: t.qualified(),
        state,
    };
    let Some(rel) = client.query_opt(RELATION_SQL, &[&schema, &name]).await? else {
        return Ok(report(TableState::Missing));
    };
    let oid: u32 = rel.get(0);
    let kind: String = rel.get(1);
    let partitioned = match kind.as_str() {
        "r" => false,
        "p" => true,
        other => {
            return Ok(report(TableState::NotATable(
                relkind_name(other).to_owned(),
            )));
        }
    };
    let relation = Relation {
        oid,
        shown: t.qualified(),
        sql: sql::quote_qualified(&schema, &name),
        partition: false,
    };
    let mut guards = column_guards(client, &relation, t).await?;
    if t.append_only {
        guards.extend(trigger_guards(client, &relation).await?);
        if partitioned {
            for p in partitions(client, oid).await? {
                guards.extend(trigger_guards(client, &p).await?);
            }
        }
    }
    Ok(report(TableState::Present(guards)))
}

fn relkind_name(kind: &str) -> &'static str {
    match kind {
        "v" => "a view",
        "m" => "a materialized view",
        "S" => "a sequence",
        "f" => {
            "a foreign table (PostgreSQL does not enforce constraints on those; guard the remote table)"
        }
        "i" | "I" => "an index",
        _ => "not a table",
    }
}

struct Relation {
    oid: u32,
    shown: String,
    sql: String,
    partition: bool,
}

struct Column {
    shown_type: String,
    storage: Option<Storage>,
}

async fn column_guards(
    client: &Client,
    rel: &Relation,
    t: &TableConfig,
) -> Result<Vec<Guard>, tokio_postgres::Error> {
    if t.columns.is_empty() {
        return Ok(Vec::new());
    }
    let (columns, constraints) = catalog(client, rel.oid).await?;
    let mut out = Vec::with_capacity(t.columns.len());
    for column in t.columns.keys() {
        let name = sql::constraint_name(column);
        let mut condition = None;
        let state = match columns.get(column) {
            None => GuardState::NoColumn,
            Some(Column {
                storage: None,
                shown_type,
            }) => GuardState::WrongType(shown_type.clone()),
            Some(Column {
                storage: Some(storage),
                ..
            }) => {
                let cond = sql::check_condition(column, *storage);
                let state = constraint_state(constraints.get(&name), &cond);
                condition = Some(cond);
                state
            }
        };
        out.push(Guard {
            kind: GuardKind::Ciphertext {
                column: column.clone(),
            },
            name,
            relation: rel.shown.clone(),
            state,
            relation_sql: rel.sql.clone(),
            condition,
            on_partition: false,
        });
    }
    Ok(out)
}

/// The table's columns, and its CHECK constraints (validated?, comment).
async fn catalog(
    client: &Client,
    oid: u32,
) -> Result<
    (
        BTreeMap<String, Column>,
        BTreeMap<String, (bool, Option<String>)>,
    ),
    tokio_postgres::Error,
> {
    let columns = client
        .query(COLUMNS_SQL, &[&oid])
        .await?
        .iter()
        .map(|r| {
            let column = Column {
                shown_type: r.get(1),
                storage: Storage::of(r.get(2), r.get(3)),
            };
            (r.get(0), column)
        })
        .collect();
    let constraints = client
        .query(CONSTRAINTS_SQL, &[&oid])
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    Ok((columns, constraints))
}

fn constraint_state(found: Option<&(bool, Option<String>)>, condition: &str) -> GuardState {
    match found {
        None => GuardState::Missing,
        Some((_, comment)) if comment.as_deref() != Some(sql::fingerprint(condition).as_str()) => {
            GuardState::Outdated
        }
        Some((true, _)) => GuardState::InPlace,
        Some((false, _)) => GuardState::NotValid,
    }
}

async fn partitions(client: &Client, oid: u32) -> Result<Vec<Relation>, tokio_postgres::Error> {
    Ok(client
        .query(PARTITIONS_SQL, &[&oid])
        .await?
        .iter()
        .map(|r| {
            let (schema, name): (String, String) = (r.get(1), r.get(2));
            Relation {
                oid: r.get(0),
                shown: format!("{schema}.{name}"),
                sql: sql::quote_qualified(&schema, &name),
                partition: true,
            }
        })
        .collect())
}

/// Both append-only triggers on one relation. A row trigger on a partition
/// is the clone PostgreSQL makes of the parent's; TRUNCATE triggers are not
/// cloned, so each partition needs its own (TRUNCATE of a partition does
/// not fire the parent's).
async fn trigger_guards(
    client: &Client,
    rel: &Relation,
) -> Result<Vec<Guard>, tokio_postgres::Error> {
    let found: BTreeMap<String, (String, i32, bool)> = client
        .query(
            TRIGGERS_SQL,
            &[&rel.oid, &APPEND_ONLY_TRIGGER, &NO_TRUNCATE_TRIGGER],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let expected = [
        (
            GuardKind::AppendOnly,
            APPEND_ONLY_TRIGGER,
            APPEND_ONLY_TGTYPE,
        ),
        (
            GuardKind::NoTruncate,
            NO_TRUNCATE_TRIGGER,
            NO_TRUNCATE_TGTYPE,
        ),
    ];
    Ok(expected
        .into_iter()
        .map(|(kind, name, tgtype)| Guard {
            kind,
            name: name.to_owned(),
            relation: rel.shown.clone(),
            state: trigger_state(found.get(name), tgtype),
            relation_sql: rel.sql.clone(),
            condition: None,
            on_partition: rel.partition,
        })
        .collect())
}

fn trigger_state(found: Option<&(String, i32, bool)>, tgtype: i32) -> GuardState {
    match found {
        None => GuardState::Missing,
        Some((_, found_type, ours)) if !ours || *found_type != tgtype => GuardState::Outdated,
        // 'D' disabled; 'R' fires only when session_replication_role = replica.
        Some((enabled, ..)) if matches!(enabled.as_str(), "D" | "R") => GuardState::Disabled,
        Some(_) => GuardState::InPlace,
    }
}
