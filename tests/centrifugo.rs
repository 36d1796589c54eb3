//! Centrifugo's client protocol and server API, with the real clients apps use, against ringcast
//! and against the real Centrifugo v6: the same checks on both, so that every behaviour ringcast
//! claims to share with Centrifugo is shown to be Centrifugo's too.
//!
//! - `tests/centrifugo/client.test.js` runs the `centrifuge` npm client (centrifuge-js) in
//!   Node: connect with a token, subscribe, server-API publications with increasing offsets,
//!   recovery after a reconnect and from a stored position, an unknown epoch (not recovered),
//!   client publish with and without the right, a channel outside the token, a subscription
//!   token, a bad token (3500), history and presence counts, the API with a wrong key (401).
//! - `tests/python/cent_api.py` drives the server API with the `cent` SDK (PyPI): publish,
//!   broadcast, history, channels, info.
//!
//! The one difference on purpose (said in the script too): rights come from the token's `caps`
//! claim in ringcast, from channel namespaces in open-source Centrifugo (which has no `caps`);
//! the two configurations below grant the same rights.
//!
//! Needs Node with `npm ci` done in tests/centrifugo, `cent` in .venv, and Centrifugo built
//! into peers/centrifugo/bin (`peers/setup centrifugo`): scripts/test sets up all three.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const SECRET: &str = "the secret of this test's client tokens";
const API_KEY: &str = "the key of this test's server API";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the centrifuge-js checks against `ws_url` and `api_url` (with a bound).
fn run_client_checks(server: &str, ws_url: &str, api_url: &str) -> Output {
    let script = root().join("tests/centrifugo/client.test.js");
    let modules = root().join("tests/centrifugo/node_modules/centrifuge");
    assert!(
        modules.exists(),
        "tests/centrifugo/node_modules is missing: run `npm ci` in tests/centrifugo (scripts/test does)"
    );
    bounded(
        Command::new("node")
            .arg(&script)
            .env("WS_URL", ws_url)
            .env("API_URL", api_url)
            .env("API_KEY", API_KEY)
            .env("TOKEN_SECRET", SECRET)
            .env("SERVER", server),
        Duration::from_secs(120),
        "the centrifuge-js checks",
    )
}

/// Runs `command` to its end, killing it (and failing) after `bound`.
fn bounded(command: &mut Command, bound: Duration, what: &str) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let started = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} took over {bound:?}:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_passed(output: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    println!("{stdout}");
}

fn key_files() -> (tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    writeln!(secret, "{SECRET}").unwrap();
    let mut key = tempfile::NamedTempFile::new().unwrap();
    writeln!(key, "{API_KEY}").unwrap();
    (secret, key)
}

fn ringcast() -> (Server, tempfile::NamedTempFile, tempfile::NamedTempFile) {
    let (secret, key) = key_files();
    let server = Server::start(&[
        "--threads",
        "2",
        "--token-hmac-secret-file",
        &secret.path().display().to_string(),
        "--api-key-file",
        &key.path().display().to_string(),
        "--ping-interval",
        "5",
    ]);
    (server, secret, key)
}

#[test]
fn centrifuge_js_against_ringcast() {
    let (server, _secret, _key) = ringcast();
    let ws = format!("ws://{}/connection/websocket", server.addr);
    let api = format!("http://{}/api", server.addr);
    let output = run_client_checks("ringcast", &ws, &api);
    assert_passed(&output, "centrifuge-js against ringcast");
}

#[test]
fn the_cent_sdk_drives_ringcast_s_server_api() {
    let (server, _secret, _key) = ringcast();
    let python = root().join(".venv/bin/python");
    assert!(
        python.exists(),
        ".venv is missing: scripts/test creates it and installs cent"
    );
    let output = bounded(
        Command::new(python)
            .arg(root().join("tests/python/cent_api.py"))
            .env("API_URL", format!("http://{}/api", server.addr))
            .env("API_KEY", API_KEY),
        Duration::from_secs(60),
        "the cent SDK checks",
    );
    assert_passed(&output, "cent against ringcast's server API");
}

/// The real Centrifugo, on a free loopback port, with the rights the checks expect (as
/// namespaces), one core; stopped when dropped.
struct Centrifugo {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Centrifugo {
    fn binary() -> PathBuf {
        let binary = root().join("peers/centrifugo/bin/centrifugo");
        assert!(
            binary.exists(),
            "{} is missing: run `peers/setup centrifugo` (scripts/test does)",
            binary.display()
        );
        binary
    }

