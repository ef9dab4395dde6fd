//! The write path of a session: a statement the classifier flagged is
//! planned (cached by SQL text), its protected literals are encrypted and
//! spliced in, and the Bind-time parameter plan is derived. Pure: no I/O.

use std::collections::HashMap;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::config::Config;
use crate::protocol::PgError;
use crate::rewrite::plan::{
    self, AuditRules, ColumnRef, PolicyTable, PolicyView, Refusal, StatementPlan, TenantCheck,
};
use crate::rewrite::{CryptoFailure, Need, ParamPlan, RowHook};

/// What the write path needs to know about the session's region.
pub struct WriteCtx {
    pub policy: PolicyView,
    /// The runtime classifier's tables plus this region's views over them:
    /// a statement naming such a view is planned like one on the table.
    pub classifier: crate::rewrite::Classifier,
    /// Planner column → protected column index in the region catalog.
    columns: HashMap<ColumnRef, usize>,
    /// Per catalog column: whether it is `bytea` (how a compared
    /// parameter's ciphertext list is cut apart in SQL).
    is_bytea: Vec<bool>,
    /// Changes whenever the catalog or policy changes (plan cache key).
    pub generation: u64,
}

impl WriteCtx {
    pub fn new(config: &Config, catalog: &Catalog, generation: u64) -> Self {
        let mut tables: Vec<PolicyTable> = config
            .tables
            .iter()
            .map(|t| {
                let (schema, table) = (t.schema(), t.table());
                let all_columns = catalog
                    .relations
                    .iter()
                    .find(|r| !r.is_view && r.schema == schema && r.name == table)
                    .map(|r| r.columns.clone());
                PolicyTable {
                    schema,
                    table,
                    tenant_column: t.tenant_column.clone(),
                    columns: t.columns.iter().map(|(c, m)| (c.clone(), *m)).collect(),
                    append_only: t.append_only,
                    all_columns,
                }
            })
            .collect();
        let mut columns = HashMap::new();
        for (ti, t) in tables.iter().enumerate() {
            for (ci, (name, _)) in t.columns.iter().enumerate() {
                let found = catalog
                    .columns
                    .iter()
                    .position(|c| c.schema == t.schema && c.table == t.table && &c.column == name);
                if let Some(idx) = found {
                    columns.insert(
                        ColumnRef {
                            table: ti,
                            column: ci,
                        },
                        idx,
                    );
                }
            }
        }
        let mut audit = audit_rules(config, catalog, &tables);
        add_views(catalog, &mut tables, &mut columns, &mut audit);
        let classifier = crate::rewrite::Classifier::new(
            tables.iter().map(|t| (t.table.clone(), t.display_name())),
        );
        Self {
            policy: PolicyView::new(tables).with_audit(audit),
            classifier,
            columns,
            is_bytea: catalog.columns.iter().map(|c| c.is_bytea).collect(),
            generation,
        }
    }

    /// The catalog index of a planner column (lookups).
    pub fn catalog_column(&self, c: ColumnRef) -> Result<usize, PgError> {
        self.column(c)
    }

    /// Whether catalog column `column` is `bytea`.
    pub fn is_bytea(&self, column: usize) -> bool {
        self.is_bytea.get(column).copied().unwrap_or(false)
    }

    fn column(&self, c: ColumnRef) -> Result<usize, PgError> {
        self.columns.get(&c).copied().ok_or_else(|| {
            PgError::refused(
                "0A000",
                format!(
                    "byokpg: protected column {} was not found in the database; create the table, then retry",
                    self.policy.column_display(c)
                ),
            )
        })
    }
}

/// The append-only rules of the config's tables (same order as `tables`):
/// chain columns, and whether the chain trigger is in place.
fn audit_rules(
    config: &Config,
    catalog: &Catalog,
    tables: &[PolicyTable],
) -> Vec<(usize, AuditRules)> {
    let mut out = Vec::new();
    for (i, (t, cfg)) in tables.iter().zip(&config.tables).enumerate() {
        if !t.append_only {
            continue;
        }
        let chain = cfg.chain_columns().map(|c| c.map(str::to_owned));
        let chain_ready = catalog
            .relations
            .iter()
            .find(|r| !r.is_view && r.schema == t.schema && r.name == t.table)
            .is_some_and(|r| catalog.chained.contains(&r.oid));
        out.push((
            i,
            AuditRules {
                chain,
                chain_ready,
                view: false,
            },
        ));
    }
    out
}

/// The OIDs of the append-only tables among `tables`.
fn append_only_oids(catalog: &Catalog, tables: &[PolicyTable]) -> Vec<u32> {
    catalog
        .relations
        .iter()
        .filter(|r| {
            !r.is_view
                && tables
                    .iter()
                    .any(|t| t.append_only && r.schema == t.schema && r.name == t.table)
        })
        .map(|r| r.oid)
        .collect()
}

