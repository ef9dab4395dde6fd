//! `byokpg check [--kms]`: validate the config, then hold it against the
//! region databases (and, with `--kms`, the key material). Every problem is
//! printed as `FILE:LINE: KEY: message`; exit 1 if there is any.
use std::path::Path;
use std::process::ExitCode;

use tokio::task::JoinSet;

use crate::config::{self, Config, ConfigError, KeyLines, KmsProvider, TableConfig};
use crate::pgmeta;

/// Runs the check and prints the outcome; the exit code follows SPEC §2.
pub async fn run(path: &Path, kms: bool) -> ExitCode {
    match check(path, kms).await {
        Ok(summary) => {
            println!("byokpg: {summary}");
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!(
                "byokpg: {} problem(s) in {}; fix them and run `byokpg check` again",
                problems.len(),
                path.display()
            );
            ExitCode::FAILURE
        }
    }
}

/// The check without printing: a summary line, or every problem found.
pub async fn check(path: &Path, kms: bool) -> Result<String, Vec<ConfigError>> {
    let cfg = config::load(path)?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut r = Reporter {
        cfg: &cfg,
        lines: KeyLines::new(&text),
        list: Vec::new(),
    };
    file_problems(&cfg, &mut r);
    for (key, message) in region_problems(&cfg).await {
        r.at(&key, message);
    }
    if kms {
        kms_problems(&cfg, &mut r);
        live_kms_problems(&cfg, &mut r).await;
    }
    if !r.list.is_empty() {
        r.list.sort_by_key(|e| e.line.unwrap_or(0));
        return Err(r.list);
    }
    let mut summary = format!(
        "{} is valid; {} region(s) reachable, {} table polic{} match every region, {} tenant(s), {} user(s)",
        path.display(),
        cfg.regions.len(),
        cfg.tables.len(),
        if cfg.tables.len() == 1 { "y" } else { "ies" },
        cfg.tenants.len(),
        cfg.users.len()
    );
    if kms {
        summary.push_str("; every tenant's KMS key passed a live wrap/unwrap");
    }
    Ok(summary)
}

struct Reporter<'a> {
    cfg: &'a Config,
    lines: Option<KeyLines>,
    list: Vec<ConfigError>,
}

impl Reporter<'_> {
    fn at(&mut self, key: &str, message: impl Into<String>) {
        self.list.push(ConfigError {
            file: self.cfg.path.clone(),
            line: self.lines.as_ref().and_then(|l| l.line(key)),
            key: key.to_owned(),
            message: message.into(),
        });
    }
}

/// Files the config names must exist before anything uses them.
fn file_problems(cfg: &Config, r: &mut Reporter<'_>) {
    let mut want = Vec::new();
    if let Some(p) = &cfg.server.tls_cert {
        want.push(("server.tls_cert".to_owned(), p.clone()));
    }
    if let Some(p) = &cfg.server.tls_key {
        want.push(("server.tls_key".to_owned(), p.clone()));
    }
    for (name, region) in &cfg.regions {
        if let Some(p) = &region.dsn.sslrootcert {
            want.push((format!("regions.{name}.dsn"), p.clone()));
        }
    }
    for (name, k) in &cfg.kms {
        if let Some(p) = &k.credentials_file {
            want.push((format!("kms.{name}.credentials_file"), p.clone()));
        }
    }
    for (key, path) in want {
        if let Err(e) = std::fs::File::open(&path) {
            r.at(&key, format!("cannot read {}: {e}", path.display()));
        }
    }
}

/// Connects to every region at once and checks every table policy there.
/// Returns (key, message) pairs.
async fn region_problems(cfg: &Config) -> Vec<(String, String)> {
    let mut tasks = JoinSet::new();
    for (name, region) in &cfg.regions {
        let (name, dsn) = (name.clone(), region.dsn.clone());
        let tables = cfg.tables.clone();
        let timeout = cfg.server.connect_timeout;
        tasks.spawn(async move {
            let key = format!("regions.{name}.dsn");
            let client = match pgmeta::connect(&dsn, timeout).await {
                Ok(c) => c,
                Err(e) => return vec![(key, format!("region {name}: {e}"))],
            };
            let mut out = Vec::new();
            for (i, t) in tables.iter().enumerate() {
                let place = format!("region {name} ({})", dsn.redacted());
                match table_problems(&client, t, i, &place).await {
                    Ok(mut p) => out.append(&mut p),
                    Err(e) => {
                        out.push((key.clone(), format!("{place}: catalog query failed: {e}")));
                    }
                }
            }
            out
        });
    }
    let mut all = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(mut p) => all.append(&mut p),
            Err(e) => all.push(("regions".to_owned(), format!("region check failed: {e}"))),
        }
    }
    all
}

