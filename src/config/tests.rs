//! Config parsing and validation tests: every rule, with its line and key.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const FILE: &str = "test.toml";

fn env_map() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("BYOKPG_ADMIN_TOKEN", "admin-tok-123"),
        ("ACME_APP_PASSWORD", "acme-pw-xyz"),
        ("PG_US_PASSWORD", "us-pw"),
        ("PG_EU_PASSWORD", "eu:p@ss/word"),
        ("PG_APAC_PASSWORD", "apac-pw"),
        ("VAULT_TOKEN", "hvs.vault-token-abc"),
        ("NOT_A_NUMBER", "sekrit-value-42"),
    ])
}

fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let env = env_map();
    parse_with_env(text, Path::new(FILE), &|n| {
        env.get(n).map(|v| (*v).to_owned())
    })
}

fn parse_ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|errs| {
        panic!("unexpected errors:\n{}", render(&errs));
    })
}

fn errors(text: &str) -> Vec<ConfigError> {
    match parse(text) {
        Ok(_) => panic!("expected errors, config was accepted:\n{text}"),
        Err(e) => e,
    }
}

fn render(errs: &[ConfigError]) -> String {
    errs.iter().fold(String::new(), |mut out, e| {
        out.push_str(&e.to_string());
        out.push('\n');
        out
    })
}

/// 1-based line of the first line containing `needle`.
fn line(text: &str, needle: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in text"))
}

/// Asserts one problem has this key, this line and a message containing `msg`.
#[track_caller]
fn expect(errs: &[ConfigError], key: &str, line: usize, msg: &str) {
    let found = errs
        .iter()
        .any(|e| e.key == key && e.line == Some(line) && e.message.contains(msg));
    assert!(
        found,
        "no problem `{key}` at line {line} containing `{msg}` in:\n{}",
        render(errs)
    );
}

const BASE: &str = r#"
[server]
auth = "trust"

[regions.us]
dsn = "postgres://byokpg@127.0.0.1:5432/app"

[kms.dev]
provider = "local"
allow_insecure_local = true
key_file = "config/dev-kek.key"

[tenants.acme]
region = "us"
kms = "dev"
key = "acme-label"

[[users]]
name = "app"
tenants = ["acme"]

[[table]]
name = "customers"
tenant_column = "tenant_id"
[table.columns]
email = "deterministic"
"#;

fn with(extra: &str) -> String {
    format!("{BASE}{extra}")
}

const SPEC_EXAMPLE: &str = r#"
[server]
auth = "scram-sha-256"              # or "trust" (dev only)
listen = "127.0.0.1:6432"
admin_listen = "127.0.0.1:9930"     # /metrics, /healthz, /readyz, admin API
tls_cert = "config/tls/server.crt"  # optional; enables SSLRequest upgrade
tls_key  = "config/tls/server.key"
tls_mode = "prefer"                 # disable | prefer | require
admin_token = "${BYOKPG_ADMIN_TOKEN}"  # bearer token for admin API calls

[[users]]                            # who may connect, and as which tenant(s)
name = "acme_app"
password = "${ACME_APP_PASSWORD}"   # or a SCRAM-SHA-256 verifier string
tenants = ["acme"]                   # first is the default

[regions.us]
dsn = "postgres://byokpg:${PG_US_PASSWORD}@db-us.internal:5432/app?sslmode=require"
[regions.eu]
dsn = "host=db-eu.internal user=byokpg password='${PG_EU_PASSWORD}' dbname=app sslmode=require"
[regions.apac]
dsn = "postgres://byokpg:${PG_APAC_PASSWORD}@db-apac.internal:5432/app?sslmode=require"

[kms.prod-aws]
provider = "aws-kms"                 # aws-kms | gcp-kms | azure-keyvault | vault-transit | local
region = "eu-west-1"

[kms.vault]
provider = "vault-transit"
address = "https://vault.internal:8200"
token = "${VAULT_TOKEN}"             # or role_id / secret_id (AppRole)
mount = "transit"                    # default

[kms.dev]
provider = "local"                   # dev only
allow_insecure_local = true          # required, or the provider is refused
key_file = "config/dev-kek.key"      # 64 hex chars (a 256-bit KEK); `demo` creates one

