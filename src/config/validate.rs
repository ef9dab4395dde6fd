//! Checks that span fields and sections. Each problem is reported at the key
//! that is wrong, so the user can jump to it.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use base64::Engine as _;
use toml_edit::Table;

use super::locate::join;
use super::parse::Problems;
use super::{AuthMethod, Config, KmsConfig, KmsProvider, SslMode, TableConfig, TlsMode, ident};

/// Names of regions, KMS entries and tenants as the file spells them, so a
/// tenant naming a region whose entry failed to parse is not also reported
/// as naming an unknown region.
#[derive(Default)]
pub(crate) struct Names {
    pub regions: BTreeSet<String>,
    pub kms: BTreeSet<String>,
    pub tenants: BTreeSet<String>,
}

impl Names {
    pub(crate) fn from_document(root: &Table) -> Self {
        let keys = |section: &str| -> BTreeSet<String> {
            root.get(section)
                .and_then(|i| i.as_table_like())
                .map(|t| t.iter().map(|(k, _)| k.to_owned()).collect())
                .unwrap_or_default()
        };
        Self {
            regions: keys("regions"),
            kms: keys("kms"),
            tenants: keys("tenants"),
        }
    }
}

/// Where list entries came from: their index among `[[users]]` / `[[table]]`
/// and, for tables, column names as written before folding.
#[derive(Default)]
pub(crate) struct Origins {
    pub users: Vec<usize>,
    pub tables: Vec<TableOrigin>,
}

pub(crate) struct TableOrigin {
    pub index: usize,
    pub raw_columns: BTreeMap<String, String>,
}

pub(crate) fn validate(cfg: &Config, names: &Names, origins: &Origins, p: &mut Problems<'_>) {
    server(cfg, p);
    if names.regions.is_empty() {
        p.at(
            "regions",
            "no regions: add at least one [regions.NAME] with a dsn",
        );
    }
    for (name, region) in &cfg.regions {
        let path = join("regions", name);
        check_name(&path, name, "region", p);
        let dsn = &region.dsn;
        if matches!(dsn.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
            && dsn.sslrootcert.is_none()
        {
            p.at(
                &join(&path, "dsn"),
                format!(
                    "sslmode={} needs sslrootcert=PATH (a PEM file of the CA certificates to trust)",
                    dsn.sslmode.as_str()
                ),
            );
        }
    }
    for (name, kms) in &cfg.kms {
        check_name(&join("kms", name), name, "KMS", p);
        kms_entry(&join("kms", name), kms, p);
    }
    tenants(cfg, names, p);
    users(cfg, names, origins, p);
    tables(cfg, origins, p);
    if cfg.audit.attest_every.is_some_and(|d| d.is_zero()) {
        p.at(
            "audit.attest_every",
            "must be longer than 0s (leave it out to attest only on demand)",
        );
    }
}

/// Tenant, region and KMS names end up in logs, SQL rows and associated
/// data; keep them to a conservative alphabet.
fn check_name(path: &str, name: &str, what: &str, p: &mut Problems<'_>) {
    let ok = name.len() <= 63
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !ok {
        p.at(
            path,
            format!(
                "invalid {what} name: use letters, digits, '_', '-' and '.', starting with a letter or digit, at most 63 characters"
            ),
        );
    }
}

fn server(cfg: &Config, p: &mut Problems<'_>) {
    let s = &cfg.server;
    let listen = s.listen.parse::<SocketAddr>();
    if listen.is_err() {
        p.at(
            "server.listen",
            "not a socket address: write IP:PORT, e.g. \"127.0.0.1:6432\" or \"[::]:6432\"",
        );
    }
    if let Some(admin) = &s.admin_listen {
        match admin.parse::<SocketAddr>() {
            Err(_) => p.at(
                "server.admin_listen",
                "not a socket address: write IP:PORT, e.g. \"127.0.0.1:9930\" (or \"\" to turn the admin listener off)",
            ),
            Ok(a) if listen.as_ref().is_ok_and(|l| *l == a) => {
                p.at("server.admin_listen", "must differ from server.listen");
            }
            Ok(_) => {}
        }
    }
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => p.at(
            "server.tls_cert",
            "tls_cert is set without tls_key: set both, or neither",
        ),
        (None, Some(_)) => p.at(
            "server.tls_key",
            "tls_key is set without tls_cert: set both, or neither",
        ),
        _ => {}
    }
    if s.tls_mode == TlsMode::Require && s.tls_cert.is_none() {
        p.at(
            "server.tls_mode",
            "tls_mode = \"require\" needs tls_cert and tls_key",
        );
    }
    if s.admin_token.as_ref().is_some_and(super::Secret::is_empty) {
        p.at(
            "server.admin_token",
            "is empty (an unset variable's empty value?); leave the key out to refuse all admin calls",
        );
    }
    if s.max_client_connections == 0 {
        p.at("server.max_client_connections", "must be at least 1");
    }
    if s.workers == Some(0) {
        p.at(
            "server.workers",
            "must be at least 1 (leave it out for one per CPU)",
        );
    }
}

