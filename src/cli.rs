//! Command line (SPEC §2). Exit codes: 0 success, 1 a failed check or a
//! fatal error, 2 usage error (clap's own).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

#[derive(Debug, Parser)]
#[command(
    name = "byokpg",
    version,
    about = "Transparent encrypting PostgreSQL proxy with customer-managed keys"
)]
struct Cli {
    /// Config file (default: $BYOKPG_CONFIG, else config/byokpg.toml).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum GuardsAction {
    /// Add the guards (idempotent); exit 1 if anything could not be guarded.
    Install,
    /// Report the guards in place; exit 1 unless every one is.
    Status,
}

#[derive(Debug, Subcommand)]
enum KeysAction {
    /// Per tenant: KMS, key, active DEK version, versions still used by
    /// data, cache state, last KMS error.
    Status {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value = "text")]
        format: KeysFormat,
    },
    /// Describe the tenant's KEK, test a wrap + unwrap (and a signature with
    /// its signing_key); exit 1 unless the key is usable.
    Verify {
        #[arg(long)]
        tenant: String,
    },
    /// Create a new DEK version (optionally under another KEK or KMS); new
    /// writes use it within seconds on every byokpg, old data stays readable.
    Rotate {
        #[arg(long)]
        tenant: String,
        /// KEK reference for the new version (default: the tenant's `key`).
        #[arg(long)]
        kek: Option<String>,
        /// `[kms.NAME]` for the new version (default: the tenant's `kms`).
        #[arg(long)]
        kms: Option<String>,
        /// Make no new version: wrap every stored DEK again under the
        /// target KEK (the customer moved keys); rows are not touched.
        #[arg(long)]
        rewrap_only: bool,
    },
    /// Re-encrypt the tenant's rows from older DEK versions to the active
    /// one; resumable; retires versions no row uses at the end.
    Reencrypt {
        #[arg(long)]
        tenant: String,
        /// At most this many rows per second (0 = unlimited).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Rows read and updated per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u32,
        /// When another run holds the tenant's job, wait for it instead of
        /// exiting.
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeysFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Walk a tenant's hash chain from the stored rows and check its
    /// attestations; exit 1 naming the first broken row.
    Verify {
        #[arg(long)]
        tenant: String,
        /// The hash-chained table (`name` or `schema.name`).
        #[arg(long)]
        table: String,
        /// First chain_seq to check (default 1).
        #[arg(long, value_name = "SEQ")]
        from: Option<i64>,
        /// Last chain_seq to check (default: the head).
        #[arg(long, value_name = "SEQ")]
        to: Option<i64>,
    },
    /// Sign the current chain head(s) with the tenant's signing_key and
    /// store the attestation in byokpg.audit_attestations.
    Attest {
        #[arg(long)]
        tenant: String,
        /// Only this table (default: every hash-chained table).
        #[arg(long)]
        table: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (the default command).
    Serve,
    /// Validate the config and check every region database.
    Check {
        /// Also test every tenant's KMS key.
        #[arg(long)]
        kms: bool,
    },
    /// Create or upgrade byokpg's schema in every region database (idempotent).
    Setup,
    /// Database-side guards: CHECK constraints admitting only ciphertext in
    /// encrypted columns, triggers rejecting UPDATE/DELETE/TRUNCATE on
    /// append-only tables.
    Guards {
        #[command(subcommand)]
        action: GuardsAction,
    },
    /// Tenant data keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Export a tenant's KMS operation log (byokpg.kms_log of its region).
    KmsLog {
        #[arg(long)]
        tenant: String,
        /// RFC 3339 time or date, or an age such as 24h or 7d.
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
        #[arg(long, value_enum, default_value = "csv")]
        format: LogFormat,
    },
    /// Append-only audit tables: verify the hash chain, attest its head.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// First run on one machine: three region databases on a local
    /// PostgreSQL, a demo config with the local KMS, then the proxy.
    Demo {
        /// Admin connection to the local PostgreSQL.
        #[arg(
            long,
            value_name = "DSN",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        pg: String,
        /// Port the proxy listens on (admin API on port + 3498).
        #[arg(long, default_value_t = 6432)]
        port: u16,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let path = config::resolve_path(cli.config.as_deref());
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&path),
        Command::Check { kms } => match tokio_runtime(None) {
            Ok(rt) => rt.block_on(crate::check::run(&path, kms)),
            Err(code) => code,
        },
        Command::Setup => setup(&path),
        Command::Guards { action } => guards(&path, &action),
        Command::Audit { action } => audit(&path, action),
        Command::Keys { action } => keys(&path, &action),
        Command::KmsLog {
            tenant,
            since,
            format,
        } => kms_log(&path, &tenant, since.as_deref(), format),
        Command::Demo { pg, port } => demo(&crate::demo::DemoOptions { pg, port }),
    }
}

