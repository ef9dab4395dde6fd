//! Process figures from /proc and raw-socket clients (half-open, vanishing,
//! refused) that tokio-postgres cannot play.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd of byokpg")
        .count()
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// A protocol 3.0 StartupMessage.
pub fn startup_packet(user: &str, tenant: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608_i32.to_be_bytes());
    let mut kv = |k: &str, v: &str| {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    };
    kv("user", user);
    kv("database", "app");
    if let Some(t) = tenant {
        kv("options", &format!("-c byokpg.tenant={t}"));
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).expect("small packet");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

/// Sends a startup packet and returns the SQLSTATE of the first
/// ErrorResponse, `auth` when authentication went on, or `eof`/`timeout`.
pub async fn startup_outcome(port: u16, packet: &[u8]) -> String {
    let attempt = async {
        let mut s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        s.write_all(packet).await.map_err(|_| "eof".to_owned())?;
        let mut head = [0u8; 5];
        s.read_exact(&mut head)
            .await
            .map_err(|_| "eof".to_owned())?;
        let len = usize::try_from(u32::from_be_bytes([head[1], head[2], head[3], head[4]]))
            .unwrap_or(0)
            .saturating_sub(4);
        if head[0] != b'E' {
            return Ok("auth".to_owned());
        }
        let mut body = vec![0u8; len.min(64 * 1024)];
        s.read_exact(&mut body)
            .await
            .map_err(|_| "eof".to_owned())?;
        Ok::<_, String>(error_code(&body))
    };
    match tokio::time::timeout(Duration::from_mins(1), attempt).await {
        Ok(Ok(code) | Err(code)) => code,
        Err(_) => "timeout".to_owned(),
    }
}

/// The `C` field of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map_or_else(
            || "no-code".to_owned(),
            |c| String::from_utf8_lossy(c).into_owned(),
        )
}