/// Views over protected tables become policy relations whose protected
/// columns map to the base columns (so values are encrypted under the base
/// column's key and identity, whichever name the statement uses). A view
/// over an append-only table becomes append-only itself, with every write
/// through it refused.
fn add_views(
    catalog: &Catalog,
    tables: &mut Vec<PolicyTable>,
    columns: &mut HashMap<ColumnRef, usize>,
    audit: &mut Vec<(usize, AuditRules)>,
) {
    let append_only = append_only_oids(catalog, tables);
    for view in catalog.views() {
        let over_append_only = view.bases.iter().any(|b| append_only.contains(b));
        let mut cols = Vec::new();
        for (i, name) in view.columns.iter().enumerate() {
            let attnum = i16::try_from(i + 1).unwrap_or(i16::MAX);
            if let Some(idx) = catalog.by_attr.get(view.oid, attnum) {
                let ti = tables.len();
                columns.insert(
                    ColumnRef {
                        table: ti,
                        column: cols.len(),
                    },
                    idx,
                );
                cols.push((name.clone(), catalog.columns[idx].mode));
            }
        }
        if cols.is_empty() && !over_append_only {
            continue;
        }
        if over_append_only {
            audit.push((
                tables.len(),
                AuditRules {
                    view: true,
                    ..AuditRules::default()
                },
            ));
        }
        tables.push(PolicyTable {
            schema: view.schema.clone(),
            table: view.name.clone(),
            tenant_column: None,
            columns: cols,
            append_only: over_append_only,
            all_columns: Some(view.columns.clone()),
        });
    }
}

/// Outcome of the write path for one statement text.
#[derive(Debug)]
pub enum Rewritten {
    /// Touches no protected column: relay the original bytes.
    Unchanged,
    /// Send this SQL instead; bind parameters per `params`.
    Sql {
        sql: String,
        params: Option<Arc<ParamPlan>>,
    },
    /// A COPY on a protected table: send this SQL, then rewrite the stream.
    Copy {
        sql: String,
        copy: Arc<crate::rewrite::CopyPlanned>,
    },
    Refuse(PgError),
}

/// Per-session cache of plans by SQL text, so a statement re-parsed over
/// and over (the unnamed statement of most drivers) is planned once.
#[derive(Default)]
pub struct PlanCache {
    generation: u64,
    plans: HashMap<Vec<u8>, Arc<Result<Vec<StatementPlan>, Refusal>>>,
}

/// The keys are SQL texts, whose literals may be plaintext of protected
/// columns: Debug shows only how many there are.
impl std::fmt::Debug for PlanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlanCache")
            .field("entries", &self.plans.len())
            .finish_non_exhaustive()
    }
}

const PLAN_CACHE_ENTRIES: usize = 256;

impl PlanCache {
    fn get(&mut self, w: &WriteCtx, sql: &str) -> Arc<Result<Vec<StatementPlan>, Refusal>> {
        if self.generation != w.generation {
            self.plans.clear();
            self.generation = w.generation;
        }
        if let Some(p) = self.plans.get(sql.as_bytes()) {
            return p.clone();
        }
        if self.plans.len() >= PLAN_CACHE_ENTRIES {
            self.plans.clear();
        }
        let p = Arc::new(plan::plan(sql, &w.policy));
        self.plans.insert(sql.as_bytes().to_vec(), p.clone());
        p
    }
}

