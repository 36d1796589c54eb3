//! ringcast behind a TLS-terminating reverse proxy, the way the README shows: a real nginx
//! (Debian's package) with a self-signed certificate made by openssl for this test, proxying
//! WebSocket upgrades to ringcast, which requires tokens.
//!
//! Proves that Python `websockets` clients relay text, binary and a 100 KB message over
//! `wss://` with a token through the proxy (and that one not trusting the certificate cannot
//! connect), and that the live page loaded over `https://` through the proxy subscribes with
//! `wss://` to a channel whose name needs encoding, passing its token along, and receives.
//!
//! Needs nginx, openssl, `.venv` with `websockets` and Chromium, which `scripts/test` installs.

mod common;

use common::*;
use serde_json::Value;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// A running nginx terminating TLS on `port` for the ringcast at `upstream`; killed by PID
/// when dropped.
struct Nginx {
    child: Child,
    port: u16,
    /// The certificate authority clients trust.
    cert: PathBuf,
    _dir: tempfile::TempDir,
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("nginx not found: run scripts/test (it installs Debian's nginx)")
}

impl Nginx {
    fn start(upstream: SocketAddr) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let pki = tls::make(dir.path());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d};\nproxy_temp_path {d};\n\
             fastcgi_temp_path {d};\nuwsgi_temp_path {d};\nscgi_temp_path {d};\n\
             map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
             server {{\nlisten 127.0.0.1:{port} ssl;\nssl_certificate {d}/cert.pem;\n\
             ssl_certificate_key {d}/key.pem;\nlocation / {{\n\
             proxy_pass http://{upstream};\nproxy_http_version 1.1;\n\
             proxy_set_header Upgrade $http_upgrade;\n\
             proxy_set_header Connection $connection_upgrade;\n\
             proxy_set_header Host $host;\nproxy_read_timeout 1h;\n}}\n}}\n}}\n"
        );
        std::fs::File::create(format!("{d}/nginx.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .unwrap();
        let child = Command::new(nginx_binary())
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + STEP;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            let log = std::fs::read_to_string(format!("{d}/error.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "nginx did not listen on {addr}: {log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            port,
            cert: pki.ca,
            _dir: dir,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ringcast requiring HS256 tokens, its secret file, and a token for every `tls*` channel.
fn server_with_tokens() -> (Server, tempfile::NamedTempFile, String) {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let secret = b"the proxy test's secret";
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(secret).unwrap();
    let path = file.path().display().to_string();
    let server = Server::start(&["--threads", "2", "--token-hmac-secret-file", &path]);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let caps = serde_json::json!([
        {"channels": ["secure", "tls*"], "allow": ["sub", "pub"], "match": "wildcard"}
    ]);
    let token = encode(
        &Header::new(Algorithm::HS256),
        &serde_json::json!({"sub": "proxy-test", "exp": exp, "caps": caps}),
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap();
    (server, file, token)
}

#[test]
fn python_clients_relay_over_wss_through_nginx() {
    let (server, _secret, token) = server_with_tokens();
    let nginx = Nginx::start(server.addr);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "run scripts/test: it creates .venv with websockets"
    );
    let out = run_bounded(
        Command::new(python)
            .arg("-u")
            .arg(root.join("tests/python/tls_relay.py"))
            .arg(format!("wss://127.0.0.1:{}", nginx.port))
            .arg(&nginx.cert)
            .arg(&token)
            .current_dir(root.join("tests/python")),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|_| panic!("tls_relay.py still running after 60 s"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "tls_relay.py failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_over_https_watches_with_wss_and_an_encoded_channel() {
    let (server, _secret, token) = server_with_tokens();
    let nginx = Nginx::start(server.addr);
    let mut browser = browser::Browser::launch().await;
    // "tls room/é": a space and a non-ASCII letter, both percent-encoded by the page.
    let page = format!(
        "https://127.0.0.1:{}/?watch=tls%20room%2F%C3%A9&token={token}",
        nginx.port
    );
    let tab = browser.open(&page).await;
    let opened = within(STEP, "the page's wss subscription", async {
        loop {
            let state: Value = browser
                .eval(
                    &tab,
                    "window.ringcast ? JSON.parse(JSON.stringify(window.ringcast)) : null",
                )
                .await;
            if state["watch"]["open"] == Value::Bool(true) {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(opened["watch"]["closed"], Value::Null);
    let scheme = browser.eval(&tab, "location.protocol").await;
    assert_eq!(scheme, Value::String("https:".into()));
    // A publisher on the server's own port, on the encoded channel name, reaches the page.
    let mut publisher = ws(&server, &format!("/tls%20room/%C3%A9?token={token}")).await;
    send(&mut publisher, Message::text("to the page")).await;
    within(STEP, "the page to receive", async {
        loop {
            let received = browser
                .eval(&tab, "window.ringcast.watch.received")
                .await
                .as_u64()
                .unwrap_or(0);
            if received >= 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}
