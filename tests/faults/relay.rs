//! A TCP relay in front of the KMS whose behaviour the test switches at
//! run time: pass, blackhole (bytes are swallowed, nothing answers) or
//! slow (every chunk is held longer than byokpg's KMS timeout).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pass = 0,
    Blackhole = 1,
    Slow = 2,
}

/// How long a chunk is held in `Slow` mode (the KMS timeout is 2 s).
const SLOW: Duration = Duration::from_secs(5);

pub struct Relay {
    pub port: u16,
    mode: Arc<AtomicU8>,
}

impl Relay {
    /// Listens on a free loopback port and relays to `target` (`host:port`).
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let mode = Arc::new(AtomicU8::new(Mode::Pass as u8));
        let m = mode.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let m = m.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay_pair(client, server, m).await;
                    }
                });
            }
        });
        Self { port, mode }
    }

    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }
}

async fn relay_pair(client: TcpStream, server: TcpStream, mode: Arc<AtomicU8>) {
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = tokio::spawn(pipe(cr, sw, mode.clone()));
    let down = tokio::spawn(pipe(sr, cw, mode));
    let _ = tokio::join!(up, down);
}

/// Copies chunk by chunk, consulting the mode for every chunk, so a kept
/// alive HTTP connection is affected as much as a new one.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: Arc<AtomicU8>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        match mode.load(Ordering::SeqCst) {
            1 => continue,
            2 => tokio::time::sleep(SLOW).await,
            _ => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
