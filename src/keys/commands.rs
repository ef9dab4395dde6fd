//! The `keys verify`, `keys status` and `kms-log` commands (SPEC §2): what
//! they print and their exit codes. The logic lives in [`super::verify`],
//! [`super::status`] and [`super::log`].
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use serde_json::json;

use super::{KeyManager, KmsLogRow};
use crate::config::Config;

/// Output format of `keys status` and `kms-log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Csv,
    Json,
}

fn unknown_tenant(cfg: &Config, tenant: &str) -> Option<ExitCode> {
    if cfg.tenants.contains_key(tenant) {
        return None;
    }
    let known: Vec<&str> = cfg.tenants.keys().map(String::as_str).collect();
    eprintln!(
        "byokpg: tenant {tenant} is not in [tenants] (configured: {})",
        known.join(", ")
    );
    Some(ExitCode::from(2))
}

/// `keys verify --tenant T`: exit 0 when every step passed, 1 otherwise.
pub async fn verify(cfg: &Config, tenant: &str) -> ExitCode {
    if let Some(code) = unknown_tenant(cfg, tenant) {
        return code;
    }
    let mgr = KeyManager::new(cfg).await;
    match mgr.verify_tenant(tenant).await {
        Ok(report) => {
            println!("{}", report.render());
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            println!("verdict: FAILED: {e}; {}", e.hint());
            ExitCode::from(1)
        }
    }
}

/// `keys status [--tenant T]`: exit 1 when some part could not be read.
pub async fn status(cfg: &Config, tenant: Option<&str>, format: Format) -> ExitCode {
    if let Some(t) = tenant
        && let Some(code) = unknown_tenant(cfg, t)
    {
        return code;
    }
    let mgr = KeyManager::new(cfg).await;
    let mut ok = true;
    for (name, t) in cfg
        .tenants
        .iter()
        .filter(|(n, _)| tenant.is_none_or(|t| t == *n))
    {
        let st = super::status::tenant_status(cfg, &mgr, name).await;
        ok &= st.problems.is_empty();
        match format {
            Format::Json => println!("{}", st.to_json()),
            Format::Text | Format::Csv => print!("{}", st.render(t.dek_cache_ttl)),
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `keys rotate --tenant T [--kms NAME] [--kek REF] [--rewrap-only]`.
pub async fn rotate(
    cfg: &Config,
    tenant: &str,
    kms: Option<&str>,
    kek: Option<&str>,
    rewrap_only: bool,
) -> ExitCode {
    if let Some(code) = unknown_tenant(cfg, tenant) {
        return code;
    }
    let mgr = KeyManager::new(cfg).await;
    let target = match mgr.rotation_target(tenant, kms, kek) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}; {}", e.hint());
            return ExitCode::from(1);
        }
    };
    if rewrap_only {
        return match mgr.rewrap_all(tenant, &target).await {
            Ok(v) => {
                let list: Vec<String> = v.iter().map(u32::to_string).collect();
                println!(
                    "tenant {tenant}: re-wrapped DEK versions [{}] under kms {} key {}",
                    list.join(", "),
                    target.kms.name(),
                    target.key_ref
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}; {}", e.hint());
                ExitCode::from(1)
            }
        };
    }
    match mgr.rotate(tenant, &target).await {
        Ok(row) => {
            println!(
                "tenant {tenant}: DEK version {} is active (kms {}, key {}); byokpg instances write under it within {}s; run `byokpg keys reencrypt --tenant {tenant}` to move older rows to it",
                row.version,
                row.kms,
                row.key_ref,
                super::manager::ACTIVE_RECHECK.as_secs()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}; {}", e.hint());
            ExitCode::from(1)
        }
    }
}