[tenants.acme]
region = "eu"
kms = "prod-aws"
key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-..."   # the KEK reference
dek_cache_ttl = "5m"                 # default 5m; "0s" = unwrap on every use
signing_key = "arn:aws:kms:eu-west-1:111122223333:key/..."     # optional, for audit attestations

[[table]]
name = "customers"                   # schema-qualified allowed; default schema public
tenant_column = "tenant_id"          # optional: byokpg fills/checks it with the connection's tenant
[table.columns]
email = "deterministic"              # equality lookups, joins and unique indexes keep working
ssn   = "randomized"                 # strongest: no two ciphertexts alike
notes = "randomized"

[[table]]
name = "audit_log"
append_only = true                   # UPDATE / DELETE / TRUNCATE / MERGE / DROP / ALTER refused
hash_chain = true                    # byokpg fills chain_seq, prev_hash, row_hash
tenant_column = "tenant_id"          # one chain per tenant when set
[table.columns]
payload = "randomized"
"#;

#[test]
fn spec_example_parses() {
    let c = parse_ok(SPEC_EXAMPLE);
    assert_eq!(c.path, PathBuf::from(FILE));
    assert_eq!(c.server.auth, AuthMethod::ScramSha256);
    assert_eq!(c.server.tls_mode, TlsMode::Prefer);
    assert_eq!(
        c.server.admin_token.as_ref().unwrap().expose(),
        "admin-tok-123"
    );
    assert_eq!(
        c.users[0].password.as_ref().unwrap().expose(),
        "acme-pw-xyz"
    );
    let us = &c.regions["us"].dsn;
    assert_eq!(
        (us.host.as_str(), us.sslmode),
        ("db-us.internal", SslMode::Require)
    );
    assert_eq!(us.password.as_ref().unwrap().expose(), "us-pw");
    // Keyword form with a quoted password keeps any character.
    assert_eq!(
        c.regions["eu"].dsn.password.as_ref().unwrap().expose(),
        "eu:p@ss/word"
    );
    assert_eq!(c.kms["prod-aws"].provider, KmsProvider::AwsKms);
    assert_eq!(c.kms["vault"].transit_mount(), "transit");
    assert_eq!(c.kms["dev"].timeout, Duration::from_secs(5));
    assert_eq!(c.kms["dev"].max_retries, 3);
    let acme = &c.tenants["acme"];
    assert_eq!(acme.dek_cache_ttl, Duration::from_mins(5));
    assert!((acme.unwrap_log_sample - 1.0).abs() < f64::EPSILON);
    assert_eq!(c.tables.len(), 2);
    assert_eq!(c.tables[0].columns["email"], ColumnMode::Deterministic);
    let audit = &c.tables[1];
    assert_eq!(
        audit.chain_columns(),
        Some(["chain_seq", "prev_hash", "row_hash"])
    );
    assert_eq!(audit.qualified(), "public.audit_log");
    assert!(c.table("public", "audit_log").is_some());
    assert_eq!(c.tenant_region("acme").unwrap().dsn.host, "db-eu.internal");
    assert_eq!(c.user("acme_app").unwrap().tenants, ["acme"]);
}

#[test]
fn defaults() {
    let c = parse_ok(BASE);
    let s = &c.server;
    assert_eq!(s.listen, "127.0.0.1:6432");
    assert_eq!(s.admin_listen.as_deref(), Some("127.0.0.1:9930"));
    assert_eq!(s.tls_mode, TlsMode::Prefer);
    assert_eq!(s.max_client_connections, 1000);
    assert_eq!(s.client_idle_timeout, Duration::ZERO);
    assert_eq!(s.drain_timeout, Duration::from_secs(30));
    assert_eq!(s.connect_timeout, Duration::from_secs(5));
    assert_eq!(s.workers, None);
    assert!(s.tls_cert.is_none() && s.admin_token.is_none());
    assert_eq!(c.audit.attest_every, None);
    let t = &c.tables[0];
    assert!(!t.append_only && !t.hash_chain);
    assert_eq!(t.chain_columns(), None);
    assert_eq!(
        (t.schema(), t.table()),
        ("public".to_owned(), "customers".to_owned())
    );
}