    fn start() -> Centrifugo {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, config_json(port)).unwrap();
        let child = Command::new(Centrifugo::binary())
            .arg("--config")
            .arg(&config)
            .env("GOMAXPROCS", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start centrifugo");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut centrifugo = Centrifugo {
            child,
            addr,
            _dir: dir,
        };
        centrifugo.wait_ready();
        centrifugo
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        while started.elapsed() < STEP {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("centrifugo exited at start: {status}");
            }
            if TcpStream::connect(self.addr).is_ok() {
                // Listening means serving: /health answers 200 (or this panics).
                blocking_get(self.addr, "/health");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("centrifugo not ready on {} within {STEP:?}", self.addr);
    }
}

impl Drop for Centrifugo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Centrifugo v6's configuration granting, by namespace, what the token's `caps` grant in
/// ringcast: `news` (no namespace) subscribe, history and presence, recovery forced on;
/// `pub:*` the same plus publishing; `private:*` only with a subscription token. History as
/// ringcast's defaults: 100 publications for 300 s.
fn config_json(port: u16) -> String {
    serde_json::json!({
        "log": {"level": "error"},
        "http_server": {"address": "127.0.0.1", "port": port},
        "usage_stats": {"disabled": true},
        "health": {"enabled": true},
        "http_api": {"key": API_KEY},
        "client": {
            "token": {"hmac_secret_key": SECRET},
            "ping_interval": "5s",
            "pong_timeout": "4s"
        },
        "channel": {
            "without_namespace": {
                "history_size": 100,
                "history_ttl": "300s",
                "force_recovery": true,
                "presence": true,
                "allow_subscribe_for_client": true,
                "allow_history_for_subscriber": true,
                "allow_presence_for_subscriber": true
            },
            "namespaces": [
                {
                    "name": "pub",
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": true,
                    "presence": true,
                    "allow_subscribe_for_client": true,
                    "allow_publish_for_client": true,
                    "allow_history_for_subscriber": true,
                    "allow_presence_for_subscriber": true
                },
                {
                    "name": "private",
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": true
                }
            ]
        }
    })
    .to_string()
}

#[test]
fn centrifuge_js_against_centrifugo_itself() {
    let centrifugo = Centrifugo::start();
    let ws = format!("ws://{}/connection/websocket", centrifugo.addr);
    let api = format!("http://{}/api", centrifugo.addr);
    let output = run_client_checks("centrifugo", &ws, &api);
    assert_passed(&output, "centrifuge-js against Centrifugo");
}

/// A connection token for `alice` with the rights of the checks above.
fn browser_token() -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let claims = serde_json::json!({
        "sub": "alice",
        "exp": exp,
        "caps": [{"channels": ["news"], "allow": ["sub", "hst", "prs"]}],
    });
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

/// centrifuge-js in headless Chromium, in a page of ringcast's own origin: it connects with a
/// token, subscribes, and gets what the page itself publishes through the server API
/// (`fetch`), in order, with offsets one apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn centrifuge_js_in_chromium_through_a_page() {
    let (server, _secret, _key) = ringcast();
    let mut browser = browser::Browser::launch().await;
    let tab = browser.open(&format!("http://{}/", server.addr)).await;
    let deadline = Instant::now() + STEP;
    // (A new tab is about:blank, "complete", before it navigates to the page.)
    let loaded = "location.protocol === 'http:' && document.readyState === 'complete'";
    while browser.eval(&tab, loaded).await != true {
        assert!(Instant::now() < deadline, "the page never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let library = std::fs::read_to_string(
        root().join("tests/centrifugo/node_modules/centrifuge/dist/centrifuge.js"),
    )
    .expect("tests/centrifugo/node_modules (npm ci in tests/centrifugo)");
    browser.eval(&tab, &library).await;
    let script = format!(
        r#"
        window.seen = {{ got: [], subscribed: null, published: 0, error: null }};
        const c = new Centrifuge("ws://{addr}/connection/websocket", {{ token: "{token}" }});
        const sub = c.newSubscription("news");
        sub.on("publication", (ctx) => window.seen.got.push({{ n: ctx.data.n, offset: ctx.offset }}));
        sub.on("subscribed", async (ctx) => {{
            window.seen.subscribed = {{ recoverable: ctx.recoverable, epoch: ctx.streamPosition.epoch }};
            try {{
                for (let n = 0; n < 5; n++) {{
                    const r = await fetch("/api/publish", {{
                        method: "POST",
                        headers: {{ "X-API-Key": "{key}" }},
                        body: JSON.stringify({{ channel: "news", data: {{ n }} }}),
                    }});
                    if (r.status === 200) window.seen.published += 1;
                }}
            }} catch (e) {{ window.seen.error = String(e); }}
        }});
        sub.subscribe();
        c.connect();
        "started"
        "#,
        addr = server.addr,
        token = browser_token(),
        key = API_KEY,
    );
    assert_eq!(browser.eval(&tab, &script).await, "started");
    let deadline = Instant::now() + STEP;
    let seen = loop {
        let seen = browser
            .eval(&tab, "JSON.parse(JSON.stringify(window.seen))")
            .await;
        if seen["got"].as_array().is_some_and(|g| g.len() == 5) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not get 5 publications: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen["published"], 5, "{seen}");
    assert_eq!(seen["subscribed"]["recoverable"], true, "{seen}");
    let got = seen["got"].as_array().unwrap();
    let first = got[0]["offset"].as_u64().expect("an offset");
    for (i, publication) in got.iter().enumerate() {
        assert_eq!(publication["n"], i as u64, "in order: {seen}");
        assert_eq!(
            publication["offset"],
            first + i as u64,
            "offsets one apart: {seen}"
        );
    }
}
