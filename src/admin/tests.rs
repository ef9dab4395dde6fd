//! The admin server driven over a real loopback socket with HTTP/1.1.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;

struct TestHooks {
    ready: Mutex<Result<(), Vec<String>>>,
    token: Mutex<Option<String>>,
    reload: Mutex<Result<(), String>>,
    /// tenant -> number of cached keys
    tenants: Mutex<HashMap<String, usize>>,
}

impl TestHooks {
    fn new(token: Option<&str>) -> Arc<Self> {
        Arc::new(TestHooks {
            ready: Mutex::new(Ok(())),
            token: Mutex::new(token.map(str::to_owned)),
            reload: Mutex::new(Ok(())),
            tenants: Mutex::new(HashMap::from([("acme".to_owned(), 2)])),
        })
    }
}

impl AdminHooks for TestHooks {
    fn ready(&self) -> Pin<Box<dyn Future<Output = Result<(), Vec<String>>> + Send + '_>> {
        let r = self.ready.lock().unwrap().clone();
        Box::pin(async move { r })
    }
    fn reload(&self) -> Result<(), String> {
        self.reload.lock().unwrap().clone()
    }
    fn evict_tenant(&self, tenant: &str) -> Result<usize, String> {
        let mut tenants = self.tenants.lock().unwrap();
        let n = tenants.get_mut(tenant).ok_or("no such tenant")?;
        Ok(std::mem::take(n))
    }
    fn admin_token(&self) -> Option<String> {
        self.token.lock().unwrap().clone()
    }
}

struct Server {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(hooks: Arc<TestHooks>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, hooks, async move {
            let _ = rx.await;
        }));
        Server {
            addr,
            stop: Some(tx),
            task,
        }
    }

    async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// One HTTP/1.1 exchange with `Connection: close`, read to EOF.
async fn call(addr: SocketAddr, method: &str, path: &str, auth: Option<&str>) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(a) = auth {
        req.push_str("Authorization: ");
        req.push_str(a);
        req.push_str("\r\n");
    }
    req.push_str("Content-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("no header end");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_owned(),
    }
}

#[tokio::test]
async fn health_metrics_and_unknown_routes() {
    let srv = Server::start(TestHooks::new(Some("tok"))).await;
    let r = call(srv.addr, "GET", "/healthz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ok"));

    crate::metrics::connection_opened();
    crate::metrics::SessionMetrics::get()
        .stmt_refused
        .increment(1);
    let r = call(srv.addr, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.head.contains("content-type: text/plain; version=0.0.4"),
        "{}",
        r.head
    );
    for name in [
        "# TYPE byokpg_connections_total counter",
        "# HELP byokpg_connections_current ",
        "byokpg_statements_total{kind=\"refused\"}",
        "byokpg_dek_cache_hits_total",
    ] {
        assert!(r.body.contains(name), "{name} missing from:\n{}", r.body);
    }

    assert_eq!(call(srv.addr, "GET", "/nope", None).await.status, 404);
    assert_eq!(
        call(srv.addr, "GET", "/admin/reload", None).await.status,
        405
    );
    srv.stop().await;
}

#[tokio::test]
async fn readyz_reports_reasons() {
    let hooks = TestHooks::new(None);
    let srv = Server::start(Arc::clone(&hooks)).await;
    let r = call(srv.addr, "GET", "/readyz", None).await;
    assert_eq!((r.status, r.body.as_str()), (200, "ready"));

    *hooks.ready.lock().unwrap() = Err(vec![
        "eu: connection refused".into(),
        "apac: timeout".into(),
    ]);
    let r = call(srv.addr, "GET", "/readyz", None).await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("eu: connection refused\n"), "{}", r.body);
    assert!(r.body.contains("apac: timeout\n"), "{}", r.body);
    srv.stop().await;
}

#[tokio::test]
async fn reload_auth_and_outcomes() {
    let hooks = TestHooks::new(Some("s3cret"));
    let srv = Server::start(Arc::clone(&hooks)).await;
    let a = srv.addr;

    let r = call(a, "POST", "/admin/reload", None).await;
    assert_eq!(r.status, 401);
    assert!(r.head.contains("www-authenticate: bearer"), "{}", r.head);
    assert!(r.body.starts_with("{\"error\":\"byokpg: "), "{}", r.body);
    assert!(!r.body.contains("s3cret"));

    let r = call(a, "POST", "/admin/reload", Some("Bearer wrong")).await;
    assert_eq!(r.status, 403);
    assert!(!r.body.contains("s3cret"), "{}", r.body);

    let r = call(a, "POST", "/admin/reload", Some("Bearer s3cret")).await;
    assert_eq!((r.status, r.body.as_str()), (200, "{\"ok\":true}"));
    assert!(r.head.contains("content-type: application/json"));

    *hooks.reload.lock().unwrap() = Err("config/byokpg.toml:3: server.listen: bad".into());
    let r = call(a, "POST", "/admin/reload", Some("Bearer s3cret")).await;
    assert_eq!(r.status, 422);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.starts_with("byokpg: ") && msg.contains("server.listen"),
        "{msg}"
    );

    // The token can change on reload: the old one stops working at once.
    *hooks.token.lock().unwrap() = Some("rotated".into());
    assert_eq!(
        call(a, "POST", "/admin/reload", Some("Bearer s3cret"))
            .await
            .status,
        403
    );

    // No token configured: the admin API is disabled, whatever is sent.
    *hooks.token.lock().unwrap() = None;
    let r = call(a, "POST", "/admin/reload", Some("Bearer rotated")).await;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("admin_token is not configured"),
        "{}",
        r.body
    );
    srv.stop().await;
}

#[tokio::test]
async fn evict_known_and_unknown_tenant() {
    let hooks = TestHooks::new(Some("tok"));
    let srv = Server::start(hooks).await;
    let a = srv.addr;
    let path = "/admin/tenants/acme/evict";

    assert_eq!(call(a, "POST", path, None).await.status, 401);
    assert_eq!(call(a, "POST", path, Some("Bearer nope")).await.status, 403);

    let r = call(a, "POST", path, Some("Bearer tok")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v, json!({"ok": true, "tenant": "acme", "evicted": 2}));

    let r = call(a, "POST", "/admin/tenants/globex/evict", Some("Bearer tok")).await;
    assert_eq!(r.status, 404);
    let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(v["error"], "byokpg: unknown tenant: globex");
    srv.stop().await;
}