/// Load the config, printing every problem (`FILE:LINE: KEY: message`).
fn load_config(path: &std::path::Path) -> Result<config::Config, ExitCode> {
    config::load(path).map_err(|errors| {
        for e in &errors {
            eprintln!("{e}");
        }
        ExitCode::from(1)
    })
}

/// The config and a one-worker runtime, for the commands that run once
/// (setup, guards, keys, kms-log, audit).
fn one_shot(path: &std::path::Path) -> Result<(config::Config, tokio::runtime::Runtime), ExitCode> {
    Ok((load_config(path)?, tokio_runtime(Some(1))?))
}

fn setup(path: &std::path::Path) -> ExitCode {
    let (cfg, rt) = match one_shot(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match rt.block_on(crate::setup::setup(&cfg)) {
        Ok(report) => {
            for line in report {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn guards(path: &std::path::Path, action: &GuardsAction) -> ExitCode {
    let (cfg, rt) = match one_shot(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match action {
        GuardsAction::Install => match rt.block_on(crate::guards::install(&cfg)) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                println!("{e}");
                ExitCode::from(1)
            }
        },
        GuardsAction::Status => match rt.block_on(crate::guards::status(&cfg)) {
            Ok(report) => {
                println!("{report}");
                if report.ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                println!("{e}");
                ExitCode::from(1)
            }
        },
    }
}

fn keys(path: &std::path::Path, action: &KeysAction) -> ExitCode {
    use crate::keys::commands::{self, Format};
    let (cfg, rt) = match one_shot(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    match action {
        KeysAction::Verify { tenant } => rt.block_on(commands::verify(&cfg, tenant)),
        KeysAction::Status { tenant, format } => {
            let f = match format {
                KeysFormat::Text => Format::Text,
                KeysFormat::Json => Format::Json,
            };
            rt.block_on(commands::status(&cfg, tenant.as_deref(), f))
        }
        KeysAction::Rotate {
            tenant,
            kek,
            kms,
            rewrap_only,
        } => rt.block_on(commands::rotate(
            &cfg,
            tenant,
            kms.as_deref(),
            kek.as_deref(),
            *rewrap_only,
        )),
        KeysAction::Reencrypt {
            tenant,
            rate,
            batch,
            wait,
        } => rt.block_on(commands::reencrypt(
            &cfg,
            tenant,
            crate::keys::reencrypt::Options {
                rate: *rate,
                batch: *batch,
                wait: *wait,
            },
        )),
    }
}

fn kms_log(
    path: &std::path::Path,
    tenant: &str,
    since: Option<&str>,
    format: LogFormat,
) -> ExitCode {
    use crate::keys::commands::{self, Format};
    let since = match since.map(commands::parse_since).transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("byokpg: {e}");
            return ExitCode::from(2);
        }
    };
    let (cfg, rt) = match one_shot(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let f = match format {
        LogFormat::Csv => Format::Csv,
        LogFormat::Json => Format::Json,
    };
    rt.block_on(commands::kms_log(&cfg, tenant, since, f))
}

fn audit(path: &std::path::Path, action: AuditAction) -> ExitCode {
    let (cfg, rt) = match one_shot(path) {
        Ok(v) => v,
        Err(code) => return code,
    };
    let outcome = match action {
        AuditAction::Verify {
            tenant,
            table,
            from,
            to,
        } => {
            let opts = crate::audit::VerifyOptions {
                tenant,
                table,
                from,
                to,
            };
            rt.block_on(crate::audit::verify(&cfg, &opts))
                .map(|v| (vec![v.to_string()], v.broken.is_none()))
        }
        AuditAction::Attest { tenant, table } => rt
            .block_on(crate::audit::attest(&cfg, &tenant, table.as_deref()))
            .map(|lines| (lines, true)),
    };
    match outcome {
        Ok((lines, ok)) => {
            for l in lines {
                println!("{l}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn demo(opts: &crate::demo::DemoOptions) -> ExitCode {
    let prepared = match tokio_runtime(Some(1)) {
        Ok(rt) => rt.block_on(crate::demo::prepare(opts)),
        Err(code) => return code,
    };
    match prepared {
        Ok(path) => {
            println!("{}", crate::demo::banner(opts.port));
            serve(&path)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn serve(path: &std::path::Path) -> ExitCode {
    let cfg = match load_config(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio_runtime(cfg.server.workers) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(crate::server::serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

fn tokio_runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    // Defence in depth for recursive SQL analysis (inputs are bounded by
    // rewrite::complexity first; a stack overflow would abort every session).
    b.enable_all().thread_stack_size(16 * 1024 * 1024);
    if let Some(n) = workers {
        b.worker_threads(n.max(1));
    }
    b.build().map_err(|e| {
        eprintln!("byokpg: cannot start the async runtime: {e}");
        ExitCode::from(1)
    })
}

/// `tracing` to stderr; JSON lines with `BYOKPG_LOG_FORMAT=json`; level from
/// `RUST_LOG` (default `info`).
fn init_logging() {
    use std::io::IsTerminal as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    if std::env::var("BYOKPG_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}
