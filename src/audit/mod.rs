//! Append-only audit tables: the hash chain computed in the database, and
//! `byokpg audit verify` / `audit attest` (SPEC §6, docs/AUDIT.md,
//! docs/FORMAT.md "Hash chain").

/// Name of the BEFORE INSERT trigger that chains rows. Triggers of one
/// event fire in name order; `zz_` makes it fire after the usual user
/// triggers, so it hashes the row as stored.
pub const CHAIN_TRIGGER: &str = "zz_byokpg_chain";
