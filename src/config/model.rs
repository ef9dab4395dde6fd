//! The configuration as the rest of byokpg sees it. Every field documents
//! its default; `docs/CONFIG.md` is the user-facing version of this file.
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Dsn, Secret, ident};

/// A whole, validated configuration file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it was read from (used in messages and for reloads).
    pub path: PathBuf,
    /// `[server]`. Default: every field at its default.
    pub server: ServerConfig,
    /// `[[users]]`, in file order. Default: none.
    pub users: Vec<UserConfig>,
    /// `[regions.NAME]`. At least one is required.
    pub regions: BTreeMap<String, RegionConfig>,
    /// `[kms.NAME]`. Default: none.
    pub kms: BTreeMap<String, KmsConfig>,
    /// `[tenants.NAME]`. Default: none.
    pub tenants: BTreeMap<String, TenantConfig>,
    /// `[[table]]`, in file order. Default: none.
    pub tables: Vec<TableConfig>,
    /// `[audit]`. Default: every field at its default.
    pub audit: AuditConfig,
}

impl Config {
    /// The user called `name`, if configured.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }

    /// The policy for `schema.table` (both already folded, as the catalog
    /// spells them), if any.
    pub fn table(&self, schema: &str, table: &str) -> Option<&TableConfig> {
        self.tables
            .iter()
            .find(|t| t.table() == table && t.schema() == schema)
    }

    /// The region a tenant's data lives in.
    pub fn tenant_region(&self, tenant: &str) -> Option<&RegionConfig> {
        self.tenants
            .get(tenant)
            .and_then(|t| self.regions.get(&t.region))
    }
}

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum AuthMethod {
    /// `scram-sha-256` (default).
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// `trust`: no password asked (development only).
    #[serde(rename = "trust")]
    Trust,
}

/// Whether clients may, or must, use TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// `disable`: `SSLRequest` is answered with `N`.
    Disable,
    /// `prefer` (default): TLS when a certificate is configured and the client asks.
    #[default]
    Prefer,
    /// `require`: clients that do not upgrade to TLS are refused.
    Require,
}

/// `[server]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// `auth`: `scram-sha-256` (default) or `trust`.
    pub auth: AuthMethod,
    /// `listen`: address for `PostgreSQL` clients. Default `127.0.0.1:6432`.
    pub listen: String,
    /// `admin_listen`: address for /metrics, /healthz, /readyz and the admin
    /// API. Default `127.0.0.1:9930`; `""` turns the admin listener off.
    #[serde(deserialize_with = "de_admin_listen")]
    pub admin_listen: Option<String>,
    /// `tls_cert`: PEM certificate chain for client TLS. Default: none.
    pub tls_cert: Option<PathBuf>,
    /// `tls_key`: PEM private key matching `tls_cert`. Default: none.
    pub tls_key: Option<PathBuf>,
    /// `tls_mode`: `disable`, `prefer` (default) or `require`.
    pub tls_mode: TlsMode,
    /// `admin_token`: bearer token for `POST /admin/...`. Default: none
    /// (admin calls are then refused).
    pub admin_token: Option<Secret>,
    /// `max_client_connections`: connections accepted at once. Default 1000.
    pub max_client_connections: usize,
    /// `client_idle_timeout`: close clients idle this long. Default `"0s"` = never.
    #[serde(deserialize_with = "de_duration")]
    pub client_idle_timeout: Duration,
    /// `drain_timeout`: on shutdown, wait this long for sessions. Default `"30s"`.
    #[serde(deserialize_with = "de_duration")]
    pub drain_timeout: Duration,
    /// `connect_timeout`: backend (region) connect timeout. Default `"5s"`.
    #[serde(deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// `workers`: tokio worker threads. Default: number of CPUs.
    pub workers: Option<usize>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            auth: AuthMethod::default(),
            listen: "127.0.0.1:6432".to_owned(),
            admin_listen: Some("127.0.0.1:9930".to_owned()),
            tls_cert: None,
            tls_key: None,
            tls_mode: TlsMode::default(),
            admin_token: None,
            max_client_connections: 1000,
            client_idle_timeout: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            workers: None,
        }
    }
}

/// `[[users]]`: who may connect, and as which tenants.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// `name`: the user name clients log in with. Required.
    pub name: String,
    /// `password`: a plain password or a `SCRAM-SHA-256$...` verifier.
    /// Required unless `server.auth = "trust"`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// `tenants`: tenants this user may act as; the first is the default.
    /// Required, not empty.
    pub tenants: Vec<String>,
}

