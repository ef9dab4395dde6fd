//! pgbench through the proxy: `pgbench -i` (COPY, DDL, VACUUM) and a short
//! TPC-B-like run in each query mode. The run needs no failed transaction.
#![allow(clippy::unwrap_used)] // helpers outside #[test] fns unwrap too

mod common;

use std::process::Command;

use common::{Proxy, assert_success, local_dsn};

const BENCH_DB: &str = "byokpg_t_bench";

/// The number after `label` on the line that starts with it.
fn number_after(output: &str, label: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn pgbench(args: &[&str], dsn: &str) -> String {
    let mut cmd = Command::new("pgbench");
    cmd.args(args).arg(dsn);
    let out = common::run(&mut cmd);
    let stdout = assert_success(&format!("pgbench {}", args.join(" ")), &out);
    // pgbench prints its progress and some results on stderr.
    format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr))
}

#[test]
fn pgbench_init_and_all_query_modes() {
    // The bench tables get their own database: `pgbench -i` drops and
    // recreates pgbench_* and must not race with other tests.
    let proxy = Proxy::builder()
        .region_dsn("us", &local_dsn(BENCH_DB))
        .start();
    let dsn = proxy.dsn("globex_app", &proxy.password("globex_app"), None);

    let init = pgbench(&["-i", "-s", "1", "-q"], &dsn);
    assert!(init.contains("done"), "pgbench -i output:\n{init}");
    let check = proxy.psql(&dsn, &["-c", "select count(*) from pgbench_accounts"]);
    assert_eq!(assert_success("count accounts", &check).trim(), "100000");

    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(&["-T", "5", "-c", "4", "-j", "2", "-M", mode], &dsn);
        let done = number_after(&out, "number of transactions actually processed:");
        assert!(
            done.is_some_and(|n| n > 0),
            "-M {mode}: no transactions\n{out}"
        );
        let failed = number_after(&out, "number of failed transactions:").unwrap_or(0);
        assert_eq!(failed, 0, "-M {mode}: failed transactions\n{out}");
        assert!(
            !out.contains("aborted"),
            "-M {mode}: a client aborted\n{out}"
        );
    }

    // Everything went to the bench database, nothing to the us region's default.
    let history = proxy.psql(&dsn, &["-c", "select count(*) > 0 from pgbench_history"]);
    assert_eq!(assert_success("count history", &history).trim(), "t");
    if !common::direct_mode() {
        let db = proxy.psql(&dsn, &["-c", "select current_database()"]);
        assert_eq!(assert_success("current_database", &db).trim(), BENCH_DB);
    }
}
