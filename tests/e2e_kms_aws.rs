//! The `aws-kms` provider through the real proxy.
//!
//! - Against `moto_server` (from the repo's `.venv`, started per test on a
//!   free port): a protected column written and read back through byokpg,
//!   stored as ciphertext, with the tenant's DEK wrapped by the moto key
//!   under byokpg's encryption context; and cross-account access through
//!   STS AssumeRole with an external id.
//! - Against a loopback endpoint answering KMS's real `AccessDeniedException`
//!   body, and a closed port: the client gets `58000` naming the cause and
//!   `58030`, while another tenant keeps working. (moto does not enforce
//!   disabled keys or revoked grants; the other error bodies are covered by
//!   the unit tests in src/kms/aws/tests.rs.)
mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Proxy, ProxyBuilder, create_in_regions, db_message, direct_client, expect_sqlstate, free_port,
    repo_root, unique_name,
};

const REGION: &str = "eu";
const AWS_REGION: &str = "eu-west-1";
const USER: &str = "aws_app";
const PASSWORD: &str = "aws_app-pw";
/// The account moto puts keys made with plain test credentials in.
const OTHER_ACCOUNT_ROLE: &str = "arn:aws:iam::111111111111:role/byokpg-kms";
const EXTERNAL_ID: &str = "byokpg-e2e-external-id";
/// What byokpg binds into every wrapping (src/kms/aws.rs).
const CONTEXT: (&str, &str) = ("byokpg", "tenant-dek-v1");

/// boto3 helper run in the venv against moto: `create`, `create-in ROLE EXT`,
/// `decrypt ARN HEX [ROLE EXT] [nocontext]`.
const PY: &str = r#"
import sys, boto3
ep, action, args = sys.argv[1], sys.argv[2], sys.argv[3:]
def kms(role=None, ext=None):
    kw = {}
    if role:
        sts = boto3.client("sts", endpoint_url=ep, region_name="eu-west-1")
        c = sts.assume_role(RoleArn=role, RoleSessionName="e2e-setup", ExternalId=ext)["Credentials"]
        kw = dict(aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                  aws_session_token=c["SessionToken"])
    return boto3.client("kms", endpoint_url=ep, region_name="eu-west-1", **kw)
if action == "create":
    print(kms().create_key(Description="byokpg e2e")["KeyMetadata"]["Arn"])
elif action == "create-in":
    print(kms(args[0], args[1]).create_key(Description="byokpg e2e")["KeyMetadata"]["Arn"])
elif action == "decrypt":
    arn, blob = args[0], bytes.fromhex(args[1])
    client = kms(args[2], args[3]) if len(args) > 3 else kms()
    ctx = {} if "nocontext" in args else {"byokpg": "tenant-dek-v1"}
    try:
        out = client.decrypt(KeyId=arn, CiphertextBlob=blob, EncryptionContext=ctx)
        print("plaintext", len(out["Plaintext"]))
    except client.exceptions.InvalidCiphertextException:
        print("InvalidCiphertextException")
"#;

/// A `moto_server` on a free port, killed on drop.
struct Moto {
    child: Child,
    url: String,
}