#[test]
fn server_settings_and_durations() {
    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\nadmin_listen = \"\"\nclient_idle_timeout = \"10m\"\ndrain_timeout = \"1h 30s\"\nconnect_timeout = \"250ms\"\nworkers = 4\nmax_client_connections = 7",
    ) + "\n[audit]\nattest_every = \"1h\"\n";
    let c = parse_ok(&text);
    assert_eq!(c.server.admin_listen, None);
    assert_eq!(c.server.client_idle_timeout, Duration::from_mins(10));
    assert_eq!(c.server.drain_timeout, Duration::from_secs(3630));
    assert_eq!(c.server.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.server.workers, Some(4));
    assert_eq!(c.audit.attest_every, Some(Duration::from_hours(1)));

    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\ndrain_timeout = \"soon\"",
    );
    let errs = errors(&text);
    expect(
        &errs,
        "server.drain_timeout",
        line(&text, "soon"),
        "invalid duration",
    );
}

#[test]
fn unknown_keys_and_sections() {
    let text = BASE.replace("auth = \"trust\"", "auth = \"trust\"\nlisten_port = 1");
    expect(
        &errors(&text),
        "server.listen_port",
        line(&text, "listen_port"),
        "unknown field",
    );

    let text = with("\n[tables]\nx = 1\n");
    expect(
        &errors(&text),
        "tables",
        line(&text, "[tables]"),
        "[[table]]",
    );

    let text = BASE.replace(
        "email = \"deterministic\"",
        "email = \"deterministic\"\n[table.colums]",
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.key.starts_with("table[0]") && e.message.contains("unknown field")),
        "{}",
        render(&errs)
    );

    let text = BASE.replace("key = \"acme-label\"", "key = \"acme-label\"\nttl = \"5m\"");
    expect(
        &errors(&text),
        "tenants.acme.ttl",
        line(&text, "ttl ="),
        "unknown field",
    );
}

#[test]
fn bad_values_name_key_and_line() {
    let text = BASE.replace("auth = \"trust\"", "auth = \"md5\"");
    expect(
        &errors(&text),
        "server.auth",
        line(&text, "md5"),
        "unknown variant",
    );

    let text = BASE.replace("auth = \"trust\"", "auth = \"trust\"\nlisten = 6432");
    expect(
        &errors(&text),
        "server.listen",
        line(&text, "listen = 6432"),
        "invalid type",
    );

    let text = BASE.replace("email = \"deterministic\"", "email = \"searchable\"");
    expect(
        &errors(&text),
        "table[0].columns.email",
        line(&text, "searchable"),
        "unknown variant",
    );

    let text = BASE.replace("tenants = [\"acme\"]", "tenants = \"acme\"");
    expect(
        &errors(&text),
        "users[0].tenants",
        line(&text, "tenants = \"acme\""),
        "invalid type",
    );
}

#[test]
fn missing_fields() {
    let text = BASE.replace("kms = \"dev\"\n", "");
    expect(
        &errors(&text),
        "tenants.acme.kms",
        line(&text, "[tenants.acme]"),
        "missing field `kms`",
    );
    let text = BASE.replace("name = \"app\"\n", "");
    expect(
        &errors(&text),
        "users[0].name",
        line(&text, "[[users]]"),
        "missing field `name`",
    );
}

#[test]
fn syntax_error_has_line() {
    let text = BASE.replace("key = \"acme-label\"", "key = \"acme-label");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", render(&errs));
    assert_eq!(errs[0].key, "(syntax)");
    assert_eq!(errs[0].line, Some(line(&text, "acme-label")));
}

#[test]
fn tenant_references() {
    let text = BASE
        .replace("region = \"us\"", "region = \"mars\"")
        .replace("kms = \"dev\"", "kms = \"nope\"");
    let errs = errors(&text);
    expect(
        &errs,
        "tenants.acme.region",
        line(&text, "mars"),
        "unknown region `mars`; defined: us",
    );
    expect(
        &errs,
        "tenants.acme.kms",
        line(&text, "\"nope\""),
        "unknown KMS `nope`",
    );
}

