//! The walk over the tenant's protected tables: keyset-paginated batches,
//! optimistic per-row updates, a checkpoint per batch.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use super::job::{self, JobState};
use super::{Options, Progress, ReencryptError, Summary, throttle_delay};
use crate::config::{ColumnMode, Config};
use crate::crypto::{self, ColumnId, FieldCipher, Mode};
use crate::guards::sql::{quote_ident, quote_qualified};
use crate::keys::{KeyError, KeyManager};

/// Verification passes after the main one, at most.
const MAX_PASSES: u32 = 4;
/// Attempts at one row that keeps changing under us.
const ROW_ATTEMPTS: u32 = 5;

/// One protected column.
#[derive(Debug, Clone)]
pub struct Col {
    name: String,
    quoted: String,
    bytea: bool,
    mode: Mode,
}

/// One protected table as the walk sees it.
#[derive(Debug, Clone)]
pub struct Table {
    pub display: String,
    schema: String,
    name: String,
    qualified: String,
    tenant_col: Option<String>,
    cols: Vec<Col>,
    /// Primary key columns (quoted name, SQL type); empty = walk by `ctid`.
    key: Vec<(String, String)>,
    /// Why it is not re-encrypted.
    pub skip: Option<&'static str>,
}

/// The clear DEK version of a stored value (NULL for NULL or a value that
/// is not byokpg ciphertext), from the envelope header (FORMAT.md §2).
fn version_expr(c: &Col) -> String {
    crypto::dek_version_sql(&c.quoted, c.bytea)
}

impl Table {
    fn pending(&self, target: u32) -> String {
        let parts: Vec<String> = self
            .cols
            .iter()
            .map(|c| format!("{} <> {target}", version_expr(c)))
            .collect();
        format!("({})", parts.join(" OR "))
    }

    fn key_cols(&self) -> Vec<String> {
        if self.key.is_empty() {
            vec!["ctid".to_owned()]
        } else {
            self.key.iter().map(|(k, _)| k.clone()).collect()
        }
    }

    /// `(k1, k2) OP ($i::text::t1, …)` with parameters from `first`.
    fn key_cmp(&self, op: &str, first: usize) -> String {
        let lhs = self.key_cols();
        let rhs: Vec<String> = if self.key.is_empty() {
            vec![format!("${first}::text::tid")]
        } else {
            self.key
                .iter()
                .enumerate()
                .map(|(i, (_, t))| format!("${}::text::{t}", first + i))
                .collect()
        };
        format!("({}) {op} ({})", lhs.join(", "), rhs.join(", "))
    }

    fn tenant_filter(&self) -> String {
        self.tenant_col.as_ref().map_or_else(
            || "$1::text IS NOT NULL".to_owned(),
            |t| format!("{t} = $1"),
        )
    }

    fn select_sql(&self, target: u32, after: bool, limit: u32) -> String {
        // Aliased: an output column named like the key (`id::text` is named
        // `id`) would make `ORDER BY id` sort by the text form, and the
        // keyset `(id) > $2` (on the real column) would then skip rows.
        let keys: Vec<String> = self
            .key_cols()
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}::text AS byokpg_key_{i}"))
            .collect();
        let cols: Vec<&str> = self.cols.iter().map(|c| c.quoted.as_str()).collect();
        let keyset = if after {
            format!(" AND {}", self.key_cmp(">", 2))
        } else {
            String::new()
        };
        format!(
            "SELECT {}, {} FROM {} WHERE {}{keyset} AND {} ORDER BY {} LIMIT {limit}",
            keys.join(", "),
            cols.join(", "),
            self.qualified,
            self.tenant_filter(),
            self.pending(target),
            self.key_cols().join(", ")
        )
    }
}

/// The policy tables the walk covers (and those it skips, with why).
pub async fn tables(client: &Client, cfg: &Config) -> Result<Vec<Table>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for t in cfg.tables.iter().filter(|t| !t.columns.is_empty()) {
        let (schema, name) = (t.schema(), t.table());
        let qualified = quote_qualified(&schema, &name);
        let types: HashMap<String, String> = client
            .query(
                "SELECT a.attname::text, t.typname::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&qualified],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let skip = if types.is_empty() {
            Some("the table does not exist")
        } else if t.append_only || t.hash_chain {
            Some("append-only: its hash chain covers the stored ciphertext and updates are refused")
        } else {
            None
        };
        let key = client
            .query(
                "SELECT quote_ident(a.attname), format_type(a.atttypid, a.atttypmod) FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = to_regclass($1) AND i.indisprimary \
                 ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&qualified],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let cols = t
            .columns
            .iter()
            .filter(|(c, _)| types.contains_key(*c))
            .map(|(c, m)| Col {
                name: c.clone(),
                quoted: quote_ident(c),
                bytea: types.get(c).is_some_and(|t| t == "bytea"),
                mode: match m {
                    ColumnMode::Deterministic => Mode::Deterministic,
                    ColumnMode::Randomized => Mode::Randomized,
                },
            })
            .collect();
        out.push(Table {
            display: format!("{schema}.{name}"),
            schema,
            name,
            qualified,
            tenant_col: t.tenant_column.as_deref().map(quote_ident),
            cols,
            key,
            skip,
        });
    }
    Ok(out)
}