/// `keys reencrypt --tenant T [--rate] [--batch] [--wait]`: exit 0 when
/// done, 1 when it failed or was interrupted (run again to resume).
pub async fn reencrypt(cfg: &Config, tenant: &str, options: super::reencrypt::Options) -> ExitCode {
    if let Some(code) = unknown_tenant(cfg, tenant) {
        return code;
    }
    let mgr = KeyManager::new(cfg).await;
    let mut progress = super::reencrypt::Progress::auto();
    match super::reencrypt::run(cfg, &mgr, tenant, options, &mut progress).await {
        Ok(s) => {
            println!(
                "tenant {tenant}: re-encryption to DEK version {} done: {} rows examined, {} updated, {} retried after a concurrent change, {} values left as they were",
                s.target, s.examined, s.updated, s.retried, s.failed
            );
            for (t, why) in &s.skipped_tables {
                println!("  table {t} skipped: {why}");
            }
            let retired: Vec<String> = s.retired.iter().map(u32::to_string).collect();
            println!("  retired versions: [{}]", retired.join(", "));
            for (v, why) in &s.kept {
                println!("  version {v} kept: {why}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// `--since`: an RFC 3339 time (`2026-11-24T10:00:00Z`, or a date) or an
/// age (`15m`, `24h`, `7d`).
pub fn parse_since(s: &str) -> Result<SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")) {
        return Ok(t);
    }
    let age: Duration = humantime::parse_duration(s).map_err(|_| {
        format!("--since {s}: expected an RFC 3339 time (2026-11-24T10:00:00Z), a date or an age (15m, 24h, 7d)")
    })?;
    SystemTime::now()
        .checked_sub(age)
        .ok_or_else(|| format!("--since {s}: too far back"))
}

/// `kms-log --tenant T [--since] [--format csv|json]`.
pub async fn kms_log(
    cfg: &Config,
    tenant: &str,
    since: Option<SystemTime>,
    format: Format,
) -> ExitCode {
    if let Some(code) = unknown_tenant(cfg, tenant) {
        return code;
    }
    let mgr = KeyManager::new(cfg).await;
    let rows = match mgr.store(tenant) {
        Ok(store) => store
            .kms_log(tenant, since)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let rows = match rows {
        Ok(r) => r,
        Err(e) => {
            eprintln!("byokpg: cannot read the KMS log of tenant {tenant}: {e}");
            return ExitCode::from(1);
        }
    };
    if format == Format::Json {
        for r in &rows {
            println!("{}", row_json(r));
        }
    } else {
        println!("time,tenant,operation,outcome,error_code,key_ref,instance");
        for r in &rows {
            println!("{}", row_csv(r));
        }
    }
    ExitCode::SUCCESS
}

fn time(r: &KmsLogRow) -> String {
    humantime::format_rfc3339_micros(r.time).to_string()
}

fn row_json(r: &KmsLogRow) -> serde_json::Value {
    json!({
        "time": time(r), "tenant": r.tenant, "operation": r.operation, "outcome": r.outcome,
        "error_code": r.error_code, "key_ref": r.key_ref, "instance": r.instance,
    })
}

/// RFC 4180: quote a field holding a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn row_csv(r: &KmsLogRow) -> String {
    [
        time(r).as_str(),
        &r.tenant,
        &r.operation,
        &r.outcome,
        r.error_code.as_deref().unwrap_or(""),
        &r.key_ref,
        &r.instance,
    ]
    .iter()
    .map(|f| csv_field(f))
    .collect::<Vec<_>>()
    .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_only_what_needs_it() {
        assert_eq!(
            csv_field("arn:aws:kms:eu-west-1:1:key/x"),
            "arn:aws:kms:eu-west-1:1:key/x"
        );
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn since_takes_times_dates_and_ages() {
        let t = parse_since("2026-11-24T10:00:00Z").expect("rfc3339");
        assert_eq!(
            humantime::format_rfc3339_seconds(t).to_string(),
            "2026-11-24T10:00:00Z"
        );
        let d = parse_since("2026-11-24").expect("date");
        assert_eq!(
            humantime::format_rfc3339_seconds(d).to_string(),
            "2026-11-24T00:00:00Z"
        );
        let age = parse_since("1h").expect("age");
        let back = SystemTime::now().duration_since(age).expect("past");
        assert!(back >= Duration::from_secs(3599) && back < Duration::from_secs(3700));
        assert!(parse_since("yesterday-ish").is_err());
    }
}