/// `[regions.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    /// `dsn`: the region database (URL or keyword form). Required.
    pub dsn: Dsn,
}

/// `[tenants.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// `region`: a key of `[regions]`. Required.
    pub region: String,
    /// `kms`: a key of `[kms]`. Required.
    pub kms: String,
    /// `key`: the KEK reference (ARN, resource name, key URL, key name, or a
    /// label for `local`). Required.
    pub key: String,
    /// `dek_cache_ttl`: how long an unwrapped DEK stays cached. Default
    /// `"5m"`; `"0s"` unwraps on every use.
    #[serde(default = "default_dek_ttl", deserialize_with = "de_duration")]
    pub dek_cache_ttl: Duration,
    /// `signing_key`: key that signs audit attestations. Default: none.
    #[serde(default)]
    pub signing_key: Option<String>,
    /// `unwrap_log_sample`: fraction of successful unwraps written to the
    /// KMS log, in [0, 1]. Default 1.0 (all); failures are always logged.
    #[serde(default = "default_sample")]
    pub unwrap_log_sample: f64,
}

fn default_dek_ttl() -> Duration {
    Duration::from_mins(5)
}

fn default_sample() -> f64 {
    1.0
}

/// The KMS a `[kms.NAME]` entry talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KmsProvider {
    /// `aws-kms`
    #[serde(rename = "aws-kms")]
    AwsKms,
    /// `gcp-kms`
    #[serde(rename = "gcp-kms")]
    GcpKms,
    /// `azure-keyvault`
    #[serde(rename = "azure-keyvault")]
    AzureKeyVault,
    /// `vault-transit` (`HashiCorp` Vault or `OpenBao`)
    #[serde(rename = "vault-transit")]
    VaultTransit,
    /// `local`: a key file on disk (development only)
    #[serde(rename = "local")]
    Local,
}

impl KmsProvider {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            KmsProvider::AwsKms => "aws-kms",
            KmsProvider::GcpKms => "gcp-kms",
            KmsProvider::AzureKeyVault => "azure-keyvault",
            KmsProvider::VaultTransit => "vault-transit",
            KmsProvider::Local => "local",
        }
    }
}

/// `[kms.NAME]`. Fields are flat; `validate` checks that each provider has
/// what it needs and nothing that belongs to another provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// `provider`. Required.
    pub provider: KmsProvider,
    /// `endpoint` (aws-kms, gcp-kms, azure-keyvault): override the service
    /// URL, for tests or private endpoints. Default: the provider's own.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `region` (aws-kms): AWS region. Required for aws-kms.
    #[serde(default)]
    pub region: Option<String>,
    /// `assume_role_arn` (aws-kms): role to assume for cross-account keys. Default: none.
    #[serde(default)]
    pub assume_role_arn: Option<String>,
    /// `external_id` (aws-kms): external id for the assumed role. Default: none.
    #[serde(default)]
    pub external_id: Option<String>,
    /// `address` (vault-transit): Vault/`OpenBao` base URL. Required for vault-transit.
    #[serde(default)]
    pub address: Option<String>,
    /// `token` (vault-transit): Vault token. Either this or `role_id` + `secret_id`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// `role_id` (vault-transit): `AppRole` role id. Default: none.
    #[serde(default)]
    pub role_id: Option<String>,
    /// `secret_id` (vault-transit): `AppRole` secret id. Default: none.
    #[serde(default)]
    pub secret_id: Option<Secret>,
    /// `mount` (vault-transit): Transit mount path. Default `"transit"`
    /// (see [`KmsConfig::transit_mount`]).
    #[serde(default)]
    pub mount: Option<String>,
    /// `namespace` (vault-transit): Vault Enterprise / `OpenBao` namespace. Default: none.
    #[serde(default)]
    pub namespace: Option<String>,
    /// `credentials_file` (gcp-kms): service-account JSON. Default: Google
    /// application default credentials.
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// `vault_url` (azure-keyvault): `https://NAME.vault.azure.net`. Required for azure-keyvault.
    #[serde(default)]
    pub vault_url: Option<String>,
    /// `azure_tenant_id` (azure-keyvault): Entra tenant of the service principal. Default: none.
    #[serde(default)]
    pub azure_tenant_id: Option<String>,
    /// `client_id` (azure-keyvault): service principal or managed identity client id. Default: none.
    #[serde(default)]
    pub client_id: Option<String>,
    /// `client_secret` (azure-keyvault): service principal secret. Default: none
    /// (then managed identity / environment credentials are used).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// `authority_host` (azure-keyvault): Entra authority URL. Default: Azure public cloud.
    #[serde(default)]
    pub authority_host: Option<String>,
    /// `allow_insecure_local` (local): must be `true` to use the local provider. Default false.
    #[serde(default)]
    pub allow_insecure_local: bool,
    /// `key_file` (local): file holding 64 hex characters (a 256-bit KEK). Required for local.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// `timeout`: per KMS call. Default `"5s"`.
    #[serde(default = "default_kms_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// `max_retries`: retries on throttling and transient errors. Default 3.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
}

