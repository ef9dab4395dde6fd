//! Where result columns come from: maps the (table OID, attnum) a
//! RowDescription reports to the protected column of the policy, for tables
//! and for views (and materialized views) built on them, at any depth.
//!
//! A view's RowDescription names the view, not its base table, so each view
//! that depends on a protected table has its definition prepared on the
//! metadata connection; PostgreSQL then reports the origin of every output
//! column, which resolves view columns to base columns (nested views
//! resolve in dependency order).

use std::collections::HashSet;

use tokio_postgres::Client;

use crate::config::{ColumnMode, TableConfig};
use crate::rewrite::ProtectedColumns;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("byokpg: catalog query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
}

/// One protected column as the database stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectedColumn {
    pub schema: String,
    pub table: String,
    pub column: String,
    pub mode: ColumnMode,
    /// `bytea` columns hold the raw envelope; text columns `byok1:` + base64.
    pub is_bytea: bool,
}

/// A relation (table or view) that exposes protected columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub is_view: bool,
    /// All column names in attnum order.
    pub columns: Vec<String>,
    /// For a view: the policy tables it reads, directly or through other
    /// views (OIDs). Empty for tables.
    pub bases: Vec<u32>,
}

/// The resolved catalog of one region database.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    /// Protected columns; `ProtectedColumns` values index into this.
    pub columns: Vec<ProtectedColumn>,
    pub by_attr: ProtectedColumns,
    /// Policy tables found in the database, and views over them.
    pub relations: Vec<Relation>,
    /// Every relation OID that existed when the catalog was read: a
    /// RowDescription naming any other OID means the catalog is stale.
    pub known_oids: HashSet<u32>,
    /// Policy tables carrying byokpg's hash-chain trigger (enabled).
    pub chained: HashSet<u32>,
}

impl Catalog {
    /// Whether `oid` was known when the catalog was read (0 = no table).
    pub fn knows(&self, oid: u32) -> bool {
        oid == 0 || self.known_oids.contains(&oid)
    }

    /// Views over protected tables (their names must reach the classifier).
    pub fn views(&self) -> impl Iterator<Item = &Relation> {
        self.relations.iter().filter(|r| r.is_view)
    }
}

const TABLES_SQL: &str = "\
select c.oid, n.nspname, c.relname, a.attnum, a.attname, t.typname
  from pg_class c
  join pg_namespace n on n.oid = c.relnamespace
  join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
  join pg_type t on t.oid = a.atttypid
 where c.relkind in ('r', 'p')
   and (n.nspname, c.relname) in (select * from unnest($1::text[], $2::text[]))
 order by c.oid, a.attnum";

/// Views (plain and materialized) depending, directly or through other
/// views, on the given relations.
const VIEWS_SQL: &str = "\
with recursive deps(oid, base) as (
    select r.ev_class, d.refobjid from pg_depend d join pg_rewrite r on r.oid = d.objid
     where d.classid = 'pg_rewrite'::regclass and d.refobjid = any($1::oid[]) and r.ev_class <> d.refobjid
    union
    select r.ev_class, deps.base from pg_depend d join pg_rewrite r on r.oid = d.objid join deps on d.refobjid = deps.oid
     where d.classid = 'pg_rewrite'::regclass and r.ev_class <> d.refobjid)
select v.oid, n.nspname, v.relname, pg_get_viewdef(v.oid),
       array(select attname::text from pg_attribute where attrelid = v.oid and attnum > 0 and not attisdropped order by attnum),
       array_agg(distinct deps.base)
  from deps join pg_class v on v.oid = deps.oid join pg_namespace n on n.oid = v.relnamespace
 where v.relkind in ('v', 'm')
 group by v.oid, n.nspname, v.relname";

/// Enabled hash-chain triggers on the given relations.
const CHAINED_SQL: &str = "\
select tgrelid from pg_trigger
 where tgname = $2 and tgenabled <> 'D' and tgrelid = any($1::oid[])";

const KNOWN_SQL: &str = "select oid from pg_class where relkind in ('r', 'p', 'v', 'm', 'f')";

/// Read the catalog of one region for the policy `tables`.
pub async fn load(client: &Client, tables: &[TableConfig]) -> Result<Catalog, CatalogError> {
    let mut cat = Catalog::default();
    if tables.is_empty() {
        return Ok(cat);
    }
    load_tables(client, tables, &mut cat).await?;
    load_views(client, &mut cat).await?;
    let bases: Vec<u32> = cat
        .relations
        .iter()
        .filter(|r| !r.is_view)
        .map(|r| r.oid)
        .collect();
    for row in client
        .query(CHAINED_SQL, &[&bases, &crate::audit::CHAIN_TRIGGER])
        .await?
    {
        cat.chained.insert(row.get::<_, u32>(0));
    }
    for row in client.query(KNOWN_SQL, &[]).await? {
        cat.known_oids.insert(row.get::<_, u32>(0));
    }
    Ok(cat)
}