#[test]
fn tenant_values() {
    let text = BASE.replace(
        "key = \"acme-label\"",
        "key = \" \"\nunwrap_log_sample = 1.5\nsigning_key = \"\"\ndek_cache_ttl = \"0s\"",
    );
    let errs = errors(&text);
    expect(
        &errs,
        "tenants.acme.key",
        line(&text, "key = \" \""),
        "is empty",
    );
    expect(
        &errs,
        "tenants.acme.unwrap_log_sample",
        line(&text, "1.5"),
        "between 0.0 and 1.0",
    );
    expect(
        &errs,
        "tenants.acme.signing_key",
        line(&text, "signing_key"),
        "is empty",
    );
    let text = BASE
        .replace("[tenants.acme]", "[tenants.\"bad name\"]")
        .replace("\"acme\"]", "\"bad name\"]");
    expect(
        &errors(&text),
        "tenants.\"bad name\"",
        line(&text, "bad name"),
        "invalid tenant name",
    );
}

#[test]
fn user_rules() {
    let text = with("\n[[users]]\nname = \"app\"\ntenants = []\n");
    let errs = errors(&text);
    let second = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("name = \"app\""))
        .nth(1)
        .unwrap()
        .0
        + 1;
    expect(&errs, "users[1].name", second, "already defined at line");
    expect(
        &errs,
        "users[1].tenants",
        line(&text, "tenants = []"),
        "is empty",
    );

    let text = BASE.replace(
        "tenants = [\"acme\"]",
        "tenants = [\"acme\", \"globex\", \"acme\"]",
    );
    let errs = errors(&text);
    let l = line(&text, "globex");
    expect(&errs, "users[0].tenants[1]", l, "unknown tenant `globex`");
    expect(&errs, "users[0].tenants[2]", l, "listed twice");
}

#[test]
fn scram_needs_passwords() {
    let text = BASE.replace("auth = \"trust\"", "auth = \"scram-sha-256\"");
    expect(
        &errors(&text),
        "users[0].password",
        line(&text, "[[users]]"),
        "required",
    );

    let verifier = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0c2FsdA==$ImaQVZQV+IeLzoMwTjilYykQoqdoPi88JTmcde14lj8=:JsIyOkdSkSVGa+jqqHB5WIyRDMqFBTPomZRdhQCsTBw=";
    let text = BASE
        .replace("auth = \"trust\"", "auth = \"scram-sha-256\"")
        .replace(
            "name = \"app\"",
            &format!("name = \"app\"\npassword = \"{verifier}\""),
        );
    parse_ok(&text);

    let text = BASE.replace(
        "name = \"app\"",
        "name = \"app\"\npassword = \"SCRAM-SHA-256$4096:abc\"",
    );
    expect(
        &errors(&text),
        "users[0].password",
        line(&text, "password"),
        "malformed",
    );

    // trust: no password needed (BASE has none).
    parse_ok(BASE);
}

#[test]
fn table_rules() {
    let text =
        with("\n[[table]]\nname = \"Public.CUSTOMERS\"\n[table.columns]\nssn = \"randomized\"\n");
    expect(
        &errors(&text),
        "table[1].name",
        line(&text, "CUSTOMERS"),
        "already listed at line",
    );

    let text = BASE.replace(
        "email = \"deterministic\"",
        "email = \"deterministic\"\nEmail = \"randomized\"",
    );
    expect(
        &errors(&text),
        "table[0].columns.Email",
        line(&text, "Email"),
        "two modes",
    );

    let text = BASE.replace(
        "email = \"deterministic\"",
        "email = \"deterministic\"\ntenant_id = \"randomized\"",
    );
    expect(
        &errors(&text),
        "table[0].columns.tenant_id",
        line(&text, "tenant_id = \"randomized\""),
        "tenant_column",
    );

    let text = with(
        "\n[[table]]\nname = \"audit\"\nappend_only = true\nhash_chain = true\nrow_hash_column = \"Digest\"\n[table.columns]\ndigest = \"randomized\"\nchain_seq = \"randomized\"\n",
    );
    let errs = errors(&text);
    expect(
        &errs,
        "table[1].columns.digest",
        line(&text, "digest = "),
        "hash-chain column",
    );
    expect(
        &errs,
        "table[1].columns.chain_seq",
        line(&text, "chain_seq = "),
        "hash-chain column",
    );

    let text = with("\n[[table]]\nname = \"log\"\nhash_chain = true\n");
    expect(
        &errors(&text),
        "table[1].hash_chain",
        line(&text, "hash_chain"),
        "append_only",
    );

    let text = with("\n[[table]]\nname = \"nothing\"\n");
    expect(
        &errors(&text),
        "table[1]",
        line(&text, "\"nothing\"") - 1,
        "does nothing",
    );

    let text = with("\n[[table]]\nname = \"a.b.c\"\nappend_only = true\n");
    expect(
        &errors(&text),
        "table[1].name",
        line(&text, "a.b.c"),
        "no database part",
    );

    let text = with(
        "\n[[table]]\nname = \"log\"\nappend_only = true\nhash_chain = true\nprev_hash_column = \"row_hash\"\n",
    );
    expect(
        &errors(&text),
        "table[1]",
        line(&text, "\"log\"") - 1,
        "three different columns",
    );
}