impl KmsConfig {
    /// The Transit mount path, `"transit"` unless `mount` says otherwise.
    pub fn transit_mount(&self) -> &str {
        self.mount.as_deref().unwrap_or("transit")
    }
}

fn default_kms_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_retries() -> u32 {
    3
}

/// How a protected column is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnMode {
    /// `deterministic`: equal plaintexts give equal ciphertexts (lookups work).
    Deterministic,
    /// `randomized`: no two ciphertexts alike.
    Randomized,
}

/// `[[table]]`: one table's policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// `name`: `table` or `schema.table`, `PostgreSQL` identifier rules
    /// (unquoted folded to lower case). Required. Default schema `public`.
    pub name: String,
    /// `tenant_column`: column byokpg fills/checks with the tenant. Default: none.
    /// Stored folded.
    #[serde(default)]
    pub tenant_column: Option<String>,
    /// `append_only`: refuse UPDATE / DELETE / TRUNCATE / MERGE / DROP / ALTER. Default false.
    #[serde(default)]
    pub append_only: bool,
    /// `hash_chain`: fill and chain the three chain columns. Default false;
    /// needs `append_only = true`.
    #[serde(default)]
    pub hash_chain: bool,
    /// `chain_seq_column`. Default `"chain_seq"`. Stored folded.
    #[serde(default = "default_chain_seq")]
    pub chain_seq_column: String,
    /// `prev_hash_column`. Default `"prev_hash"`. Stored folded.
    #[serde(default = "default_prev_hash")]
    pub prev_hash_column: String,
    /// `row_hash_column`. Default `"row_hash"`. Stored folded.
    #[serde(default = "default_row_hash")]
    pub row_hash_column: String,
    /// `[table.columns]`: column name → mode. Default: none. Keys stored folded.
    #[serde(default)]
    pub columns: BTreeMap<String, ColumnMode>,
}

fn default_chain_seq() -> String {
    "chain_seq".to_owned()
}

fn default_prev_hash() -> String {
    "prev_hash".to_owned()
}

fn default_row_hash() -> String {
    "row_hash".to_owned()
}

impl TableConfig {
    /// Schema, folded per `PostgreSQL` rules; `public` when not given.
    pub fn schema(&self) -> String {
        match ident::split_qualified(&self.name) {
            Ok(parts) if parts.len() == 2 => parts[0].clone(),
            _ => "public".to_owned(),
        }
    }

    /// Table name, folded per `PostgreSQL` rules.
    pub fn table(&self) -> String {
        match ident::split_qualified(&self.name) {
            Ok(mut parts) if !parts.is_empty() => parts.pop().unwrap_or_default(),
            _ => self.name.clone(),
        }
    }

    /// `schema.table`, folded, unquoted: for messages and associated data.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schema(), self.table())
    }

    /// The three chain column names, when `hash_chain` is on.
    pub fn chain_columns(&self) -> Option<[&str; 3]> {
        self.hash_chain.then_some([
            self.chain_seq_column.as_str(),
            self.prev_hash_column.as_str(),
            self.row_hash_column.as_str(),
        ])
    }
}

/// `[audit]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// `attest_every`: sign every chain head this often (needs the tenant's
    /// `signing_key`). Default: none (only `byokpg audit attest`).
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub attest_every: Option<Duration>,
}

/// Durations are humantime strings: "0s", "250ms", "5m", "1h 30m".
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "invalid duration ({e}); write e.g. \"0s\", \"250ms\", \"30s\", \"5m\", \"1h\""
        ))
    })
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(Some)
}

fn de_admin_listen<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.trim().is_empty()).then_some(s))
}
