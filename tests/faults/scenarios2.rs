//! Faults on byokpg itself: reloads, abusive clients, SIGTERM.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::block_in_place;

use super::fixture::{Fx, USER};
use super::probe::{fd_count, rss_kib, startup_outcome, startup_packet};
use super::report::{Row, split_errors};
use super::scenarios::wait_for;
use super::workload::Workload;
use crate::common::create_in_regions;

const LIMIT: Duration = Duration::from_mins(1);

fn log_count(fx: &Fx, needle: &str) -> usize {
    fx.proxy.log().matches(needle).count()
}

/// A valid changed policy (a new protected table), then an invalid file:
/// the first applies, the second is refused and logged, nobody drops.
pub async fn sighup(fx: &Fx, work: &Workload) -> Row {
    let before = work.error_counts();
    let connects = work.connect_counts();
    let valid = reload_valid_policy(fx).await;
    std::fs::write(
        &fx.proxy.config_path,
        format!("{valid}\n[[table]]\nname = 42\n"),
    )
    .expect("write bad config");
    let n = log_count(fx, "configuration reload refused");
    fx.proxy.signal("HUP");
    wait_for("the refusal in the log", LIMIT, || {
        log_count(fx, "configuration reload refused") > n
    })
    .await;
    // The CLI checks read the same file: put the valid one back.
    std::fs::write(&fx.proxy.config_path, &valid).expect("restore config");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (hit, other) = split_errors(work, &before, |_, _| false);
    assert!(other.is_empty(), "errors during reloads: {other:?}");
    assert_eq!(
        work.connect_counts(),
        connects,
        "a connection was dropped by a reload"
    );
    Row {
        fault: "SIGHUP valid, then invalid".into(),
        affected: hit,
        unaffected: other,
        recovery: None,
        data: fx.check_data(work, true).await,
    }
}

/// Protects a new table by SIGHUP and checks a value written through
/// byokpg lands as ciphertext; returns the (valid) config text.
async fn reload_valid_policy(fx: &Fx) -> String {
    let hup = format!("{}_hup", fx.tables.enc);
    let ddl = format!("create table {hup} (id serial primary key, tenant_id text, note text)");
    create_in_regions(&["us", "eu"], &ddl).await;
    fx.direct(&fx.reg)
        .await
        .batch_execute(&ddl)
        .await
        .expect("hup table");
    let valid = format!(
        "{}\n[[table]]\nname = \"{hup}\"\ntenant_column = \"tenant_id\"\n[table.columns]\nnote = \"randomized\"\n",
        fx.proxy.config()
    );
    std::fs::write(&fx.proxy.config_path, &valid).expect("write config");
    let n = log_count(fx, "configuration reloaded");
    fx.proxy.signal("HUP");
    wait_for("the valid reload", LIMIT, || {
        log_count(fx, "configuration reloaded") > n
    })
    .await;
    let c = fx.through(&fx.rev).await;
    let value = format!("{}-hup", fx.marker);
    c.execute(&format!("insert into {hup} (note) values ($1)"), &[&value])
        .await
        .expect("insert into the newly protected table");
    let sql =
        format!("select count(*), count(*) filter (where note like '%' || $1 || '%') from {hup}");
    let row = fx
        .direct(&fx.rev)
        .await
        .query_one(&sql, &[&fx.marker])
        .await
        .expect("scan");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (1, 0),
        "new policy not applied"
    );
    valid
}

/// Clients that vanish, slowloris startups, fillers up to the cap and a
/// burst of 1,000 attempts beyond it; then fd count and RSS must return.
pub async fn abuse(fx: &Fx, work: &Workload) -> Row {
    let pid = fx.proxy.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fd0, rss0) = (fd_count(pid), rss_kib(pid));
    let before = work.error_counts();
    let connects = work.connect_counts();
    let lone = tokio::spawn(closed_by_server(fx.proxy.port));
    vanish(fx).await;
    let slow = slowloris(fx.proxy.port, 30).await;
    let fillers = fill_cap(fx, work.workers.len()).await;
    let outcomes = burst(fx.proxy.port, 1000, 200).await;
    assert!(
        super::scenarios::only(&outcomes, &["53300", "28000", "28P01"]),
        "burst outcomes: {outcomes:?}"
    );
    assert!(
        outcomes.get("53300").copied().unwrap_or(0) >= 900,
        "{outcomes:?}"
    );
    drop(slow);
    drop(fillers);
    let back = Instant::now();
    let tol_fd = 10;
    let tol_rss = 48 * 1024;
    wait_for("fd count and RSS back to baseline", LIMIT, || {
        fd_count(pid) <= fd0 + tol_fd && rss_kib(pid) <= rss0 + tol_rss
    })
    .await;
    let recovery = back.elapsed();
    // A slowloris left alone is closed by byokpg's startup timeout (15 s).
    let lone = lone.await.expect("slowloris task");
    let lone = lone.expect("byokpg never closed a half-sent startup");
    let (fd1, rss1) = (fd_count(pid), rss_kib(pid));
    assert!(fd1 <= fd0 + tol_fd, "fds {fd0} -> {fd1}");
    let (_, other) = split_errors(work, &before, |_, _| false);
    assert!(other.is_empty(), "workers saw errors: {other:?}");
    assert_eq!(
        work.connect_counts(),
        connects,
        "a worker lost its connection"
    );
    Row {
        fault: "vanish+slowloris+1000 burst over cap".into(),
        affected: outcomes,
        unaffected: other,
        recovery: Some(recovery),
        data: format!(
            "fd {fd0}->{fd1}, RSS {}->{} MiB, lone slowloris closed after {}s; {}",
            rss0 / 1024,
            rss1 / 1024,
            lone.as_secs(),
            fx.check_data(work, true).await
        ),
    }
}