/// Plan and rewrite `sql`. `Err(Need)` = fetch a key and call again; nothing
/// was changed.
pub fn rewrite(
    cache: &mut PlanCache,
    w: &WriteCtx,
    hook: Option<&mut (dyn RowHook + '_)>,
    sql: &[u8],
    extended: bool,
) -> Result<Rewritten, Need> {
    let Ok(sql) = std::str::from_utf8(sql) else {
        return Ok(Rewritten::Refuse(PgError::refused(
            "0A000",
            "byokpg: a statement on a protected table must be valid UTF-8 (client_encoding UTF8)"
                .to_owned(),
        )));
    };
    if crate::rewrite::complexity::too_complex(sql.as_bytes()) {
        return Ok(Rewritten::Refuse(PgError::refused(
            "0A000",
            "byokpg: statement on a protected table is too deeply nested or has too many operators for byokpg to analyse safely; split it".to_owned(),
        )));
    }
    let planned = cache.get(w, sql);
    let plans = match planned.as_ref() {
        Err(refusal) => return Ok(Rewritten::Refuse(refused(refusal))),
        Ok(p) if !p.iter().any(|s| s.touches) => return Ok(Rewritten::Unchanged),
        Ok(p) => p,
    };
    let Some(hook) = hook else {
        return Ok(Rewritten::Refuse(PgError::internal(
            "protected statement without keys",
        )));
    };
    match prepare(w, hook, plans, sql, extended) {
        Ok(r) => Ok(r),
        Err(CryptoFailure::Need(n)) => Err(n),
        Err(CryptoFailure::Refuse(e)) => Ok(Rewritten::Refuse(e)),
    }
}

fn refused(r: &Refusal) -> PgError {
    PgError::refused(r.sqlstate(), r.message())
}

fn prepare(
    w: &WriteCtx,
    hook: &mut (dyn RowHook + '_),
    plans: &[StatementPlan],
    sql: &str,
    extended: bool,
) -> Result<Rewritten, CryptoFailure> {
    let tenant = hook.tenant().to_owned();
    let refuse = |e: PgError| CryptoFailure::Refuse(e);
    let mut params = ParamPlan::default();
    for p in plans.iter().filter(|p| p.touches) {
        p.check_tenant_literals(&tenant, &w.policy)
            .map_err(|r| refuse(refused(&r)))?;
        if p.copy.is_some() && plans.len() > 1 {
            return Err(refuse(PgError::refused(
                "0A000",
                "byokpg: COPY on a protected table must be sent alone (not in a multi-statement string)"
                    .to_owned(),
            )));
        }
        if !extended && !p.params.is_empty() {
            return Err(refuse(PgError::refused(
                "0A000",
                "byokpg: parameters in a simple query".to_owned(),
            )));
        }
        for (n, col) in &p.params {
            let entry = (n.saturating_sub(1), w.column(*col).map_err(refuse)?);
            if p.compare_params.contains(n) {
                params.compare.push(entry);
            } else {
                params.encrypt.push(entry);
            }
        }
        params.rigid |= p.rigid_compare;
        for check in &p.tenant_checks {
            if let TenantCheck::Param { table, param } = check {
                params.tenant.push((
                    param.saturating_sub(1),
                    w.policy.table(*table).display_name(),
                ));
            }
        }
    }
    let compares = plans
        .iter()
        .any(|p| !p.comparisons.is_empty() || p.rigid_compare);
    let live = if compares {
        hook.live_versions()?
    } else {
        Vec::new()
    };
    if live.len() > 1 && plans.iter().any(|p| p.rigid_compare) {
        return Err(refuse(rigid_refusal(&tenant)));
    }
    // Encrypt every literal first (a Need aborts before anything changes).
    let lookups = super::lookup::Lookups::build(w, hook, plans, sql, live.len() > 1)?;
    let mut encrypted: HashMap<usize, String> = HashMap::new();
    for slot in plans.iter().flat_map(|p| &p.literals) {
        if lookups.covers(slot.range.start) {
            continue;
        }
        let col = w.column(slot.column).map_err(refuse)?;
        encrypted.insert(slot.range.start, hook.encrypt_literal(col, &slot.value)?);
    }
    if extended
        && plans
            .iter()
            .any(|p| p.literals.iter().any(|l| l.role == plan::SlotRole::Compare))
    {
        params.literal_versions = Some(live.clone());
    }
    let sql = plan::splice_with(
        plans,
        sql,
        // Every slot was encrypted above; were one missing, an invalid token
        // makes the statement fail instead of storing something else.
        |slot| {
            encrypted
                .get(&slot.range.start)
                .cloned()
                .unwrap_or_else(|| "byokpg_missing_ciphertext".to_owned())
        },
        lookups.edits,
        &tenant,
    );
    if let Some(copy) = plans.iter().find_map(|p| p.copy.as_ref()) {
        let mut columns = Vec::with_capacity(copy.columns.len());
        for c in &copy.columns {
            columns.push(c.map(|c| w.column(c)).transpose().map_err(refuse)?);
        }
        let copy = Arc::new(crate::rewrite::CopyPlanned {
            plan: copy.clone(),
            columns,
        });
        return Ok(Rewritten::Copy { sql, copy });
    }
    let params = (!params.encrypt.is_empty()
        || !params.tenant.is_empty()
        || !params.compare.is_empty()
        || params.rigid
        || params.literal_versions.is_some())
    .then(|| Arc::new(params));
    Ok(Rewritten::Sql { sql, params })
}

/// A compared value byokpg could encrypt only under the active version, while
/// the tenant has several live versions (a rotation is under way).
pub fn rigid_refusal(tenant: &str) -> PgError {
    PgError::refused(
        "0A000",
        format!(
            "byokpg: tenant {tenant} has several live data key versions (a key rotation is under way) and this statement compares an encrypted column with a cast or parenthesized value, which byokpg can match under one version only; write the value as a plain literal or $n"
        ),
    )
}
