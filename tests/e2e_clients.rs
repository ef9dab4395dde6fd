//! Real clients through the proxy: psql, tokio-postgres, psycopg 3 and
//! node-postgres. Tables used here are not in the policy, so the proxy only
//! relays; one test checks that a policy table is refused (fail closed).
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::{Proxy, assert_success, expect_sqlstate, unique_name};
use futures_util::{SinkExt, StreamExt, pin_mut};
use tokio_postgres::types::{FromSql, Type};

/// A user authenticating with SCRAM (see the psql/psycopg/node tests).
const SCRAM_USER: &str = "acme_app";

fn scram_proxy() -> (Proxy, String) {
    let proxy = Proxy::builder().scram().start();
    let dsn = proxy.dsn(SCRAM_USER, &proxy.password(SCRAM_USER), None);
    (proxy, dsn)
}

#[test]
fn psql_script_copy_transaction_notice() {
    let (proxy, dsn) = scram_proxy();
    let t = unique_name("psql");
    fs::write(proxy.dir().join("in.csv"), "10,ten,10.5\n11,eleven,11.25\n").unwrap();
    let script = format!(
        "create table {t} (id int primary key, name text, amount numeric(10,2));\n\
         insert into {t} values (1, 'one', 1.50), (2, 'two', 2.25);\n\
         select id || ':' || name || ':' || amount from {t} order by id;\n\
         \\copy {t} from 'in.csv' with (format csv)\n\
         \\copy (select id, name from {t} where id >= 10 order by id) to 'out.csv' with (format csv)\n\
         begin;\n\
         insert into {t} values (100, 'rolled back', 0);\n\
         rollback;\n\
         select 'count=' || count(*) from {t};\n\
         DO $$ begin raise notice 'notice from do block'; end $$;\n\
         select 'done';\n"
    );
    fs::write(proxy.dir().join("script.sql"), script).unwrap();
    let out = proxy.psql(&dsn, &["-f", "script.sql"]);
    let stdout = assert_success("psql script", &out);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["1:one:1.50", "2:two:2.25", "count=4", "done"]
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("NOTICE:  notice from do block"),
        "no NOTICE in stderr: {stderr}"
    );
    let copied = fs::read_to_string(proxy.dir().join("out.csv")).unwrap();
    assert_eq!(copied, "10,ten\n11,eleven\n");

    // One Query message holding several statements.
    let multi = format!(
        "insert into {t} values (3, 'three', 3); update {t} set amount = amount * 2 where id = 3; \
         select amount from {t} where id = 3"
    );
    let out = proxy.psql(&dsn, &["-c", &multi]);
    assert_eq!(assert_success("psql multi-statement", &out).trim(), "6.00");
}

