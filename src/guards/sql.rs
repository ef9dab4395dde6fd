//! Names, expressions and statements of the guards. Pure code, no I/O, so
//! the naming rules are unit-tested without a database.
use sha2::{Digest as _, Sha256};

use crate::crypto::{bytea_check_sql, text_check_sql};

/// The advisory lock `guards install` holds per region ("byokpggd"); distinct
/// from `setup::SETUP_LOCK_KEY` so the two never wait on each other.
pub const GUARDS_LOCK_KEY: i64 = 0x6279_6f6b_7067_6764;

/// Prefix of every ciphertext CHECK constraint byokpg installs.
pub const CONSTRAINT_PREFIX: &str = "byokpg_ct_";
/// Row-level trigger rejecting UPDATE and DELETE on append-only tables.
pub const APPEND_ONLY_TRIGGER: &str = "byokpg_append_only";
/// Statement-level trigger rejecting TRUNCATE on append-only tables.
pub const NO_TRUNCATE_TRIGGER: &str = "byokpg_no_truncate";
/// The trigger function both triggers call.
pub const REJECT_FUNCTION: &str = "byokpg.reject_change()";

/// `pg_trigger.tgtype` bits: ROW 1, BEFORE 2, DELETE 8, UPDATE 16, TRUNCATE 32.
pub const APPEND_ONLY_TGTYPE: i32 = 1 | 2 | 8 | 16;
pub const NO_TRUNCATE_TGTYPE: i32 = 2 | 32;

/// PostgreSQL truncates identifiers to 63 bytes (NAMEDATALEN - 1).
const MAX_IDENT_BYTES: usize = 63;
/// Hex digits of the hash that tells long names apart.
const NAME_HASH_HEX: usize = 8;

/// The body of `byokpg.reject_change()`, exactly as `prosrc` stores it, so
/// `guards status` can tell an edited function from ours.
pub const REJECT_BODY: &str = "
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = '42501',
        MESSAGE = format('byokpg: table %I.%I is append-only: %s is not allowed',
                         TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP),
        HINT = 'byokpg guards reject UPDATE, DELETE and TRUNCATE on append-only tables; see docs/GUARDS.md';
END
";

/// Creates or replaces the trigger function. `search_path` is pinned so a
/// caller's path cannot change what `format` resolves to.
pub fn reject_function_sql() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION byokpg.reject_change() RETURNS trigger \
         LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $byokpg${REJECT_BODY}$byokpg$;\n\
         COMMENT ON FUNCTION byokpg.reject_change() IS \
         'byokpg: rejects UPDATE, DELETE and TRUNCATE on append-only tables (byokpg guards install)';"
    )
}

/// Always quotes, so keywords (`user`, `order`) and mixed case are safe.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `"schema"."table"`.
pub fn quote_qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(table))
}

/// What a column stores ciphertext as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Text,
    Bytea,
}

impl Storage {
    /// The storage for a column's base type (domains resolved to their base),
    /// or `None` when the type cannot hold ciphertext. Same rule as
    /// `byokpg check`: `text`, `varchar` without a length, `bytea`.
    pub fn of(base_type: &str, typmod: i32) -> Option<Self> {
        match base_type {
            "text" => Some(Storage::Text),
            "varchar" if typmod < 0 => Some(Storage::Text),
            "bytea" => Some(Storage::Bytea),
            _ => None,
        }
    }
}

/// The constraint name for `column`: `byokpg_ct_<column>`, or, when that
/// would pass 63 bytes, a prefix of the column plus a hash of the whole name
/// (PostgreSQL would otherwise truncate silently and two long columns with a
/// common prefix would collide).
pub fn constraint_name(column: &str) -> String {
    let full = format!("{CONSTRAINT_PREFIX}{column}");
    if full.len() <= MAX_IDENT_BYTES {
        return full;
    }
    let room = MAX_IDENT_BYTES - CONSTRAINT_PREFIX.len() - 1 - NAME_HASH_HEX;
    let mut cut = room;
    while !column.is_char_boundary(cut) {
        cut -= 1;
    }
    let digest = hex::encode(Sha256::digest(column.as_bytes()));
    format!(
        "{CONSTRAINT_PREFIX}{}_{}",
        &column[..cut],
        &digest[..NAME_HASH_HEX]
    )
}

/// The CHECK condition for a column: NULL or byokpg ciphertext.
pub fn check_condition(column: &str, storage: Storage) -> String {
    let col = quote_ident(column);
    let shape = match storage {
        // COLLATE "C": PostgreSQL refuses regular expressions on columns
        // with a nondeterministic (e.g. case-insensitive ICU) collation,
        // which would make every write fail instead of only plaintext.
        Storage::Text => text_check_sql(&format!("({col} COLLATE \"C\")")),
        Storage::Bytea => bytea_check_sql(&col),
    };
    format!("({col} IS NULL OR {shape})")
}

/// The comment byokpg puts on its constraints: a fingerprint of the
/// condition, so `status` can tell a constraint written by another byokpg
/// version (or edited by hand) from the current one without parsing
/// PostgreSQL's deparsed expression.
pub fn fingerprint(condition: &str) -> String {
    let digest = hex::encode(Sha256::digest(condition.as_bytes()));
    format!("byokpg guard v1 sha256:{}", &digest[..16])
}

/// `ADD CONSTRAINT ... NOT VALID` (and `DROP` first when `replace`), then
/// the fingerprint comment.
pub fn add_constraint_sql(relation: &str, name: &str, condition: &str, replace: bool) -> String {
    let qname = quote_ident(name);
    let drop = if replace {
        format!("DROP CONSTRAINT {qname}, ")
    } else {
        String::new()
    };
    format!(
        "ALTER TABLE {relation} {drop}ADD CONSTRAINT {qname} CHECK {condition} NOT VALID;\n\
         COMMENT ON CONSTRAINT {qname} ON {relation} IS '{}';",
        fingerprint(condition)
    )
}

/// `CREATE TRIGGER` for one of the two append-only triggers.
pub fn create_trigger_sql(relation: &str, trigger: &str) -> String {
    let when = if trigger == NO_TRUNCATE_TRIGGER {
        "BEFORE TRUNCATE"
    } else {
        "BEFORE UPDATE OR DELETE"
    };
    let each = if trigger == NO_TRUNCATE_TRIGGER {
        "STATEMENT"
    } else {
        "ROW"
    };
    format!(
        "CREATE TRIGGER {} {when} ON {relation} FOR EACH {each} EXECUTE FUNCTION {REJECT_FUNCTION}",
        quote_ident(trigger)
    )
}