fn walked(tables: &[Table]) -> impl Iterator<Item = (usize, &Table)> {
    tables
        .iter()
        .enumerate()
        .filter(|(_, t)| t.skip.is_none() && !t.cols.is_empty())
}

/// Rows of the tenant holding a value under another version than `target`.
pub async fn count_pending(
    client: &Client,
    tenant: &str,
    target: u32,
    tables: &[Table],
) -> Result<u64, tokio_postgres::Error> {
    let mut total = 0u64;
    for (_, t) in walked(tables) {
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {} AND {}",
            t.qualified,
            t.tenant_filter(),
            t.pending(target)
        );
        let n: i64 = client.query_one(&sql, &[&tenant]).await?.get(0);
        total += u64::try_from(n).unwrap_or(0);
    }
    Ok(total)
}

/// Versions the tenant's rows use in skipped (append-only) tables, with
/// one table using each; `None` when such a table has no tenant column
/// (its values cannot be attributed, so every version is kept).
pub async fn versions_in_skipped(
    client: &Client,
    tenant: &str,
    tables: &[Table],
) -> Result<Option<BTreeMap<u32, String>>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for t in tables
        .iter()
        .filter(|t| t.skip.is_some() && !t.cols.is_empty())
    {
        if t.tenant_col.is_none() {
            return Ok(None);
        }
        for v in table_versions(client, tenant, t).await? {
            out.entry(v).or_insert_with(|| t.display.clone());
        }
    }
    Ok(Some(out))
}

/// Versions the tenant's rows still use in the walked tables, with one
/// table using each: checked again right before retiring, so a version is
/// never retired while a row still needs it (rows written under it after
/// the last pass, or any the walk missed).
pub async fn versions_in_walked(
    client: &Client,
    tenant: &str,
    tables: &[Table],
) -> Result<BTreeMap<u32, String>, tokio_postgres::Error> {
    let mut out = BTreeMap::new();
    for (_, t) in walked(tables) {
        for v in table_versions(client, tenant, t).await? {
            out.entry(v).or_insert_with(|| t.display.clone());
        }
    }
    Ok(out)
}

/// The DEK versions of the tenant's values in one table.
async fn table_versions(
    client: &Client,
    tenant: &str,
    t: &Table,
) -> Result<Vec<u32>, tokio_postgres::Error> {
    let parts: Vec<String> = t
        .cols
        .iter()
        .map(|c| {
            format!(
                "SELECT {} AS v FROM {} WHERE {}",
                version_expr(c),
                t.qualified,
                t.tenant_filter()
            )
        })
        .collect();
    let sql = format!(
        "SELECT DISTINCT v FROM ({}) u WHERE v IS NOT NULL",
        parts.join(" UNION ALL ")
    );
    Ok(client
        .query(&sql, &[&tenant])
        .await?
        .iter()
        .filter_map(|r| u32::try_from(r.get::<_, i64>(0)).ok())
        .collect())
}

/// A stored value as read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Val {
    fn param(&self) -> Box<dyn ToSql + Sync + Send> {
        match self {
            Val::Text(v) => Box::new(v.clone()),
            Val::Bytes(v) => Box::new(v.clone()),
        }
    }
}

/// What re-encrypting one value gave.
enum Moved {
    Same,
    New(Val),
    /// Not decryptable with this tenant's keys: the version it names.
    Failed(u32),
}

/// Walks the tables, keeps the counters.
pub struct Walker<'a> {
    mgr: &'a KeyManager,
    tenant: &'a str,
    target: u32,
    client: &'a Client,
    opts: Options,
    ciphers: HashMap<(usize, usize, u32), FieldCipher>,
    started: Instant,
    examined_here: u64,
    updated: u64,
    retried: u64,
    failed: u64,
    examined: u64,
    /// Versions of the tenant's values the last pass could not move.
    pub unmoved: BTreeSet<u32>,
}

