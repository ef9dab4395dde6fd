//! Query cancellation through the proxy: a `CancelRequest` (tokio-postgres,
//! psql's Ctrl-C), `pg_cancel_backend` from another connection and
//! `statement_timeout`. The waits below only bound a hang; the assertions
//! are on SQLSTATEs, never on durations.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Proxy, assert_success, expect_sqlstate, unique_name};
use tokio_postgres::{Client, NoTls};

/// Bound on how long a cancelled 30 s sleep may take to come back.
const HANG: Duration = Duration::from_secs(20);

/// Waits until a statement containing `marker` is running in `db`
/// (watched directly on `PostgreSQL`, not through the proxy).
async fn wait_active(db: &str, marker: &str) {
    let direct = common::direct_client_db(db).await;
    let deadline = Instant::now() + HANG;
    loop {
        let n: i64 = direct
            .query_one(
                "select count(*) from pg_stat_activity where state = 'active' \
                 and pid <> pg_backend_pid() and query like '%' || $1 || '%'",
                &[&marker],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "statement {marker} never became active"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn is_active(db: &str, marker: &str) -> bool {
    let direct = common::direct_client_db(db).await;
    let n: i64 = direct
        .query_one(
            "select count(*) from pg_stat_activity where state = 'active' \
             and pid <> pg_backend_pid() and query like '%' || $1 || '%'",
            &[&marker],
        )
        .await
        .unwrap()
        .get(0);
    n > 0
}

type Sleeping = tokio::task::JoinHandle<(
    Client,
    Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
)>;

/// Starts `select pg_sleep(30)` tagged with a unique marker on `client`.
fn start_sleep(client: Client) -> (String, Sleeping) {
    let marker = unique_name("sleep");
    let sql = format!("select pg_sleep(30), '{marker}'");
    let handle = tokio::spawn(async move {
        let res = client.simple_query(&sql).await;
        (client, res)
    });
    (marker, handle)
}

async fn finish(
    handle: Sleeping,
) -> (
    Client,
    Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>,
) {
    tokio::time::timeout(HANG, handle)
        .await
        .expect("the sleeping query was not cancelled")
        .unwrap()
}

#[tokio::test]
async fn cancel_request_through_the_proxy_reaches_the_right_backend() {
    let proxy = Proxy::start();
    let db = proxy.region_database("us");
    let a = proxy.connect("globex_app", None).await;
    let b = proxy.connect("globex_app", None).await;
    let token_a = a.cancel_token();
    let token_b = b.cancel_token();
    let (marker_a, sleep_a) = start_sleep(a);
    let (marker_b, sleep_b) = start_sleep(b);
    wait_active(&db, &marker_a).await;
    wait_active(&db, &marker_b).await;

    // The token names the proxy's host and port: the CancelRequest goes there.
    token_a.cancel_query(NoTls).await.unwrap();
    let (a, res) = finish(sleep_a).await;
    expect_sqlstate(res, "57014");
    assert!(
        is_active(&db, &marker_b).await,
        "cancelling A also stopped B"
    );

    token_b.cancel_query(NoTls).await.unwrap();
    let (b, res) = finish(sleep_b).await;
    expect_sqlstate(res, "57014");
    // Both sessions stay usable.
    for c in [a, b] {
        let row = c.query_one("select 'alive'::text", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "alive");
    }
}

#[tokio::test]
async fn pg_cancel_backend_from_a_second_connection() {
    let proxy = Proxy::start();
    let db = proxy.region_database("eu");
    let victim = proxy.connect("acme_app", None).await;
    // Through the proxy this is the real backend's pid.
    let pid: i32 = victim
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (marker, sleeping) = start_sleep(victim);
    wait_active(&db, &marker).await;
    let other = proxy.connect("acme_app", None).await;
    let cancelled: bool = other
        .query_one("select pg_cancel_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(cancelled, "pg_cancel_backend({pid}) found no backend");
    let (victim, res) = finish(sleeping).await;
    expect_sqlstate(res, "57014");
    victim.simple_query("select 1").await.unwrap();
}

#[test]
fn psql_statement_timeout_still_applies() {
    let proxy = Proxy::start();
    let dsn = proxy.dsn("globex_app", &proxy.password("globex_app"), None);
    let out = proxy.psql(
        &dsn,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "set statement_timeout = '300ms'",
            "-c",
            "select pg_sleep(20)",
            "-c",
            "reset statement_timeout",
            "-c",
            "select 'alive after timeout'",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("canceling statement due to statement timeout"),
        "stderr: {stderr}"
    );
    assert!(stdout.contains("alive after timeout"), "stdout: {stdout}");
}

#[tokio::test]
async fn psql_ctrl_c_cancels_through_the_proxy() {
    let proxy = Proxy::start();
    let db = proxy.region_database("us");
    let dsn = proxy.dsn("globex_app", &proxy.password("globex_app"), None);
    let marker = unique_name("psql_sleep");
    let child = Command::new("psql")
        .args(["-X", "-q", "-At", "-d", &dsn, "-c"])
        .arg(format!("select pg_sleep(30), '{marker}'"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_active(&db, &marker).await;
    // psql answers SIGINT by sending a CancelRequest to the server it knows.
    let kill = common::run(Command::new("kill").args(["-INT", &child.id().to_string()]));
    assert_success("kill -INT psql", &kill);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("canceling statement due to user request"),
        "psql stderr: {stderr}"
    );
}