#[test]
fn identifiers_are_folded() {
    let text = with(
        "\n[[table]]\nname = 'Sales.\"Big Orders\"'\ntenant_column = \"Tenant\"\n[table.columns]\nEMAIL = \"deterministic\"\n'\"Notes\"' = \"randomized\"\n",
    );
    let c = parse_ok(&text);
    let t = &c.tables[1];
    assert_eq!(
        (t.schema(), t.table()),
        ("sales".to_owned(), "Big Orders".to_owned())
    );
    assert_eq!(t.tenant_column.as_deref(), Some("tenant"));
    assert!(t.columns.contains_key("email") && t.columns.contains_key("Notes"));
    assert!(c.table("sales", "Big Orders").is_some());
}

#[test]
fn tls_rules() {
    let text = BASE.replace("auth = \"trust\"", "auth = \"trust\"\ntls_cert = \"a.crt\"");
    expect(
        &errors(&text),
        "server.tls_cert",
        line(&text, "a.crt"),
        "without tls_key",
    );
    let text = BASE.replace("auth = \"trust\"", "auth = \"trust\"\ntls_key = \"a.key\"");
    expect(
        &errors(&text),
        "server.tls_key",
        line(&text, "a.key"),
        "without tls_cert",
    );
    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\ntls_mode = \"require\"",
    );
    expect(
        &errors(&text),
        "server.tls_mode",
        line(&text, "require"),
        "needs tls_cert",
    );
    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\ntls_mode = \"require\"\ntls_cert = \"a.crt\"\ntls_key = \"a.key\"",
    );
    parse_ok(&text);
}

#[test]
fn server_addresses_and_limits() {
    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\nlisten = \"localhost\"\nadmin_listen = \"0.0.0.0\"\nworkers = 0\nmax_client_connections = 0\nadmin_token = \"\"",
    );
    let errs = errors(&text);
    expect(
        &errs,
        "server.listen",
        line(&text, "localhost"),
        "not a socket address",
    );
    expect(
        &errs,
        "server.admin_listen",
        line(&text, "0.0.0.0"),
        "not a socket address",
    );
    expect(
        &errs,
        "server.workers",
        line(&text, "workers"),
        "at least 1",
    );
    expect(
        &errs,
        "server.max_client_connections",
        line(&text, "max_client"),
        "at least 1",
    );
    expect(
        &errs,
        "server.admin_token",
        line(&text, "admin_token"),
        "is empty",
    );

    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\nlisten = \"127.0.0.1:7000\"\nadmin_listen = \"127.0.0.1:7000\"",
    );
    expect(
        &errors(&text),
        "server.admin_listen",
        line(&text, "admin_listen"),
        "must differ",
    );
}

#[test]
fn regions_required_and_checked() {
    let text = BASE.replace(
        "[regions.us]\ndsn = \"postgres://byokpg@127.0.0.1:5432/app\"\n",
        "",
    );
    let errs = errors(&text);
    assert!(
        errs.iter()
            .any(|e| e.key == "regions" && e.message.contains("no regions")),
        "{}",
        render(&errs)
    );

    let text = BASE.replace("5432/app\"", "5432/app?sslmode=verify-full\"");
    expect(
        &errors(&text),
        "regions.us.dsn",
        line(&text, "verify-full"),
        "needs sslrootcert",
    );

    let text = BASE.replace(
        "postgres://byokpg@127.0.0.1:5432/app",
        "postgres://127.0.0.1/app",
    );
    expect(
        &errors(&text),
        "regions.us.dsn",
        line(&text, "postgres://127"),
        "no user",
    );
}