/// Which provider each optional field belongs to.
fn provider_fields(k: &KmsConfig) -> [(&'static str, bool, &'static [KmsProvider]); 18] {
    use KmsProvider::{AwsKms, AzureKeyVault, GcpKms, Local, VaultTransit};
    [
        (
            "endpoint",
            k.endpoint.is_some(),
            &[AwsKms, GcpKms, AzureKeyVault],
        ),
        ("region", k.region.is_some(), &[AwsKms]),
        ("assume_role_arn", k.assume_role_arn.is_some(), &[AwsKms]),
        ("external_id", k.external_id.is_some(), &[AwsKms]),
        ("address", k.address.is_some(), &[VaultTransit]),
        ("token", k.token.is_some(), &[VaultTransit]),
        ("role_id", k.role_id.is_some(), &[VaultTransit]),
        ("secret_id", k.secret_id.is_some(), &[VaultTransit]),
        ("mount", k.mount.is_some(), &[VaultTransit]),
        ("namespace", k.namespace.is_some(), &[VaultTransit]),
        ("credentials_file", k.credentials_file.is_some(), &[GcpKms]),
        ("vault_url", k.vault_url.is_some(), &[AzureKeyVault]),
        (
            "azure_tenant_id",
            k.azure_tenant_id.is_some(),
            &[AzureKeyVault],
        ),
        ("client_id", k.client_id.is_some(), &[AzureKeyVault]),
        ("client_secret", k.client_secret.is_some(), &[AzureKeyVault]),
        (
            "authority_host",
            k.authority_host.is_some(),
            &[AzureKeyVault],
        ),
        ("allow_insecure_local", k.allow_insecure_local, &[Local]),
        ("key_file", k.key_file.is_some(), &[Local]),
    ]
}

fn kms_entry(path: &str, k: &KmsConfig, p: &mut Problems<'_>) {
    let provider = k.provider.as_str();
    for (field, set, owners) in provider_fields(k) {
        if set && !owners.contains(&k.provider) {
            let owners: Vec<&str> = owners.iter().map(|o| o.as_str()).collect();
            let hint = if field == "endpoint" {
                " (vault-transit uses `address`)".to_owned()
            } else {
                String::new()
            };
            p.at(
                &join(path, field),
                format!(
                    "does not apply to provider {provider}; it is for {}{hint}",
                    owners.join(", ")
                ),
            );
        }
    }
    if k.timeout.is_zero() {
        p.at(&join(path, "timeout"), "must be longer than 0s");
    }
    if k.max_retries > 20 {
        p.at(&join(path, "max_retries"), "must be at most 20");
    }
    for (field, url) in [
        ("endpoint", &k.endpoint),
        ("address", &k.address),
        ("vault_url", &k.vault_url),
        ("authority_host", &k.authority_host),
    ] {
        if let Some(u) = url {
            check_url(&join(path, field), u, p);
        }
    }
    match k.provider {
        KmsProvider::AwsKms => aws(path, k, p),
        KmsProvider::VaultTransit => vault(path, k, p),
        KmsProvider::AzureKeyVault => azure(path, k, p),
        KmsProvider::GcpKms => {}
        KmsProvider::Local => local(path, k, p),
    }
}

fn check_url(path: &str, u: &str, p: &mut Problems<'_>) {
    let ok = url::Url::parse(u)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
    if !ok {
        p.at(path, "not an http:// or https:// URL");
    }
}

fn blank(v: Option<&String>) -> bool {
    v.is_none_or(|s| s.trim().is_empty())
}

fn aws(path: &str, k: &KmsConfig, p: &mut Problems<'_>) {
    if blank(k.region.as_ref()) {
        p.at(
            &join(path, "region"),
            "aws-kms needs `region` (e.g. \"eu-west-1\")",
        );
    }
    if k.external_id.is_some() && k.assume_role_arn.is_none() {
        p.at(
            &join(path, "external_id"),
            "external_id is only used with assume_role_arn",
        );
    }
    if k.assume_role_arn
        .as_ref()
        .is_some_and(|a| !a.starts_with("arn:"))
    {
        p.at(
            &join(path, "assume_role_arn"),
            "must be a role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
        );
    }
}