async fn load_tables(
    client: &Client,
    tables: &[TableConfig],
    cat: &mut Catalog,
) -> Result<(), CatalogError> {
    let schemas: Vec<String> = tables.iter().map(TableConfig::schema).collect();
    let names: Vec<String> = tables.iter().map(TableConfig::table).collect();
    let rows = client.query(TABLES_SQL, &[&schemas, &names]).await?;
    for row in rows {
        let (oid, schema, name): (u32, String, String) = (row.get(0), row.get(1), row.get(2));
        let (attnum, column, type_name): (i16, String, String) =
            (row.get(3), row.get(4), row.get(5));
        if cat.relations.last().is_none_or(|r| r.oid != oid) {
            cat.relations.push(Relation {
                oid,
                schema: schema.clone(),
                name: name.clone(),
                is_view: false,
                columns: Vec::new(),
                bases: Vec::new(),
            });
        }
        if let Some(rel) = cat.relations.last_mut() {
            rel.columns.push(column.clone());
        }
        let Some(mode) = policy_mode(tables, &schema, &name, &column) else {
            continue;
        };
        cat.by_attr.insert(oid, attnum, cat.columns.len());
        cat.columns.push(ProtectedColumn {
            schema,
            table: name,
            column,
            mode,
            is_bytea: type_name == "bytea",
        });
    }
    Ok(())
}

fn policy_mode(
    tables: &[TableConfig],
    schema: &str,
    table: &str,
    column: &str,
) -> Option<ColumnMode> {
    tables
        .iter()
        .find(|t| t.schema() == schema && t.table() == table)
        .and_then(|t| t.columns.get(column).copied())
}

/// A view awaiting resolution: (oid, schema, name, definition, columns,
/// base tables).
type PendingView = (u32, String, String, String, Vec<String>, Vec<u32>);

async fn load_views(client: &Client, cat: &mut Catalog) -> Result<(), CatalogError> {
    let base: Vec<u32> = cat.relations.iter().map(|r| r.oid).collect();
    if base.is_empty() {
        return Ok(());
    }
    let mut pending: Vec<PendingView> = client
        .query(VIEWS_SQL, &[&base])
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect();
    // Resolve in rounds: a view over another view resolves once that one has.
    while !pending.is_empty() {
        let before = pending.len();
        let waiting: HashSet<u32> = pending.iter().map(|v| v.0).collect();
        let mut next = Vec::new();
        for view in pending {
            if !resolve_view(client, &view, &waiting, cat).await? {
                next.push(view);
            }
        }
        if next.len() == before {
            // Cycles cannot exist in PostgreSQL; whatever is left maps no
            // protected column (e.g. its definition failed to prepare).
            break;
        }
        pending = next;
    }
    Ok(())
}

/// Map the view's output columns to protected columns. `Ok(false)` = some
/// column comes from a view not resolved yet; try again next round.
async fn resolve_view(
    client: &Client,
    view: &PendingView,
    waiting: &HashSet<u32>,
    cat: &mut Catalog,
) -> Result<bool, CatalogError> {
    let (oid, schema, name, def, columns, bases) = view;
    let sql = def.trim().trim_end_matches(';');
    let Ok(stmt) = client.prepare(sql).await else {
        tracing::warn!(view = %name, "cannot prepare a view definition; its columns are treated as unmapped");
        return Ok(true);
    };
    let resolved: HashSet<u32> = cat.relations.iter().map(|r| r.oid).collect();
    let mut found = Vec::new();
    // A column from another view of this set that is not resolved yet.
    for (i, col) in stmt.columns().iter().enumerate() {
        let (Some(t), Some(a)) = (col.table_oid(), col.column_id()) else {
            continue;
        };
        if t != *oid && waiting.contains(&t) && !resolved.contains(&t) {
            return Ok(false);
        }
        if let Some(idx) = cat.by_attr.get(t, a) {
            found.push((i16::try_from(i + 1).unwrap_or(i16::MAX), idx));
        }
    }
    for (attnum, idx) in found {
        cat.by_attr.insert(*oid, attnum, idx);
    }
    cat.relations.push(Relation {
        oid: *oid,
        schema: schema.clone(),
        name: name.clone(),
        is_view: true,
        columns: columns.clone(),
        bases: bases.clone(),
    });
    Ok(true)
}