#[test]
fn kms_rules() {
    let text = BASE.replace("allow_insecure_local = true\n", "");
    expect(
        &errors(&text),
        "kms.dev.allow_insecure_local",
        line(&text, "[kms.dev]"),
        "development only",
    );

    let text = with("\n[kms.aws]\nprovider = \"aws-kms\"\ntoken = \"x\"\nexternal_id = \"e\"\n");
    let errs = errors(&text);
    expect(
        &errs,
        "kms.aws.token",
        line(&text, "token = "),
        "does not apply to provider aws-kms",
    );
    expect(
        &errs,
        "kms.aws.region",
        line(&text, "[kms.aws]"),
        "needs `region`",
    );
    expect(
        &errs,
        "kms.aws.external_id",
        line(&text, "external_id"),
        "assume_role_arn",
    );

    let text = with(
        "\n[kms.v]\nprovider = \"vault-transit\"\naddress = \"not a url\"\nendpoint = \"http://x\"\n",
    );
    let errs = errors(&text);
    expect(&errs, "kms.v", line(&text, "[kms.v]"), "needs `token`");
    expect(
        &errs,
        "kms.v.address",
        line(&text, "not a url"),
        "not an http",
    );
    expect(
        &errs,
        "kms.v.endpoint",
        line(&text, "endpoint"),
        "uses `address`",
    );

    let text = with(
        "\n[kms.v]\nprovider = \"vault-transit\"\naddress = \"http://127.0.0.1:8200\"\nrole_id = \"r\"\n",
    );
    expect(
        &errors(&text),
        "kms.v.role_id",
        line(&text, "role_id"),
        "needs secret_id",
    );

    let text = with(
        "\n[kms.z]\nprovider = \"azure-keyvault\"\nclient_secret = \"s\"\nkey_file = \"k\"\ntimeout = \"0s\"\n",
    );
    let errs = errors(&text);
    expect(
        &errs,
        "kms.z.vault_url",
        line(&text, "[kms.z]"),
        "needs `vault_url`",
    );
    expect(
        &errs,
        "kms.z.client_id",
        line(&text, "[kms.z]"),
        "needs `client_id`",
    );
    expect(
        &errs,
        "kms.z.key_file",
        line(&text, "key_file = \"k\""),
        "is for local",
    );
    expect(&errs, "kms.z.timeout", line(&text, "0s"), "longer than 0s");

    let text = with(
        "\n[kms.g]\nprovider = \"gcp-kms\"\ncredentials_file = \"sa.json\"\nendpoint = \"http://127.0.0.1:9\"\nmax_retries = 0\n\n[kms.v]\nprovider = \"vault-transit\"\naddress = \"https://v:8200\"\nrole_id = \"r\"\nsecret_id = \"s\"\nnamespace = \"ns\"\nmount = \"kv/transit\"\n",
    );
    let c = parse_ok(&text);
    assert_eq!(c.kms["v"].transit_mount(), "kv/transit");
    assert_eq!(c.kms["g"].max_retries, 0);

    let text = with("\n[kms.x]\nprovider = \"hsm\"\n");
    expect(
        &errors(&text),
        "kms.x.provider",
        line(&text, "hsm"),
        "unknown variant",
    );
}

#[test]
fn interpolation() {
    let text = BASE
        .replace(
            "auth = \"trust\"",
            "auth = \"trust\"\nadmin_token = \"${BYOKPG_ADMIN_TOKEN}\"",
        )
        .replace(
            "key = \"acme-label\"",
            "key = \"label-$${LITERAL}-${PG_US_PASSWORD}\"",
        );
    let c = parse_ok(&text);
    assert_eq!(c.server.admin_token.unwrap().expose(), "admin-tok-123");
    assert_eq!(c.tenants["acme"].key, "label-${LITERAL}-us-pw");

    // Arrays and inline tables are interpolated too.
    let text = BASE.replace("tenants = [\"acme\"]", "tenants = [\"${TENANT}\"]");
    let env = HashMap::from([("TENANT", "acme")]);
    let c = parse_with_env(&text, Path::new(FILE), &|n| {
        env.get(n).map(|v| (*v).to_owned())
    })
    .unwrap();
    assert_eq!(c.users[0].tenants, ["acme"]);
}