fn vault(path: &str, k: &KmsConfig, p: &mut Problems<'_>) {
    if blank(k.address.as_ref()) {
        p.at(
            &join(path, "address"),
            "vault-transit needs `address` (e.g. \"https://vault.internal:8200\")",
        );
    }
    let approle = k.role_id.is_some() || k.secret_id.is_some();
    match (
        k.token.is_some(),
        k.role_id.is_some(),
        k.secret_id.is_some(),
    ) {
        (true, _, _) if approle => p.at(
            &join(path, "token"),
            "set either `token` or `role_id` + `secret_id` (AppRole), not both",
        ),
        (false, false, false) => p.at(
            path,
            "vault-transit needs `token`, or `role_id` + `secret_id` (AppRole)",
        ),
        (false, true, false) => p.at(
            &join(path, "role_id"),
            "role_id needs secret_id (AppRole login)",
        ),
        (false, false, true) => p.at(
            &join(path, "secret_id"),
            "secret_id needs role_id (AppRole login)",
        ),
        _ => {}
    }
    if k.token.as_ref().is_some_and(super::Secret::is_empty) {
        p.at(
            &join(path, "token"),
            "is empty (an unset variable's empty value?)",
        );
    }
    if k.mount
        .as_ref()
        .is_some_and(|m| m.trim_matches('/').is_empty())
    {
        p.at(
            &join(path, "mount"),
            "is empty; leave it out for \"transit\"",
        );
    }
}

fn azure(path: &str, k: &KmsConfig, p: &mut Problems<'_>) {
    if blank(k.vault_url.as_ref()) {
        p.at(
            &join(path, "vault_url"),
            "azure-keyvault needs `vault_url` (e.g. \"https://NAME.vault.azure.net\")",
        );
    }
    if k.client_secret.is_some() {
        for (field, v) in [
            ("azure_tenant_id", &k.azure_tenant_id),
            ("client_id", &k.client_id),
        ] {
            if blank(v.as_ref()) {
                p.at(
                    &join(path, field),
                    format!("client_secret (service principal login) needs `{field}` too"),
                );
            }
        }
    }
}

fn local(path: &str, k: &KmsConfig, p: &mut Problems<'_>) {
    if !k.allow_insecure_local {
        p.at(
            &join(path, "allow_insecure_local"),
            "the local provider keeps the KEK in a file and is for development only; set allow_insecure_local = true to use it anyway",
        );
    }
    if k.key_file.is_none() {
        p.at(
            &join(path, "key_file"),
            "the local provider needs `key_file` (a file of 64 hex characters; `byokpg demo` creates one)",
        );
    }
}

fn tenants(cfg: &Config, names: &Names, p: &mut Problems<'_>) {
    for (name, t) in &cfg.tenants {
        let path = join("tenants", name);
        check_name(&path, name, "tenant", p);
        if !names.regions.contains(&t.region) {
            p.at(
                &join(&path, "region"),
                format!(
                    "unknown region `{}`; defined: {}",
                    t.region,
                    list_or_none(&names.regions)
                ),
            );
        }
        if !names.kms.contains(&t.kms) {
            p.at(
                &join(&path, "kms"),
                format!(
                    "unknown KMS `{}`; defined: {}",
                    t.kms,
                    list_or_none(&names.kms)
                ),
            );
        }
        if t.key.trim().is_empty() {
            p.at(&join(&path, "key"), "is empty: name the tenant's KEK");
        }
        if t.signing_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
            p.at(
                &join(&path, "signing_key"),
                "is empty; leave the key out if the tenant signs no attestations",
            );
        }
        if !(0.0..=1.0).contains(&t.unwrap_log_sample) {
            p.at(
                &join(&path, "unwrap_log_sample"),
                "must be between 0.0 and 1.0",
            );
        }
    }
}

