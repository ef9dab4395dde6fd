//! A private PostgreSQL cluster (initdb + pg_ctl as user `postgres`, in a
//! temporary directory, on a free port) that a test may stop and restart
//! without touching the shared server other tests use.

use std::path::PathBuf;
use std::process::Command;

use crate::common::{PG_HOST, assert_success, free_port, run};

const HOW: &str = "initdb/pg_ctl (PostgreSQL server binaries) and a `postgres` OS user are \
     needed: run `bash scripts/test.sh`";

pub struct Cluster {
    pub port: u16,
    data: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// Directory of the server binaries: Debian keeps initdb and pg_ctl in
/// /usr/lib/postgresql/VERSION/bin, off the PATH; the newest one wins.
fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|d| d.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.retain(|d| d.join("initdb").exists() && d.join("pg_ctl").exists());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_default()
}

/// `runuser -u postgres -- <server binary> <args>`: initdb refuses to run
/// as root. An empty bindir leaves the binary to the PATH.
fn as_postgres(args: &[&str]) -> Command {
    let (bin, rest) = args.split_first().expect("a command");
    let bin = pg_bindir().join(bin);
    if !running_as_root() {
        let mut cmd = Command::new(bin);
        cmd.args(rest);
        return cmd;
    }
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--"]).arg(bin).args(rest);
    cmd
}

/// Real uid 0, read from /proc (no libc call: the crate forbids unsafe).
fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().next())
            == Some("0")
    })
}

impl Cluster {
    /// initdb (trust auth, fsync off) and start; creates database `db`.
    pub fn start(db: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("byokpg-faults-pg-")
            .tempdir()
            .expect("temp dir for the private cluster");
        if running_as_root() {
            let dir_s = dir.path().to_string_lossy().into_owned();
            let out = run(Command::new("chown").args(["postgres:postgres", &dir_s]));
            assert_success(&format!("chown the private cluster dir ({HOW})"), &out);
        }
        let data = dir.path().join("data");
        let data_s = data.to_string_lossy().into_owned();
        let out = run(&mut as_postgres(&[
            "initdb",
            "-D",
            &data_s,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]));
        assert_success(&format!("initdb ({HOW})"), &out);
        let cluster = Self {
            port: free_port(),
            log: dir.path().join("pg.log"),
            data,
            _dir: dir,
        };
        cluster.pg_start();
        let out = run(Command::new("psql").args([
            "-X",
            "-q",
            "-h",
            PG_HOST,
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            &format!("create database \"{db}\""),
        ]));
        assert_success("create the private cluster's database", &out);
        cluster
    }

    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgres://postgres@{PG_HOST}:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// Starts the server and waits until it accepts connections.
    pub fn pg_start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses={PG_HOST} -c fsync=off -c max_connections=120",
            self.port,
            self.data.to_string_lossy()
        );
        let out = run(&mut as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data.to_string_lossy(),
            "-l",
            &self.log.to_string_lossy(),
            "-o",
            &opts,
            "-w",
            "-t",
            "60",
            "start",
        ]));
        assert_success(&format!("pg_ctl start ({HOW})"), &out);
    }

    /// Fast shutdown: open sessions are terminated, as in a real outage.
    pub fn pg_stop(&self) {
        let out = run(&mut as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data.to_string_lossy(),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "stop",
        ]));
        assert_success("pg_ctl stop", &out);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(&mut as_postgres(&[
            "pg_ctl",
            "-D",
            &self.data.to_string_lossy(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]));
    }
}