/// 50 clients connect and close at once; 50 send a full startup and close
/// without reading the answer.
async fn vanish(fx: &Fx) {
    let packet = startup_packet(USER, Some(&fx.reg));
    let mut tasks = Vec::new();
    for i in 0..100 {
        let port = fx.proxy.port;
        let packet = packet.clone();
        tasks.push(tokio::spawn(async move {
            if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                && i % 2 == 1
            {
                let _ = s.write_all(&packet).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Sends 6 bytes of a startup packet, then waits (up to 40 s) for byokpg
/// to close the socket; how long that took.
async fn closed_by_server(port: u16) -> Option<Duration> {
    use tokio::io::AsyncReadExt;
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(&startup_packet(USER, None)[..6]).await.ok()?;
    let mut buf = [0u8; 512];
    let read_to_end = async {
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(40), read_to_end)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Sockets that send 6 bytes of a startup packet and then nothing.
async fn slowloris(port: u16, n: usize) -> Vec<tokio::net::TcpStream> {
    let packet = startup_packet(USER, None);
    let mut out = Vec::new();
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("slowloris connect");
        s.write_all(&packet[..6]).await.expect("partial startup");
        out.push(s);
    }
    out
}

/// Opens real sessions until the cap refuses (53300): the cap is full.
async fn fill_cap(fx: &Fx, workers: usize) -> Vec<tokio_postgres::Client> {
    let mut out = Vec::new();
    let deadline = Instant::now() + LIMIT;
    while workers + out.len() < fx.cap {
        match fx.proxy.try_connect(USER, Some(&fx.reg)).await {
            Ok(c) => out.push(c),
            Err(e) => {
                let code = crate::common::sqlstate(&e);
                assert_eq!(code.as_deref(), Some("53300"), "filler: {e:?}");
                assert!(
                    Instant::now() < deadline,
                    "cap never had room for the fillers"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    out
}

/// `n` startups of an unknown user, `par` at a time; outcome classes.
async fn burst(port: u16, n: usize, par: usize) -> std::collections::BTreeMap<String, usize> {
    let packet = std::sync::Arc::new(startup_packet("nobody", None));
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(par));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (packet, sem) = (packet.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await.expect("semaphore");
            startup_outcome(port, &packet).await
        }));
    }
    let mut out = std::collections::BTreeMap::new();
    for t in tasks {
        *out.entry(t.await.expect("burst task")).or_insert(0) += 1;
    }
    out
}

/// SIGTERM under load: an open transaction commits, new connections are
/// refused, byokpg exits 0 within the drain timeout.
pub async fn sigterm(fx: &mut Fx, work: &mut Workload) -> Row {
    let before = work.error_counts();
    let tx = open_transaction(fx).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t0 = Instant::now();
    fx.proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let refused = fx.proxy.try_connect(USER, Some(&fx.rev)).await.is_err();
    assert!(refused, "a new connection was accepted after SIGTERM");
    work.stop().await;
    let id = tx
        .await
        .expect("tx task")
        .expect("the in-flight transaction commits");
    let status = block_in_place(|| fx.proxy.wait_exit(Duration::from_secs(30)));
    let took = t0.elapsed();
    let status = status.expect("byokpg exits within the drain timeout");
    assert!(status.success(), "exit status {status}");
    assert!(
        took < Duration::from_secs(20),
        "exit took {took:?}, drain timeout is 20 s"
    );
    assert!(
        fx.proxy.log().contains("all sessions finished"),
        "drain did not finish by itself"
    );
    let d = fx.direct(&fx.rev).await;
    let sql = format!("select count(*) from {} where id = $1", fx.tables.enc);
    let n: i64 = d.query_one(&sql, &[&id]).await.expect("count").get(0);
    assert_eq!(
        n, 1,
        "the transaction in flight at SIGTERM was not committed"
    );
    // Every client is affected: idle sessions are ended with FATAL 57P01
    // (docs/ARCHITECTURE.md), and reconnects are refused. Nothing else —
    // no statement failed half-way.
    let (mut affected, other) = split_errors(work, &before, |_, _| true);
    assert!(
        super::scenarios::only(&affected, &["57P01", "closed", "io"]),
        "clients saw more than sessions ending: {affected:?}"
    );
    affected.insert("tx-committed".to_owned(), 1);
    affected.insert("new-conn-refused".to_owned(), 1);
    Row {
        fault: "SIGTERM (tx in flight)".into(),
        affected,
        unaffected: other,
        recovery: Some(took),
        data: format!("exit 0; {}", fx.check_data(work, false).await),
    }
}

/// A transaction that inserts, then sleeps 3 s, then commits: in flight
/// when SIGTERM arrives one second later. Yields the row's id.
async fn open_transaction(fx: &Fx) -> tokio::task::JoinHandle<Result<i32, tokio_postgres::Error>> {
    let c = fx.through(&fx.rev).await;
    let enc = fx.tables.enc.clone();
    let (secret, email) = (
        format!("{}-term", fx.marker),
        format!("{}-term@x", fx.marker),
    );
    tokio::spawn(async move {
        c.batch_execute("begin").await?;
        let sql = format!("insert into {enc} (secret, email) values ($1, $2) returning id");
        let id: i32 = c.query_one(&sql, &[&secret, &email]).await?.get(0);
        c.simple_query("select pg_sleep(3)").await?;
        c.batch_execute("commit").await?;
        Ok(id)
    })
}