fn list_or_none(set: &BTreeSet<String>) -> String {
    if set.is_empty() {
        "(none)".to_owned()
    } else {
        set.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn users(cfg: &Config, names: &Names, origins: &Origins, p: &mut Problems<'_>) {
    let mut seen: BTreeMap<&str, String> = BTreeMap::new();
    for (i, u) in cfg.users.iter().enumerate() {
        let path = format!("users[{}]", origins.users.get(i).copied().unwrap_or(i));
        let name_path = join(&path, "name");
        if u.name.is_empty() {
            p.at(&name_path, "is empty");
        } else if let Some(first) = seen.get(u.name.as_str()) {
            let line = p
                .loc
                .line_of(first)
                .map_or_else(String::new, |l| format!(" at line {l}"));
            p.at(
                &name_path,
                format!("user `{}` is already defined{line}", u.name),
            );
        } else {
            seen.insert(&u.name, name_path.clone());
        }
        if u.tenants.is_empty() {
            p.at(
                &join(&path, "tenants"),
                "is empty: list the tenants this user may act as (the first is the default)",
            );
        }
        let mut mine = BTreeSet::new();
        for (j, t) in u.tenants.iter().enumerate() {
            let tpath = format!("{}[{j}]", join(&path, "tenants"));
            if !names.tenants.contains(t) {
                p.at(
                    &tpath,
                    format!(
                        "unknown tenant `{t}`; defined: {}",
                        list_or_none(&names.tenants)
                    ),
                );
            } else if !mine.insert(t) {
                p.at(&tpath, format!("tenant `{t}` is listed twice"));
            }
        }
        user_password(cfg, u, &path, p);
    }
}

fn user_password(cfg: &Config, u: &super::UserConfig, path: &str, p: &mut Problems<'_>) {
    let key = join(path, "password");
    match &u.password {
        None if cfg.server.auth == AuthMethod::ScramSha256 => p.at(
            &key,
            "required with server.auth = \"scram-sha-256\" (a password or a SCRAM-SHA-256 verifier)",
        ),
        Some(pw) if pw.is_empty() => p.at(&key, "is empty (an unset variable's empty value?)"),
        Some(pw) if pw.expose().starts_with("SCRAM-SHA-256$") && !scram_verifier_ok(pw.expose()) => {
            p.at(
                &key,
                "looks like a SCRAM verifier but is malformed: expected SCRAM-SHA-256$ITERATIONS:SALT$STOREDKEY:SERVERKEY (base64), as in pg_authid",
            );
        }
        _ => {}
    }
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (`pg_authid` form).
pub(crate) fn scram_verifier_ok(v: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(rest) = v.strip_prefix("SCRAM-SHA-256$") else {
        return false;
    };
    let Some((params, keys)) = rest.split_once('$') else {
        return false;
    };
    let Some((iter, salt)) = params.split_once(':') else {
        return false;
    };
    let Some((stored, server)) = keys.split_once(':') else {
        return false;
    };
    let key_ok = |k: &str| b64.decode(k).is_ok_and(|d| d.len() == 32);
    iter.parse::<u32>().is_ok_and(|n| n > 0)
        && b64.decode(salt).is_ok_and(|s| !s.is_empty())
        && key_ok(stored)
        && key_ok(server)
}

fn tables(cfg: &Config, origins: &Origins, p: &mut Problems<'_>) {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for (i, t) in cfg.tables.iter().enumerate() {
        let origin = origins.tables.get(i);
        let path = format!("table[{}]", origin.map_or(i, |o| o.index));
        let name_path = join(&path, "name");
        match ident::split_qualified(&t.name) {
            Err(e) => p.at(&name_path, format!("invalid table name: {e}")),
            Ok(parts) if parts.len() > 2 => p.at(
                &name_path,
                "write `table` or `schema.table` (no database part)",
            ),
            Ok(_) => {
                let id = (t.schema(), t.table());
                if let Some(first) = seen.get(&id) {
                    let line = p
                        .loc
                        .line_of(first)
                        .map_or_else(String::new, |l| format!(" at line {l}"));
                    p.at(
                        &name_path,
                        format!(
                            "table `{}` is already listed{line}; merge the two entries",
                            t.qualified()
                        ),
                    );
                } else {
                    seen.insert(id, name_path.clone());
                }
            }
        }
        table_columns(t, &path, origin, p);
    }
}

fn table_columns(t: &TableConfig, path: &str, origin: Option<&TableOrigin>, p: &mut Problems<'_>) {
    let col_path = |c: &str| {
        let raw = origin
            .and_then(|o| o.raw_columns.get(c))
            .map_or(c, String::as_str);
        join(&join(path, "columns"), raw)
    };
    if t.hash_chain && !t.append_only {
        p.at(
            &join(path, "hash_chain"),
            "hash_chain needs append_only = true (an updatable row would break the chain)",
        );
    }
    let chain = t.chain_columns().unwrap_or_default();
    if t.hash_chain {
        let distinct: BTreeSet<&str> = chain.iter().copied().collect();
        if distinct.len() < 3 {
            p.at(
                path,
                "chain_seq_column, prev_hash_column and row_hash_column must be three different columns",
            );
        }
    }
    if let Some(tc) = t
        .tenant_column
        .as_ref()
        .filter(|tc| chain.contains(&tc.as_str()))
    {
        p.at(
            &join(path, "tenant_column"),
            format!("`{tc}` is also a hash-chain column"),
        );
    }
    for col in t.columns.keys() {
        if t.tenant_column.as_deref() == Some(col.as_str()) {
            p.at(
                &col_path(col),
                format!("`{col}` is the tenant_column; it cannot also be encrypted"),
            );
        }
        if chain.contains(&col.as_str()) {
            p.at(
                &col_path(col),
                format!(
                    "`{col}` is a hash-chain column (byokpg fills it); it cannot also be encrypted"
                ),
            );
        }
    }
    if t.columns.is_empty() && !t.append_only && t.tenant_column.is_none() {
        p.at(
            path,
            "this policy does nothing: give it [table.columns], append_only or tenant_column",
        );
    }
}