#[test]
fn unset_variable_is_an_error_at_its_line() {
    let text = BASE
        .replace(
            "auth = \"trust\"",
            "auth = \"trust\"\nadmin_token = \"${NO_SUCH_VAR_XYZ}\"",
        )
        .replace(
            "tenants = [\"acme\"]",
            "tenants = [\"acme\",\n  \"${ALSO_MISSING}\"]",
        );
    let errs = errors(&text);
    expect(
        &errs,
        "server.admin_token",
        line(&text, "NO_SUCH_VAR_XYZ"),
        "NO_SUCH_VAR_XYZ is not set",
    );
    expect(
        &errs,
        "users[0].tenants[1]",
        line(&text, "ALSO_MISSING"),
        "ALSO_MISSING is not set",
    );
}

#[test]
fn interpolated_values_never_appear_in_messages() {
    let text = BASE.replace(
        "auth = \"trust\"",
        "auth = \"trust\"\nmax_client_connections = \"${NOT_A_NUMBER}\"\ntls_mode = \"${NOT_A_NUMBER}\"",
    );
    let errs = errors(&text);
    let all = render(&errs);
    assert!(!all.contains("sekrit-value-42"), "{all}");
    expect(
        &errs,
        "server.max_client_connections",
        line(&text, "max_client"),
        "invalid type: string, expected usize",
    );
    expect(
        &errs,
        "server.tls_mode",
        line(&text, "tls_mode"),
        "unknown variant `***`",
    );
    // A literal secret mistyped as a number is not echoed either.
    let text = BASE.replace("name = \"app\"", "name = \"app\"\npassword = 987654321");
    let errs = errors(&text);
    assert!(!render(&errs).contains("987654321"), "{}", render(&errs));
    expect(
        &errs,
        "users[0].password",
        line(&text, "987654321"),
        "quoted string",
    );
}

#[test]
fn all_problems_are_collected() {
    let text = BASE
        .replace("auth = \"trust\"", "auth = \"trust\"\nbogus = 1")
        .replace("region = \"us\"", "region = \"mars\"")
        .replace("tenants = [\"acme\"]", "tenants = []")
        .replace("email = \"deterministic\"", "email = \"nope\"");
    let errs = errors(&text);
    assert!(errs.len() >= 4, "{}", render(&errs));
    // Sorted by line.
    let lines: Vec<_> = errs.iter().map(|e| e.line.unwrap_or(0)).collect();
    assert!(lines.windows(2).all(|w| w[0] <= w[1]), "{lines:?}");
}

#[test]
fn debug_output_redacts_secrets() {
    let c = parse_ok(SPEC_EXAMPLE);
    let dbg = format!("{c:?}");
    for secret in env_map().values() {
        assert!(!dbg.contains(secret), "Debug shows {secret}");
    }
    assert!(dbg.contains("Secret(***)"));
    assert_eq!(format!("{:?}", Secret::new("x")), "Secret(***)");
    assert!(Secret::new("tok").ct_eq(b"tok"));
    assert!(!Secret::new("tok").ct_eq(b"tak"));
    assert!(!Secret::new("tok").ct_eq(b"to"));
}

#[test]
fn display_format_and_paths() {
    let e = ConfigError {
        file: PathBuf::from("config/byokpg.toml"),
        line: Some(12),
        key: "tenants.acme.region".to_owned(),
        message: "unknown region `x`".to_owned(),
    };
    assert_eq!(
        e.to_string(),
        "config/byokpg.toml:12: tenants.acme.region: unknown region `x`"
    );
    let e = ConfigError { line: None, ..e };
    assert!(e.to_string().starts_with("config/byokpg.toml:1: "));

    assert_eq!(
        resolve_path(Some(Path::new("x.toml"))),
        PathBuf::from("x.toml")
    );
    let errs = load(Path::new("/nonexistent/byokpg.toml")).unwrap_err();
    assert_eq!(errs[0].key, "(file)");
    assert!(errs[0].message.contains("cannot read"));
}

#[test]
fn example_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/byokpg.example.toml");
    let text = std::fs::read_to_string(&path).expect("config/byokpg.example.toml exists");
    let c = parse_with_env(&text, &path, &|_| None)
        .unwrap_or_else(|e| panic!("example invalid:\n{}", render(&e)));
    assert_eq!(c.regions.len(), 3);
    assert_eq!(c.regions["eu"].dsn.dbname.as_deref(), Some("byokpg_eu"));
}