impl Moto {
    fn start() -> Self {
        let bin = repo_root().join(".venv/bin/moto_server");
        assert!(
            bin.exists(),
            "{} is missing: run `bash scripts/test.sh` (it installs moto[server] into .venv)",
            bin.display()
        );
        let port = free_port();
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let moto = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_mins(1);
        let addr = ("127.0.0.1", port);
        while TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto_server did not listen on {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    /// Runs [`PY`] with `args`; returns its stdout, trimmed.
    fn py(&self, args: &[&str]) -> String {
        let python = repo_root().join(".venv/bin/python");
        let out = Command::new(&python)
            .arg("-c")
            .arg(PY)
            .arg(&self.url)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (run `bash scripts/test.sh`)",
                    python.display()
                )
            });
        assert!(
            out.status.success(),
            "boto3 helper {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The `[kms.NAME]` body for this moto; `extra` adds lines.
    fn kms_section(&self, extra: &str) -> String {
        format!(
            "provider = \"aws-kms\"\nregion = \"{AWS_REGION}\"\nendpoint = \"{}\"\ntimeout = \"20s\"\n{extra}",
            self.url
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn policy(t: &str) -> String {
    format!(
        "[[table]]\nname = \"{t}\"\ntenant_column = \"tenant_id\"\n[table.columns]\n\
         email = \"deterministic\"\nsecret = \"randomized\"\n"
    )
}

/// Creates the table in region eu; the proxy builder gets its policy.
async fn with_table(builder: ProxyBuilder) -> (ProxyBuilder, String) {
    let table = unique_name("awst");
    let ddl = format!(
        "create table {table} (id serial primary key, tenant_id text, email text, secret text)"
    );
    create_in_regions(&[REGION], &ddl).await;
    (builder.policy_table(&policy(&table)), table)
}

/// Base credentials of byokpg's own identity (moto accepts any).
fn aws_env(b: ProxyBuilder) -> ProxyBuilder {
    b.env("AWS_ACCESS_KEY_ID", "byokpg-e2e")
        .env("AWS_SECRET_ACCESS_KEY", "byokpg-e2e-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// Writes one row as `tenant` through the proxy and reads it back.
async fn round_trip(proxy: &Proxy, tenant: &str, table: &str, marker: &str) {
    let c = proxy.connect(USER, Some(tenant)).await;
    let email = format!("{marker}@example.com");
    let secret = format!("{marker} secret");
    c.execute(
        &format!("insert into {table} (tenant_id, email, secret) values ($1, $2, $3)"),
        &[&tenant, &email, &secret],
    )
    .await
    .unwrap_or_else(|e| panic!("insert as {tenant}: {e:?}\n{}", proxy.log()));
    let row = c
        .query_one(
            &format!("select email, secret from {table} where email = $1"),
            &[&email],
        )
        .await
        .expect("read back through the proxy");
    assert_eq!(row.get::<_, String>(0), email);
    assert_eq!(row.get::<_, String>(1), secret);
    let direct = direct_client(REGION).await;
    let stored = direct
        .query(
            &format!("select email, secret from {table} where tenant_id = $1"),
            &[&tenant],
        )
        .await
        .expect("rows in the region database");
    assert!(
        !stored.is_empty(),
        "no row of {tenant} in the region database"
    );
    for row in &stored {
        for i in 0..2 {
            let v: String = row.get(i);
            assert!(!v.contains(marker), "column {i} stored in plaintext: {v}");
        }
    }
}

/// The tenant's active wrapped DEK and the key it names.
async fn wrapped_dek(tenant: &str) -> (String, String) {
    let row = direct_client(REGION)
        .await
        .query_one(
            "select key_ref, wrapped from byokpg.tenant_keys where tenant = $1 and status = 'active'",
            &[&tenant],
        )
        .await
        .expect("byokpg stored a wrapped DEK");
    (row.get(0), hex::encode(row.get::<_, Vec<u8>>(1)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_column_round_trip_with_a_moto_key() {
    let moto = Moto::start();
    let arn = moto.py(&["create"]);
    assert!(arn.starts_with("arn:aws:kms:eu-west-1:"), "{arn}");
    let tenant = unique_name("aws");
    let (builder, table) = with_table(Proxy::builder()).await;
    let proxy = aws_env(builder)
        .user(USER, PASSWORD, &[&tenant])
        .kms("aws", &moto.kms_section(""))
        .tenant_on(&tenant, REGION, "aws", &arn, "dek_cache_ttl = \"2s\"")
        .start();
    proxy.require_proxy();
    round_trip(&proxy, &tenant, &table, &unique_name("pt")).await;
    // Past the TTL the DEK is unwrapped again (Decrypt) and still reads.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    round_trip(&proxy, &tenant, &table, &unique_name("pt")).await;

    // What byokpg stored is a real ciphertext of that key, bound to the
    // documented encryption context.
    let (key_ref, wrapped) = wrapped_dek(&tenant).await;
    assert_eq!(key_ref, arn);
    assert_eq!(moto.py(&["decrypt", &arn, &wrapped]), "plaintext 32");
    assert_eq!(
        moto.py(&["decrypt", &arn, &wrapped, "nocontext"]),
        "InvalidCiphertextException",
        "the wrapping is bound to {CONTEXT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assume_role_with_external_id_reaches_a_key_in_another_account() {
    let moto = Moto::start();
    let arn = moto.py(&["create-in", OTHER_ACCOUNT_ROLE, EXTERNAL_ID]);
    assert!(
        arn.starts_with("arn:aws:kms:eu-west-1:111111111111:key/"),
        "{arn}"
    );
    let (cross, own) = (unique_name("awsx"), unique_name("awso"));
    let (builder, table) = with_table(Proxy::builder()).await;
    let role =
        format!("assume_role_arn = \"{OTHER_ACCOUNT_ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"");
    let proxy = aws_env(builder)
        .env("AWS_ENDPOINT_URL_STS", &moto.url)
        .user(USER, PASSWORD, &[&cross, &own])
        .kms("aws_cross", &moto.kms_section(&role))
        .kms("aws_own", &moto.kms_section(""))
        .tenant_on(&cross, REGION, "aws_cross", &arn, "")
        .tenant_on(&own, REGION, "aws_own", &arn, "")
        .start();
    proxy.require_proxy();
    round_trip(&proxy, &cross, &table, &unique_name("pt")).await;
    let (_, wrapped) = wrapped_dek(&cross).await;
    assert_eq!(
        moto.py(&["decrypt", &arn, &wrapped, OTHER_ACCOUNT_ROLE, EXTERNAL_ID]),
        "plaintext 32"
    );

    // byokpg's own identity, without the role, cannot see the key at all.
    let c = proxy.connect(USER, Some(&own)).await;
    let e = expect_sqlstate(
        c.execute(
            &format!("insert into {table} (tenant_id, email) values ($1, 'x@example.com')"),
            &[&own],
        )
        .await,
        "58000",
    );
    let msg = db_message(&e);
    assert!(
        msg.contains(&format!("the key of tenant {own} is unavailable"))
            && msg.contains("NotFoundException"),
        "{msg}"
    );
}

/// A KMS endpoint that refuses every call the way AWS does when the key
/// policy or grant no longer allows byokpg's identity.
async fn denying_kms() -> String {
    async fn deny() -> axum::response::Response {
        axum::response::Response::builder()
            .status(400)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amzn-errortype", "AccessDeniedException")
            .body(axum::body::Body::from(
                r#"{"__type":"AccessDeniedException","Message":"User: arn:aws:iam::444455556666:user/byokpg is not authorized to perform: kms:GenerateDataKey on this resource because no resource-based policy allows the kms:GenerateDataKey action"}"#,
            ))
            .expect("response")
    }
    let app = axum::Router::new().route("/", axum::routing::post(deny));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_denied_is_58000_and_a_closed_port_58030() {
    let denied_url = denying_kms().await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    let (denied, down) = (unique_name("awsd"), unique_name("awsu"));
    // Not a default tenant: other tests may have keyed those differently
    // in the shared region database.
    let fine = unique_name("awsl");
    let (builder, table) = with_table(Proxy::builder()).await;
    let section = |url: &str| {
        format!(
            "provider = \"aws-kms\"\nregion = \"{AWS_REGION}\"\nendpoint = \"{url}\"\ntimeout = \"2s\"\nmax_retries = 2"
        )
    };
    let key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let proxy = aws_env(builder)
        .user(USER, PASSWORD, &[&denied, &down, &fine])
        .kms("aws_denied", &section(&denied_url))
        .kms("aws_down", &section(&closed))
        .tenant_on(&denied, REGION, "aws_denied", key, "")
        .tenant_on(&down, REGION, "aws_down", key, "")
        .tenant_on(&fine, REGION, "dev", "fine-kek", "")
        .start();
    proxy.require_proxy();
    let insert = format!("insert into {table} (tenant_id, email) values ($1, 'x@example.com')");

    let c = proxy.connect(USER, Some(&denied)).await;
    let e = expect_sqlstate(c.execute(&insert, &[&denied]).await, "58000");
    let msg = db_message(&e);
    assert!(
        msg.starts_with(&format!(
            "byokpg: the key of tenant {denied} is unavailable: access denied by the KMS"
        )) && msg.contains(
            "GenerateDataKey: AccessDeniedException: User: arn:aws:iam::444455556666:user/byokpg"
        ),
        "{msg}"
    );

    let c = proxy.connect(USER, Some(&down)).await;
    let start = Instant::now();
    let e = expect_sqlstate(c.execute(&insert, &[&down]).await, "58030");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "58030 took {took:?} with timeout = 2s"
    );
    assert!(
        db_message(&e).contains("the KMS is unreachable"),
        "{}",
        db_message(&e)
    );

    // Another tenant (on the harness's local KMS) is not affected.
    round_trip(&proxy, &fine, &table, &unique_name("pt")).await;
    assert!(
        !proxy.log().contains("byokpg-e2e-secret"),
        "a secret reached the log"
    );
}
