//! Process lifecycle through the real binary: SIGHUP / admin reload, SIGTERM
//! drain, the connection cap, the idle timeout and the admin endpoints.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{ADMIN_TOKEN, Proxy, direct_client, sqlstate, unique_name};

/// Wait until the proxy's log contains `needle` (bounded).
fn wait_for_log(proxy: &Proxy, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proxy.log().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "log never said {needle:?}:\n{}",
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn plain_table(proxy: &Proxy, tenant: &str, prefix: &str) -> String {
    let table = unique_name(prefix);
    let direct = direct_client(&proxy.region_of(tenant)).await;
    direct
        .batch_execute(&format!("create table {table} (id int, secret text)"))
        .await
        .unwrap();
    table
}

#[tokio::test]
async fn sighup_applies_a_valid_policy_and_keeps_the_old_one_on_a_bad_file() {
    let proxy = Proxy::start();
    proxy.require_proxy();
    let table = plain_table(&proxy, "acme", "reload").await;
    let client = proxy.connect("acme_app", None).await;
    client
        .batch_execute(&format!("insert into {table} values (1, 'a')"))
        .await
        .unwrap();

    let good = format!(
        "{}\n[[table]]\nname = \"{table}\"\n[table.columns]\nsecret = \"randomized\"\n",
        proxy.config()
    );
    fs::write(&proxy.config_path, &good).unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "configuration reloaded");
    // Same connection, not dropped; the new policy applies to its next statement.
    client.simple_query("select 1").await.unwrap();
    let e = client
        .simple_query(&format!("select * from {table} order by secret"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "{e}");

    fs::write(&proxy.config_path, "[server]\nno_such_key = 1\n").unwrap();
    proxy.signal("HUP");
    wait_for_log(&proxy, "reload refused");
    client.simple_query("select 1").await.unwrap();
    let e = client
        .simple_query(&format!("select * from {table} order by secret"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("0A000"), "old policy stays");
    let fresh = proxy.connect("acme_app", None).await;
    fresh.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn admin_reload_needs_the_bearer_token() {
    let proxy = Proxy::start();
    proxy.require_proxy();
    assert_eq!(proxy.admin_post("/admin/reload", None).0, 401);
    assert_eq!(proxy.admin_post("/admin/reload", Some("wrong")).0, 403);
    assert_eq!(proxy.admin_post("/admin/reload", Some(ADMIN_TOKEN)).0, 200);
    let good = proxy.config();
    fs::write(&proxy.config_path, "[server]\nno_such_key = 1\n").unwrap();
    let (code, body) = proxy.admin_post("/admin/reload", Some(ADMIN_TOKEN));
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("no_such_key"), "{body}");
    fs::write(&proxy.config_path, good).unwrap();
    let client = proxy.connect("acme_app", None).await;
    client.simple_query("select 1").await.unwrap();
}

#[tokio::test]
async fn sigterm_lets_open_transactions_finish_and_exits_zero() {
    let mut proxy = Proxy::builder()
        .server_option("drain_timeout = \"20s\"")
        .start();
    proxy.require_proxy();
    let table = plain_table(&proxy, "acme", "drain").await;
    let busy = proxy.connect("acme_app", None).await;
    let idle = proxy.connect("acme_app", None).await;
    busy.batch_execute(&format!("begin; insert into {table} values (1, 'x')"))
        .await
        .unwrap();

    proxy.signal("TERM");
    wait_for_log(&proxy, "draining");
    // New connections are refused; the idle session is closed.
    assert!(proxy.try_connect("acme_app", None).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(idle.simple_query("select 1").await.is_err());
    // The open transaction finishes and commits.
    busy.batch_execute(&format!("insert into {table} values (2, 'y'); commit"))
        .await
        .unwrap();
    let direct = direct_client(&proxy.region_of("acme")).await;
    let n: i64 = direct
        .query_one(&format!("select count(*) from {table}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("byokpg did not exit after its last session ended");
    assert!(status.success(), "exit status {status}");
}

#[tokio::test]
async fn connections_beyond_the_cap_get_53300_and_the_slot_is_reused() {
    let proxy = Proxy::builder()
        .server_option("max_client_connections = 2")
        .start();
    proxy.require_proxy();
    let a = proxy.connect("acme_app", None).await;
    let _b = proxy.connect("acme_app", None).await;
    let e = proxy.try_connect("acme_app", None).await.err().unwrap();
    assert_eq!(sqlstate(&e).as_deref(), Some("53300"), "{e}");
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match proxy.try_connect("acme_app", None).await {
            Ok(c) => {
                c.simple_query("select 1").await.unwrap();
                break;
            }
            Err(e) => assert!(Instant::now() < deadline, "slot never freed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn idle_sessions_are_closed_but_open_transactions_are_not() {
    let proxy = Proxy::builder()
        .server_option("client_idle_timeout = \"1s\"")
        .start();
    proxy.require_proxy();
    let idle = proxy.connect("acme_app", None).await;
    let in_tx = proxy.connect("acme_app", None).await;
    in_tx.batch_execute("begin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // The FATAL 57P05 arrives unprompted; the client sees it or a closed connection.
    let e = idle.simple_query("select 1").await.unwrap_err();
    assert!(
        sqlstate(&e).as_deref() == Some("57P05") || e.is_closed(),
        "unexpected error: {e}"
    );
    in_tx.simple_query("select 1").await.unwrap();
    in_tx.batch_execute("commit").await.unwrap();
}

#[tokio::test]
async fn admin_endpoints_report_health_readiness_and_metrics() {
    let proxy = Proxy::start();
    proxy.require_proxy();
    let client = proxy.connect("acme_app", None).await;
    client.simple_query("select 1").await.unwrap();
    assert_eq!(proxy.admin_get("/healthz").0, 200);
    let (code, body) = proxy.admin_get("/readyz");
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = proxy.admin_get("/metrics");
    assert_eq!(code, 200);
    assert!(
        !proxy.log().contains('\u{1b}'),
        "colour codes in a log that is not a terminal:\n{}",
        proxy.log()
    );
    for name in [
        "byokpg_connections_current",
        "byokpg_connections_total",
        "byokpg_statements_total{kind=\"passthrough\"}",
        "byokpg_bytes_relayed_total{direction=\"client_to_server\"}",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn readyz_names_an_unreachable_region() {
    let dead = format!(
        "postgres://postgres@127.0.0.1:{}/x?sslmode=disable",
        common::free_port()
    );
    let proxy = Proxy::builder().region_dsn("apac", &dead).start();
    proxy.require_proxy();
    let (code, body) = proxy.admin_get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("apac"), "{body}");
}

#[test]
fn check_command_reports_a_valid_config_and_file_line_key_problems() {
    let proxy = Proxy::builder().trust().start();
    let bin = env!("CARGO_BIN_EXE_byokpg");
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&proxy.config_path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("is valid"), "{text}");

    let bad = proxy.dir().join("bad.toml");
    fs::write(
        &bad,
        proxy
            .config()
            .replace("[server]", "[server]\nno_such_key = 1"),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("bad.toml:2: server.no_such_key:"), "{text}");
}
