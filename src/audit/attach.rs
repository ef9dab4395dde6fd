//! `byokpg setup` (and so `serve`): attach the chain trigger, and the
//! unique index its head lookup needs, to every `hash_chain = true` table
//! that exists. Idempotent; runs under setup's advisory lock, so several
//! byokpg instances starting at once do not race.

use sha2::{Digest as _, Sha256};
use tokio_postgres::Client;

use super::CHAIN_TRIGGER;
use super::sql::{pg_message, quote_ident, quote_literal, quote_qualified};
use crate::config::{Config, TableConfig};

/// Attach the chain triggers in the database behind `client`; one report
/// line per hash-chained table. `Err` names the table that cannot be
/// chained (missing column, wrong type) or the failing statement.
pub async fn attach_chains(client: &Client, cfg: &Config) -> Result<Vec<String>, String> {
    let tables: Vec<&TableConfig> = cfg.tables.iter().filter(|t| t.hash_chain).collect();
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let pg = |e: tokio_postgres::Error| pg_message(&e);
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let out = attach_all(client, &tables).await;
    let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(pg)?;
    out
}

async fn attach_all(client: &Client, tables: &[&TableConfig]) -> Result<Vec<String>, String> {
    let pg = |e: tokio_postgres::Error| pg_message(&e);
    client
        .execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&crate::setup::SETUP_LOCK_KEY],
        )
        .await
        .map_err(pg)?;
    // Replaced at every setup, so the function always matches this binary.
    client
        .batch_execute(super::sql::CHAIN_FUNCTION)
        .await
        .map_err(pg)?;
    let mut lines = Vec::new();
    for t in tables {
        let line = attach_one(client, t)
            .await
            .map_err(|e| format!("{}: {e}", t.qualified()))?;
        lines.push(format!("{}: {line}", t.qualified()));
    }
    Ok(lines)
}

async fn attach_one(client: &Client, t: &TableConfig) -> Result<&'static str, String> {
    let pg = |e: tokio_postgres::Error| pg_message(&e);
    let rel = quote_qualified(&t.schema(), &t.table());
    let oid: Option<u32> = client
        .query_one("SELECT to_regclass($1)::oid", &[&rel])
        .await
        .map_err(pg)?
        .get(0);
    let Some(oid) = oid else {
        return Ok("hash chain: table not found; run `byokpg setup` again once it exists");
    };
    check_columns(client, oid, t).await?;
    let [seq, prev, hash] = t.chain_columns().unwrap_or(["", "", ""]);
    let tenant = t.tenant_column.as_deref().unwrap_or("");
    let key = match tenant {
        "" => quote_ident(seq),
        tc => format!("{}, {}", quote_ident(tc), quote_ident(seq)),
    };
    client
        .batch_execute(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS {} ON {rel} ({key})",
            quote_ident(&index_name(&t.qualified()))
        ))
        .await
        .map_err(pg)?;
    let args = [seq, prev, hash, tenant];
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    let found = client
        .query_opt(
            "SELECT tgargs, tgenabled::text FROM pg_trigger WHERE tgrelid = $1 AND tgname = $2",
            &[&oid, &CHAIN_TRIGGER],
        )
        .await
        .map_err(pg)?;
    let trigger = quote_ident(CHAIN_TRIGGER);
    let create = format!(
        "CREATE TRIGGER {trigger} BEFORE INSERT ON {rel} FOR EACH ROW \
         EXECUTE FUNCTION byokpg.chain_append({})",
        args.iter()
            .map(|a| quote_literal(a))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (sql, line) = match found {
        None => (create, "hash chain trigger attached"),
        Some(row) if row.get::<_, Vec<u8>>(0) != wanted => (
            format!("DROP TRIGGER {trigger} ON {rel}; {create}"),
            "hash chain trigger replaced (chain columns changed)",
        ),
        Some(row) if row.get::<_, String>(1) == "D" => (
            format!("ALTER TABLE {rel} ENABLE TRIGGER {trigger}"),
            "hash chain trigger was disabled; enabled",
        ),
        Some(_) => return Ok("hash chain trigger in place"),
    };
    client.batch_execute(&sql).await.map_err(pg)?;
    Ok(line)
}

/// The chain columns must exist with types that hold what the trigger
/// writes: an integer chain_seq and text hashes.
async fn check_columns(client: &Client, oid: u32, t: &TableConfig) -> Result<(), String> {
    let [seq, prev, hash] = t.chain_columns().unwrap_or(["", "", ""]);
    let mut wanted = vec![(seq, "an integer type"), (prev, "text"), (hash, "text")];
    if let Some(tc) = &t.tenant_column {
        wanted.push((tc.as_str(), ""));
    }
    for (column, kind) in wanted {
        let row = client
            .query_opt(
                "SELECT t.typname::text, t.typcategory::text FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = $1 AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped",
                &[&oid, &column],
            )
            .await
            .map_err(|e| pg_message(&e))?;
        let Some(row) = row else {
            return Err(format!(
                "column {column} does not exist (hash_chain needs it; add it or name another \
                 column in the policy)"
            ));
        };
        let (typname, category): (String, String) = (row.get(0), row.get(1));
        let ok = match kind {
            "an integer type" => matches!(typname.as_str(), "int8" | "int4" | "numeric"),
            "text" => category == "S",
            _ => true,
        };
        if !ok {
            return Err(format!(
                "column {column} has type {typname}; the hash chain needs {kind} there"
            ));
        }
    }
    Ok(())
}

/// The unique index on (tenant, chain_seq): a name that fits 63 bytes.
fn index_name(qualified: &str) -> String {
    let digest = hex::encode(Sha256::digest(qualified.as_bytes()));
    format!("byokpg_chain_{}", &digest[..16])
}