const COLUMNS_SQL: &str = "\
SELECT c.relkind::text, a.attname::text, format_type(a.atttypid, a.atttypmod),
       bt.typname::text,
       CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
 WHERE n.nspname = $1 AND c.relname = $2";

struct Column {
    shown_type: String,
    base_type: String,
    typmod: i32,
}

/// Ciphertext is `byok1:`+base64 text or a binary envelope of any length:
/// only unbounded text types and bytea can hold it (domains over them too).
fn holds_ciphertext(c: &Column) -> bool {
    matches!(c.base_type.as_str(), "text" | "bytea") || (c.base_type == "varchar" && c.typmod < 0)
}

async fn table_problems(
    client: &tokio_postgres::Client,
    t: &TableConfig,
    index: usize,
    place: &str,
) -> Result<Vec<(String, String)>, tokio_postgres::Error> {
    let base = format!("table[{index}]");
    let rows = client
        .query(COLUMNS_SQL, &[&t.schema(), &t.table()])
        .await?;
    let qualified = t.qualified();
    let Some(first) = rows.first() else {
        return Ok(vec![(
            format!("{base}.name"),
            format!("{place}: table {qualified} does not exist"),
        )]);
    };
    let kind: String = first.get(0);
    if !matches!(kind.as_str(), "r" | "p" | "f") {
        let what = match kind.as_str() {
            "v" => "a view",
            "m" => "a materialized view",
            "S" => "a sequence",
            "i" | "I" => "an index",
            _ => "not a table",
        };
        return Ok(vec![(
            format!("{base}.name"),
            format!("{place}: {qualified} is {what}; a policy applies to a table"),
        )]);
    }
    let mut columns = std::collections::BTreeMap::new();
    for row in rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(1).is_some())
    {
        columns.insert(
            row.get::<_, String>(1),
            Column {
                shown_type: row.get(2),
                base_type: row.get(3),
                typmod: row.get(4),
            },
        );
    }
    let mut out = Vec::new();
    for col in t.columns.keys() {
        let key = format!("{base}.columns.{col}");
        match columns.get(col) {
            None => out.push((key, format!("{place}: column {col} of {qualified} does not exist"))),
            Some(c) if !holds_ciphertext(c) => out.push((
                key,
                format!(
                    "{place}: column {col} of {qualified} has type {}, which cannot hold ciphertext; use text, varchar without a length, or bytea",
                    c.shown_type
                ),
            )),
            Some(_) => {}
        }
    }
    let mut required = Vec::new();
    if let Some(tc) = &t.tenant_column {
        required.push(("tenant_column", tc.as_str()));
    }
    if let Some([seq, prev, row]) = t.chain_columns() {
        required.extend([
            ("chain_seq_column", seq),
            ("prev_hash_column", prev),
            ("row_hash_column", row),
        ]);
    }
    for (field, col) in required {
        if !columns.contains_key(col) {
            out.push((
                format!("{base}.{field}"),
                format!("{place}: column {col} of {qualified} does not exist"),
            ));
        }
    }
    Ok(out)
}

/// `--kms`: local key files are well-formed (a clearer message than the
/// live check's for the commonest mistake).
fn kms_problems(cfg: &Config, r: &mut Reporter<'_>) {
    for (name, k) in &cfg.kms {
        if k.provider != KmsProvider::Local {
            continue;
        }
        let key = format!("kms.{name}.key_file");
        let Some(path) = &k.key_file else { continue };
        match std::fs::read_to_string(path) {
            Err(e) => r.at(&key, format!("cannot read {}: {e}", path.display())),
            Ok(s) => {
                let hex = s.trim();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    r.at(
                        &key,
                        format!(
                            "{} must hold exactly 64 hex characters (a 256-bit key); `byokpg demo` writes one",
                            path.display()
                        ),
                    );
                }
            }
        }
    }
}