#[test]
fn psql_error_then_connection_still_usable() {
    let (proxy, dsn) = scram_proxy();
    let out = proxy.psql(
        &dsn,
        &[
            "-v",
            "ON_ERROR_STOP=0",
            "-c",
            "select 1/0",
            "-c",
            "select 'still alive'",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("division by zero"), "stderr: {stderr}");
    assert!(
        stdout.contains("still alive"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[test]
fn psql_listen_notify_between_two_sessions() {
    let (proxy, dsn) = scram_proxy();
    let channel = unique_name("psql_ch");
    // The listener runs the notifier itself (`\!`), so the NOTIFY is committed
    // before the listener's next statement: no timing involved.
    let script = format!(
        "listen {channel};\n\
         \\! psql -X -q \"$NOTIFY_DSN\" -c \"notify {channel}, 'hello from psql'\"\n\
         select 'after notify';\n"
    );
    fs::write(proxy.dir().join("listen.sql"), script).unwrap();
    let mut cmd = Command::new("psql");
    cmd.args([
        "-X",
        "-q",
        "-At",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &dsn,
        "-f",
        "listen.sql",
    ])
    .env("NOTIFY_DSN", &dsn)
    .current_dir(proxy.dir());
    let out = common::run(&mut cmd);
    let stdout = assert_success("psql listen", &out);
    let expected =
        format!("Asynchronous notification \"{channel}\" with payload \"hello from psql\"");
    assert!(stdout.contains(&expected), "no notification in: {stdout}");
}

#[test]
fn psycopg_smoke_script() {
    let python = common::venv_python();
    let (proxy, dsn) = scram_proxy();
    let script = common::repo_root().join("tests/clients/psycopg_smoke.py");
    let out = common::run(
        Command::new(python)
            .arg(script)
            .arg(&dsn)
            .arg(unique_name("psy")),
    );
    let stdout = assert_success("psycopg_smoke.py", &out);
    assert!(stdout.contains("psycopg smoke: ok"), "{stdout}");
    drop(proxy);
}

#[test]
fn node_pg_smoke_script() {
    let dir = common::node_dir();
    let (proxy, dsn) = scram_proxy();
    let out = common::run(
        Command::new("node")
            .arg("smoke.js")
            .arg(&dsn)
            .arg(unique_name("node"))
            .current_dir(dir),
    );
    let stdout = assert_success("node smoke.js", &out);
    assert!(stdout.contains("node smoke: ok"), "{stdout}");
    drop(proxy);
}

/// Text rows of a simple-query response, NULL as `None`.
fn simple_rows(msgs: &[tokio_postgres::SimpleQueryMessage]) -> Vec<Vec<Option<String>>> {
    msgs.iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

#[allow(clippy::unnecessary_wraps)] // shorthand for expected nullable values
fn some(s: &str) -> Option<String> {
    Some(s.to_string())
}

#[tokio::test]
async fn tokio_postgres_simple_query_multi_statement() {
    let proxy = Proxy::start();
    let client = proxy.connect("globex_app", None).await;
    let t = unique_name("tp_simple");
    let sql = format!(
        "create table {t} (id int, v text); insert into {t} values (1, 'a'), (2, null); \
         select id, v from {t} order by id; select count(*) from {t}"
    );
    let msgs = client.simple_query(&sql).await.unwrap();
    assert_eq!(
        simple_rows(&msgs),
        [
            vec![some("1"), some("a")],
            vec![some("2"), None],
            vec![some("2")]
        ]
    );
    let completions = msgs
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(completions, 4, "one CommandComplete per statement");
}

/// `numeric` in binary form, rendered as `PostgreSQL` prints it; decoding it by
/// hand checks that binary `DataRow`s reach the client byte for byte.
#[derive(Debug, PartialEq)]
struct Numeric(String);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| i16::from_be_bytes([raw[2 * i], raw[2 * i + 1]]);
        let (ndigits, weight) = (usize::try_from(word(0))?, i32::from(word(1)));
        let (sign, dscale) = (word(2).cast_unsigned(), usize::try_from(word(3))?);
        let digit = |pos: i32| -> i16 {
            usize::try_from(pos)
                .ok()
                .filter(|p| *p < ndigits)
                .map_or(0, |p| word(4 + p))
        };
        let mut out = String::new();
        if sign == 0x4000 {
            out.push('-');
        }
        if weight < 0 {
            out.push('0');
        }
        for pos in 0..=weight {
            if pos == 0 {
                out.push_str(&digit(pos).to_string());
            } else {
                write!(out, "{:04}", digit(pos))?;
            }
        }
        if dscale > 0 {
            let mut frac = String::new();
            let mut pos = weight + 1;
            while frac.len() < dscale {
                write!(frac, "{:04}", digit(pos))?;
                pos += 1;
            }
            out.push('.');
            out.push_str(&frac[..dscale]);
        }
        Ok(Numeric(out))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

#[tokio::test]
async fn tokio_postgres_prepared_binary_types() {
    let proxy = Proxy::start();
    let client = proxy.connect("globex_app", None).await;
    // tokio-postgres prepares named statements and asks for binary results.
    let stmt = client
        .prepare(
            "select 7::int4, 9000000000::int8, 'héllo'::text, '\\x00ff10'::bytea, \
             '2024-02-29 12:34:56.789+00'::timestamptz, '12345.6789'::numeric, \
             '-0.050'::numeric, array[1, 2, 3]::int4[], array['a', null, 'c']::text[], true, 1.5::float8",
        )
        .await
        .unwrap();
    for _ in 0..3 {
        let row = client.query_one(&stmt, &[]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 7);
        assert_eq!(row.get::<_, i64>(1), 9_000_000_000);
        assert_eq!(row.get::<_, String>(2), "héllo");
        assert_eq!(row.get::<_, Vec<u8>>(3), vec![0x00, 0xff, 0x10]);
        let at = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(row.get::<_, SystemTime>(4), at);
        assert_eq!(row.get::<_, Numeric>(5), Numeric("12345.6789".into()));
        assert_eq!(row.get::<_, Numeric>(6), Numeric("-0.050".into()));
        assert_eq!(row.get::<_, Vec<i32>>(7), vec![1, 2, 3]);
        assert_eq!(
            row.get::<_, Vec<Option<String>>>(8),
            vec![some("a"), None, some("c")]
        );
        assert!(row.get::<_, bool>(9));
        assert!((row.get::<_, f64>(10) - 1.5).abs() < f64::EPSILON);
    }
    // Binary parameters round-trip unchanged.
    let all_bytes: Vec<u8> = (0..=255).collect();
    let at = UNIX_EPOCH + Duration::from_micros(1_000_000_123_456);
    let echo = client
        .prepare("select $1::bytea, $2::timestamptz, $3::text[]")
        .await
        .unwrap();
    let tags = vec![some("x"), None];
    let row = client
        .query_one(&echo, &[&all_bytes, &at, &tags])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Vec<u8>>(0), all_bytes);
    assert_eq!(row.get::<_, SystemTime>(1), at);
    assert_eq!(row.get::<_, Vec<Option<String>>>(2), tags);
}

#[tokio::test]
async fn tokio_postgres_pipelined_and_large_results() {
    let proxy = Proxy::start();
    let client = proxy.connect("globex_app", None).await;
    let t = unique_name("tp_pipe");
    client
        .batch_execute(&format!("create table {t} (id int primary key, v text)"))
        .await
        .unwrap();
    let insert = client
        .prepare(&format!("insert into {t} values ($1, $2)"))
        .await
        .unwrap();
    let count_sql = format!("select count(*) from {t}");
    // Polled together, these go out as one pipeline before any reply is read.
    let (one, two, text, count) = tokio::join!(
        client.execute(&insert, &[&1i32, &"one"]),
        client.execute(&insert, &[&2i32, &"two"]),
        client.query_one("select $1::text || '!'", &[&"pipelined"]),
        client.query_one(count_sql.as_str(), &[]),
    );
    assert_eq!((one.unwrap(), two.unwrap()), (1, 1));
    assert_eq!(text.unwrap().get::<_, String>(0), "pipelined!");
    assert_eq!(count.unwrap().get::<_, i64>(0), 2);
    // A result far larger than any socket buffer.
    let rows = client
        .query(
            "select g, repeat('x', 200) from generate_series(1, 20000) g",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    let sum: i64 = rows.iter().map(|r| i64::from(r.get::<_, i32>(0))).sum();
    assert_eq!(sum, 20000 * 20001 / 2);
    assert!(rows.iter().all(|r| r.get::<_, &str>(1).len() == 200));
}

#[tokio::test]
async fn tokio_postgres_copy_in_and_out() {
    let proxy = Proxy::start();
    let client = proxy.connect("globex_app", None).await;
    let t = unique_name("tp_copy");
    client
        .batch_execute(&format!("create table {t} (id int, v text)"))
        .await
        .unwrap();
    let sink = client
        .copy_in::<_, Bytes>(&format!("copy {t} (id, v) from stdin"))
        .await
        .unwrap();
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        writeln!(data, "{i}\tvalue {i}").unwrap();
    }
    // Several CopyData messages, one of them cut in the middle of a line.
    let (first, rest) = data.split_at(1000);
    sink.send(Bytes::from(first.to_string())).await.unwrap();
    sink.send(Bytes::from(rest.to_string())).await.unwrap();
    assert_eq!(sink.finish().await.unwrap(), 5000);

    let stream = client
        .copy_out(&format!(
            "copy (select id, v from {t} order by id) to stdout"
        ))
        .await
        .unwrap();
    pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(String::from_utf8(out).unwrap(), data);

    // A COPY that fails half-way leaves the connection usable.
    let sink = client
        .copy_in::<_, Bytes>(&format!("copy {t} (id, v) from stdin"))
        .await
        .unwrap();
    pin_mut!(sink);
    let _ = sink.send(Bytes::from_static(b"not-a-number\tx\n")).await;
    expect_sqlstate(sink.finish().await, "22P02");
    let n: i64 = client
        .query_one(&format!("select count(*) from {t}"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5000);
}

#[tokio::test]
async fn tokio_postgres_transactions_and_error_recovery() {
    let proxy = Proxy::start();
    let mut client = proxy.connect("globex_app", None).await;
    let t = unique_name("tp_tx");
    client
        .batch_execute(&format!("create table {t} (id int primary key)"))
        .await
        .unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("insert into {t} values (1)"), &[])
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let tx = client.transaction().await.unwrap();
    tx.execute(&format!("insert into {t} values (2)"), &[])
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let ids: Vec<i32> = client
        .query(&format!("select id from {t} order by id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1]);

    // Errors in simple and extended protocol, in and out of transactions.
    expect_sqlstate(client.simple_query("select 1/0").await, "22012");
    expect_sqlstate(
        client
            .execute(&format!("insert into {t} values ($1)"), &[&1i32])
            .await,
        "23505",
    );
    expect_sqlstate(
        client.prepare("select * from no_such_table_xyz").await,
        "42P01",
    );
    let tx = client.transaction().await.unwrap();
    expect_sqlstate(tx.execute("select 1/0", &[]).await, "22012");
    expect_sqlstate(tx.execute("select 1", &[]).await, "25P02");
    tx.rollback().await.unwrap();
    let row = client
        .query_one("select $1::int + 1", &[&41i32])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
}

#[tokio::test]
async fn policy_table_is_refused_and_connection_survives() {
    let proxy = Proxy::start();
    proxy.require_proxy();
    let client = proxy.connect("globex_app", None).await;
    let table = common::POLICY_TABLE;
    let e = expect_sqlstate(
        client
            .simple_query(&format!("select email from {table} order by email"))
            .await,
        "0A000",
    );
    assert!(common::db_message(&e).starts_with("byokpg:"), "{e:?}");
    expect_sqlstate(
        client
            .query(
                &format!("select email from {table} where email like $1"),
                &[&"a%"],
            )
            .await,
        "0A000",
    );
    let row = client
        .query_one("select 'still usable'::text", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "still usable");
    let msgs = client.simple_query("select 1").await.unwrap();
    assert_eq!(simple_rows(&msgs), [vec![some("1")]]);
}
