//! Configuration: the TOML file of SPEC §3 (see `docs/CONFIG.md`).
//!
//! [`load`] reads the file, replaces `${NAME}` from the environment,
//! deserializes every section on its own and cross-checks them, returning
//! all problems at once, each with file, line and dotted key, so that
//! `byokpg check` and a refused reload can show the whole list.
use std::fmt;
use std::path::{Path, PathBuf};

mod dsn;
mod ident;
mod interp;
mod locate;
mod model;
mod parse;
mod secret;
mod validate;

#[cfg(test)]
mod dsn_tests;
#[cfg(test)]
mod tests;

pub use dsn::{Dsn, DsnError, SslMode};
pub use model::{
    AuditConfig, AuthMethod, ColumnMode, Config, KmsConfig, KmsProvider, RegionConfig,
    ServerConfig, TableConfig, TenantConfig, TlsMode, UserConfig,
};
pub use secret::Secret;

/// Default config file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/byokpg.toml";

/// One problem with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, as it was named.
    pub file: PathBuf,
    /// 1-based line of the offending key, when the file has one.
    pub line: Option<usize>,
    /// Dotted key path, e.g. `tenants.acme.region` or `table[1].columns.ssn`
    /// (`(file)` and `(syntax)` for problems with the file as a whole).
    pub key: String,
    /// What is wrong and what to do; never contains a secret.
    pub message: String,
}

/// `FILE:LINE: KEY: message`. A problem without a line of its own (a
/// missing section, an unreadable file) is reported at line 1 so that the
/// format stays the same for scripts.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.file.display(),
            self.line.unwrap_or(1),
            self.key,
            self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Lines of dotted keys in a config file, for problems found outside the
/// parser (`byokpg check` reports missing columns at their policy line).
pub struct KeyLines(locate::Locator);

impl KeyLines {
    /// `None` when the text is not valid TOML.
    pub fn new(text: &str) -> Option<Self> {
        let doc = toml_edit::ImDocument::parse(text).ok()?;
        Some(Self(locate::Locator::new(doc.as_table(), text)))
    }

    /// 1-based line of `key` (e.g. `table[0].columns.email`), or of its
    /// nearest enclosing key present in the file.
    pub fn line(&self, key: &str) -> Option<usize> {
        self.0.line_of(key)
    }
}

/// Reads, interpolates, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_str(&text, path),
        Err(e) => Err(vec![ConfigError {
            file: path.to_path_buf(),
            line: None,
            key: "(file)".to_owned(),
            message: format!(
                "cannot read the config file: {e} (give another with --config or BYOKPG_CONFIG)"
            ),
        }]),
    }
}

/// As [`load`], with the text already in hand; `path` is used in messages.
pub fn parse_str(text: &str, path: &Path) -> Result<Config, Vec<ConfigError>> {
    parse::parse_with_env(text, path, &|name| std::env::var(name).ok())
}

/// Test seam: `parse_str` with a chosen environment (setting process
/// variables needs `unsafe` in edition 2024).
#[cfg(test)]
pub(crate) fn parse_with_env(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    parse::parse_with_env(text, path, env)
}

/// The config path: `--config`, else `BYOKPG_CONFIG`, else `config/byokpg.toml`.
pub fn resolve_path(cli: Option<&Path>) -> PathBuf {
    if let Some(p) = cli {
        return p.to_path_buf();
    }
    match std::env::var_os("BYOKPG_CONFIG") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}