impl<'a> Walker<'a> {
    pub fn new(
        mgr: &'a KeyManager,
        tenant: &'a str,
        target: u32,
        client: &'a Client,
        opts: Options,
    ) -> Self {
        Self {
            mgr,
            tenant,
            target,
            client,
            opts,
            ciphers: HashMap::new(),
            started: Instant::now(),
            examined_here: 0,
            updated: 0,
            retried: 0,
            failed: 0,
            examined: 0,
            unmoved: BTreeSet::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        Summary {
            target: self.target,
            examined: self.examined,
            updated: self.updated,
            retried: self.retried,
            failed: self.failed,
            ..Summary::default()
        }
    }

    fn db(&self, e: &tokio_postgres::Error) -> ReencryptError {
        ReencryptError::Db {
            tenant: self.tenant.to_owned(),
            message: e.to_string(),
        }
    }

    /// The main pass, then verification passes until one moves nothing.
    pub async fn passes(
        &mut self,
        tables: &[Table],
        st: &mut JobState,
        progress: &mut Progress,
        stop: &AtomicBool,
    ) -> Result<(), ReencryptError> {
        loop {
            let before = self.updated;
            self.unmoved.clear();
            let todo: Vec<usize> = walked(tables)
                .map(|(i, _)| i)
                .filter(|i| *i >= st.table)
                .collect();
            for ti in todo {
                st.table = ti;
                self.walk_table(&tables[ti], ti, st, progress, stop).await?;
                st.key = None;
            }
            if st.pass >= MAX_PASSES || (st.pass > 1 && self.updated == before) {
                return Ok(());
            }
            st.pass += 1;
            st.table = 0;
            progress.line(&format!(
                "reencrypt {}: pass {} (verification: rows written under an old version meanwhile)",
                self.tenant, st.pass
            ));
        }
    }

    async fn walk_table(
        &mut self,
        t: &Table,
        ti: usize,
        st: &mut JobState,
        progress: &mut Progress,
        stop: &AtomicBool,
    ) -> Result<(), ReencryptError> {
        let batch = self.opts.batch.max(1);
        loop {
            if stop.load(Ordering::SeqCst) {
                return Err(ReencryptError::Interrupted {
                    tenant: self.tenant.to_owned(),
                });
            }
            self.ciphers.clear();
            self.client
                .batch_execute("BEGIN")
                .await
                .map_err(|e| self.db(&e))?;
            let n = match self.batch(t, ti, st, batch).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = self.client.batch_execute("ROLLBACK").await;
                    return Err(e);
                }
            };
            self.client
                .batch_execute("COMMIT")
                .await
                .map_err(|e| self.db(&e))?;
            if n == 0 {
                return Ok(());
            }
            progress.advance(n);
            self.examined_here += n;
            let wait = throttle_delay(self.opts.rate, self.examined_here, self.started.elapsed());
            tokio::time::sleep(wait).await;
        }
    }

    /// One batch inside the open transaction; returns rows examined.
    async fn batch(
        &mut self,
        t: &Table,
        ti: usize,
        st: &mut JobState,
        limit: u32,
    ) -> Result<u64, ReencryptError> {
        let sql = t.select_sql(self.target, st.key.is_some(), limit);
        let mut params: Vec<String> = vec![self.tenant.to_owned()];
        params.extend(st.key.iter().flatten().cloned());
        let refs: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = self
            .client
            .query(&sql, &refs)
            .await
            .map_err(|e| self.db(&e))?;
        let nkeys = t.key_cols().len();
        for row in &rows {
            let key: Vec<String> = (0..nkeys).map(|i| row.get(i)).collect();
            let vals = read_vals(t, row, nkeys).map_err(|e| self.db(&e))?;
            self.move_row(t, ti, &key, vals).await?;
            st.key = Some(key);
        }
        let n = rows.len() as u64;
        self.examined += n;
        st.done += n;
        job::checkpoint(self.client, self.tenant, st)
            .await
            .map_err(|e| self.db(&e))?;
        Ok(n)
    }

    /// Re-encrypts one row, optimistically; re-reads and retries when it
    /// changed meanwhile; gives up on a row that is gone.
    async fn move_row(
        &mut self,
        t: &Table,
        ti: usize,
        key: &[String],
        mut vals: Vec<Val>,
    ) -> Result<(), ReencryptError> {
        for attempt in 0..ROW_ATTEMPTS {
            let mut changes = Vec::new();
            for (ci, v) in vals.iter().enumerate() {
                match self.move_value(t, ti, ci, v).await? {
                    Moved::Same => {}
                    Moved::New(n) => changes.push((ci, v.clone(), n)),
                    Moved::Failed(version) => {
                        if t.tenant_col.is_some() && attempt == 0 {
                            self.failed += 1;
                            self.unmoved.insert(version);
                            tracing::warn!(target: "byokpg::keys", table = %t.display, column = %t.cols[ci].name, version, "a value could not be decrypted with the tenant's key; left as it is");
                        }
                    }
                }
            }
            if changes.is_empty() || self.update(t, key, &changes).await? {
                if !changes.is_empty() {
                    self.updated += 1;
                }
                return Ok(());
            }
            self.retried += 1;
            match self.reread(t, key).await? {
                Some(v) => vals = v,
                None => return Ok(()),
            }
        }
        Err(ReencryptError::Db {
            tenant: self.tenant.to_owned(),
            message: format!(
                "a row of {} changed {ROW_ATTEMPTS} times while being re-encrypted; run again",
                t.display
            ),
        })
    }

    async fn update(
        &self,
        t: &Table,
        key: &[String],
        changes: &[(usize, Val, Val)],
    ) -> Result<bool, ReencryptError> {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
        let mut sets = Vec::new();
        let mut guards = Vec::new();
        for (ci, old, new) in changes {
            let c = &t.cols[*ci];
            let ty = if c.bytea { "bytea" } else { "text" };
            params.push(new.param());
            sets.push(format!("{} = ${}::{ty}", c.quoted, params.len()));
            params.push(old.param());
            guards.push(format!(
                "{} IS NOT DISTINCT FROM ${}::{ty}",
                c.quoted,
                params.len()
            ));
        }
        let first = params.len() + 1;
        params.extend(
            key.iter()
                .map(|k| Box::new(k.clone()) as Box<dyn ToSql + Sync + Send>),
        );
        let sql = format!(
            "UPDATE {} SET {} WHERE {} AND {}",
            t.qualified,
            sets.join(", "),
            t.key_cmp("=", first),
            guards.join(" AND ")
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect();
        let n = self
            .client
            .execute(&sql, &refs)
            .await
            .map_err(|e| self.db(&e))?;
        Ok(n == 1)
    }

    async fn reread(&self, t: &Table, key: &[String]) -> Result<Option<Vec<Val>>, ReencryptError> {
        let cols: Vec<&str> = t.cols.iter().map(|c| c.quoted.as_str()).collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {}",
            cols.join(", "),
            t.qualified,
            t.key_cmp("=", 1)
        );
        let refs: Vec<&(dyn ToSql + Sync)> = key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        let row = self
            .client
            .query_opt(&sql, &refs)
            .await
            .map_err(|e| self.db(&e))?;
        row.map(|r| read_vals(t, &r, 0))
            .transpose()
            .map_err(|e| self.db(&e))
    }

    async fn move_value(
        &mut self,
        t: &Table,
        ti: usize,
        ci: usize,
        v: &Val,
    ) -> Result<Moved, ReencryptError> {
        let envelope = match v {
            Val::Text(Some(s)) => match crypto::decode_text(s.as_bytes()) {
                Ok(e) => e,
                Err(_) => return Ok(Moved::Same),
            },
            Val::Bytes(Some(b)) => b.clone(),
            Val::Text(None) | Val::Bytes(None) => return Ok(Moved::Same),
        };
        let Ok(header) = crypto::peek_header(&envelope) else {
            return Ok(Moved::Same);
        };
        let version = header.dek_version;
        if version == self.target {
            return Ok(Moved::Same);
        }
        let plain = match self.cipher(t, ti, ci, version).await? {
            Some(old) => match old.decrypt(&envelope) {
                Ok(p) => p,
                Err(_) => return Ok(Moved::Failed(version)),
            },
            None => return Ok(Moved::Failed(version)),
        };
        let Some(new) = self.cipher(t, ti, ci, self.target).await? else {
            return Ok(Moved::Failed(version));
        };
        Ok(Moved::New(match v {
            Val::Text(_) => Val::Text(Some(new.encrypt_text(&plain))),
            Val::Bytes(_) => Val::Bytes(Some(new.encrypt(&plain))),
        }))
    }

    /// The field cipher of (table, column, version); `None` when the tenant
    /// has no such version (another tenant's value).
    async fn cipher(
        &mut self,
        t: &Table,
        ti: usize,
        ci: usize,
        version: u32,
    ) -> Result<Option<&FieldCipher>, ReencryptError> {
        let k = (ti, ci, version);
        if !self.ciphers.contains_key(&k) {
            let dek = match self.mgr.dek(self.tenant, version).await {
                Ok(d) => d,
                Err(KeyError::UnknownVersion { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            let c = &t.cols[ci];
            let id = ColumnId {
                tenant: self.tenant,
                schema: &t.schema,
                table: &t.name,
                column: &c.name,
            };
            self.ciphers
                .insert(k, FieldCipher::new(&dek, version, &id, c.mode));
        }
        Ok(self.ciphers.get(&k))
    }
}

fn read_vals(
    t: &Table,
    row: &tokio_postgres::Row,
    from: usize,
) -> Result<Vec<Val>, tokio_postgres::Error> {
    t.cols
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(if c.bytea {
                Val::Bytes(row.try_get(from + i)?)
            } else {
                Val::Text(row.try_get(from + i)?)
            })
        })
        .collect()
}
