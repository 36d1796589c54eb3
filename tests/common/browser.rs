//! A real headless Chromium as a child process, driven over the Chrome DevTools Protocol (CDP):
//! open tabs, evaluate JavaScript in them, take screenshots. The browser tests use it to load
//! ringcast's own page, whose WebSocket is then a real browser client.
//!
//! The binary is `chromium` (Debian's package, which `scripts/test` installs when it is missing)
//! on the PATH or in /usr/bin, or `$RINGCAST_CHROMIUM`; a test without it fails and says so.
//! The browser runs in its own process group with a throwaway profile; dropping it closes the
//! browser (CDP `Browser.close`), then kills that group by its PID.

use super::{within, STEP};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// A running headless Chromium and one DevTools connection to it.
pub struct Browser {
    child: Child,
    devtools: super::Ws,
    next_id: u64,
    profile: PathBuf,
}

/// A tab attached over CDP (flattened session).
pub struct Tab {
    pub target_id: String,
    pub session_id: String,
}

fn binary() -> PathBuf {
    if let Ok(path) = std::env::var("RINGCAST_CHROMIUM") {
        return PathBuf::from(path);
    }
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
    {
        for name in ["chromium", "chromium-browser"] {
            let path = PathBuf::from(dir).join(name);
            if path.exists() {
                return path;
            }
        }
    }
    panic!("chromium not found: run scripts/test (it installs Debian's chromium) or set RINGCAST_CHROMIUM");
}

impl Browser {
    /// Starts headless Chromium on a free DevTools port and connects to it.
    pub async fn launch() -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = std::env::temp_dir().join(format!(
            "ringcast-chromium-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&profile);
        let mut child = Command::new(binary())
            .args([
                "--headless=new",
                // Tests run as root in CI containers, where the sandbox cannot start.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1100,900",
                // The TLS proxy test serves the page with a self-signed certificate.
                "--ignore-certificate-errors",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary().display()));

        // Chromium prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        let stderr = child.stderr.take().expect("chromium stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut seen = String::new();
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(url) = line.strip_prefix("DevTools listening on ") {
                        let _ = tx.send(Ok(url.trim().to_string()));
                        sent = true;
                    } else {
                        seen.push_str(&line);
                        seen.push('\n');
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(seen));
            }
        });
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(url)) => url,
            Ok(Err(stderr)) => panic!("chromium exited without a DevTools endpoint:\n{stderr}"),
            Err(_) => panic!("chromium printed no DevTools endpoint within 30 s"),
        };
        let (devtools, _) = within(STEP, "connect to DevTools", async {
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap_or_else(|e| panic!("connect {url}: {e}"))
        })
        .await;
        Browser {
            child,
            devtools,
            next_id: 0,
            profile,
        }
    }

    /// Calls a CDP method (in `session`, or on the browser) and returns its result; a CDP error
    /// panics. Events that arrive meanwhile are skipped.
    pub async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        let devtools = &mut self.devtools;
        within(STEP, method, async {
            devtools
                .send(Message::text(request.to_string()))
                .await
                .expect("send to DevTools");
            loop {
                let message = devtools
                    .next()
                    .await
                    .expect("DevTools connection ended")
                    .expect("DevTools read");
                let Message::Text(text) = message else {
                    continue;
                };
                let reply: Value = serde_json::from_str(&text).expect("DevTools JSON");
                if reply["id"] != json!(id) {
                    continue;
                }
                if let Some(error) = reply.get("error") {
                    panic!("{method}: {error}");
                }
                return reply["result"].clone();
            }
        })
        .await
    }

    /// Opens `url` in a new tab and attaches to it.
    pub async fn open(&mut self, url: &str) -> Tab {
        let created = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = created["targetId"].as_str().expect("targetId").to_string();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        let session_id = attached["sessionId"]
            .as_str()
            .expect("sessionId")
            .to_string();
        Tab {
            target_id,
            session_id,
        }
    }

    /// Evaluates `expression` in `tab` and returns its value (JSON-serialisable).
    pub async fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let result = self
            .call(
                Some(&tab.session_id),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// A PNG screenshot of `tab`.
    pub async fn screenshot(&mut self, tab: &Tab) -> Vec<u8> {
        use base64::Engine;
        let shot = self
            .call(
                Some(&tab.session_id),
                "Page.captureScreenshot",
                json!({ "format": "png" }),
            )
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("screenshot base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on the process group this Browser started (process_group(0) made the
        // browser its leader), so only Chromium and its helpers get the signal.
        unsafe {
            libc::kill(-pid, libc::SIGTERM);
        }
        if super::wait_child(&mut self.child, Duration::from_secs(5)).is_none() {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