/// `--kms`: `keys verify` for every tenant (describe, generate + unwrap,
/// the stored DEK, the signing key); a failed step is a problem at the
/// tenant's `key`.
async fn live_kms_problems(cfg: &Config, r: &mut Reporter<'_>) {
    let mgr = crate::keys::KeyManager::new(cfg).await;
    for tenant in cfg.tenants.keys() {
        let failure = match mgr.verify_tenant(tenant).await {
            Ok(report) => report
                .failure
                .map(|e| format!("{e} [{}]; {}", e.code(), e.hint())),
            Err(e) => Some(format!("{e}; {}", e.hint())),
        };
        if let Some(why) = failure {
            r.at(
                &format!("tenants.{tenant}.key"),
                format!("live KMS check failed: {why}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(db: &str) -> tokio_postgres::Client {
        let dsn = format!("host=127.0.0.1 port=5432 user=postgres dbname={db}");
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL is needed at 127.0.0.1:5432 (trust, user postgres): {e}; start it with `pg_ctlcluster 15 main start`")
            });
        tokio::spawn(conn);
        client
    }

    /// A fresh database holding the tables the policies below talk about.
    async fn scratch_db(db: &str) -> tokio_postgres::Client {
        let pg = connect("postgres").await;
        let drop_sql = format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)");
        pg.batch_execute(&drop_sql).await.unwrap();
        pg.batch_execute(&format!("CREATE DATABASE {db}"))
            .await
            .unwrap();
        connect(db)
            .await
            .batch_execute(
                "CREATE TABLE t (n int, a text, b bytea, v varchar(10), u varchar, tenant_id text);
                 CREATE TABLE audit (x text)",
            )
            .await
            .unwrap();
        pg
    }

    fn policy(db: &str, key: &Path) -> String {
        format!(
            "[server]\nauth = \"trust\"\n[regions.us]\ndsn = \"postgres://postgres@127.0.0.1:5432/{db}?sslmode=prefer\"\n\
             [kms.dev]\nprovider = \"local\"\nallow_insecure_local = true\nkey_file = \"{}\"\n\
             [kms.v]\nprovider = \"vault-transit\"\naddress = \"http://127.0.0.1:1\"\ntoken = \"t\"\n\
             [tenants.acme]\nregion = \"us\"\nkms = \"v\"\nkey = \"k\"\n\
             [[table]]\nname = \"t\"\ntenant_column = \"tenant_id\"\n[table.columns]\n\
             n = \"randomized\"\na = \"randomized\"\nb = \"randomized\"\nv = \"deterministic\"\nu = \"deterministic\"\nmissing = \"randomized\"\n\
             [[table]]\nname = \"nope\"\nappend_only = true\n",
            key.display()
        )
    }

    async fn expect_problems(path: &Path, text: &str) {
        let shown: Vec<String> = check(path, true)
            .await
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let has = |key: &str, msg: &str| {
            let tag = format!(": {key}: ");
            shown.iter().any(|s| s.contains(&tag) && s.contains(msg))
        };
        for (key, msg) in [
            ("table[0].columns.n", "type integer"),
            ("table[0].columns.v", "type character varying(10)"),
            ("table[0].columns.missing", "does not exist"),
            ("table[1].name", "table public.nope does not exist"),
            ("kms.dev.key_file", "64 hex"),
            ("tenants.acme.key", "live KMS check failed"),
        ] {
            assert!(has(key, msg), "no {key}: {msg} in {shown:#?}");
        }
        // text, bytea and unbounded varchar hold ciphertext: not reported.
        assert_eq!(shown.len(), 6, "{shown:#?}");
        let n_line = 1 + text.lines().position(|l| l.starts_with("n = ")).unwrap();
        let tag = format!("byokpg.toml:{n_line}: table[0].columns.n:");
        assert!(shown.iter().any(|s| s.contains(&tag)), "{shown:#?}");
    }

    #[tokio::test]
    async fn checks_policies_against_the_region_database() {
        let db = format!("byokpg_check_{}", std::process::id());
        let pg = scratch_db(&db).await;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("kek.key");
        std::fs::write(&key, "ab".repeat(31)).unwrap();
        let path = dir.path().join("byokpg.toml");
        let text = policy(&db, &key);
        std::fs::write(&path, &text).unwrap();
        expect_problems(&path, &text).await;

        // The same database with a policy that fits: a summary, exit 0.
        std::fs::write(&key, "ab".repeat(32)).unwrap();
        let good = text
            .replace("kms = \"v\"", "kms = \"dev\"")
            .replace("n = \"randomized\"\n", "")
            .replace("v = \"deterministic\"\n", "")
            .replace("missing = \"randomized\"\n", "")
            .replace("name = \"nope\"", "name = \"Audit\"");
        std::fs::write(&path, &good).unwrap();
        let summary = check(&path, true)
            .await
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert!(
            summary.contains("1 region(s) reachable, 2 table policies"),
            "{summary}"
        );

        // An unreachable region is reported at its dsn.
        std::fs::write(&path, good.replace(":5432/", ":1/")).unwrap();
        let problems = check(&path, false).await.unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:#?}");
        let p = &problems[0];
        assert_eq!((p.key.as_str(), p.line), ("regions.us.dsn", Some(4)));
        assert!(p.message.contains("cannot connect"), "{problems:#?}");
        let drop_sql = format!("DROP DATABASE {db} WITH (FORCE)");
        pg.batch_execute(&drop_sql).await.unwrap();
    }
}
