//! Who may, against the real binary: client tokens (JWT, HS256 here; RS256/ES256 keys are
//! covered by the unit tests of `src/access/token.rs`), the `Origin` check and protected mode.
//!
//! Proves that a handshake without a token, or with a malformed, wrongly signed, `alg: none`
//! or expired one, gets 401 with the reason before any upgrade; that a valid token without the
//! `sub` capability for the channel gets 403; that a token allowing `sub` only can read but a
//! data message from it closes the connection with 1008 and reaches nobody; that `pub` allows
//! publishing, with the token in the query or in `Authorization: Bearer`, and wildcard
//! capabilities match; that a connection is closed with 1008 when its token expires; that a
//! page from an origin not allowed gets 403 while clients without `Origin` pass; and that
//! ringcast refuses to serve anonymous clients on a non-loopback address.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &[u8] = b"a secret only the server and the token issuer know";
const ORIGIN: &str = "https://app.example";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` with `caps`, expiring `ttl_secs` from now, signed with `secret`.
fn token_with(secret: &[u8], caps: serde_json::Value, ttl_secs: i64) -> String {
    let exp = (unix_now() as i64 + ttl_secs) as u64;
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "user-1", "exp": exp, "caps": caps}),
        &EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap()
}

fn token(caps: serde_json::Value) -> String {
    token_with(SECRET, caps, 3600)
}

/// A server requiring tokens signed with [`SECRET`] and pages from [`ORIGIN`]; the secret file
/// lives as long as the server.
fn server() -> (Server, tempfile::NamedTempFile) {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    secret.write_all(SECRET).unwrap();
    secret.write_all(b"\n").unwrap();
    let path = secret.path().display().to_string();
    let server = Server::start(&[
        "--threads",
        "2",
        "--token-hmac-secret-file",
        &path,
        "--allowed-origin",
        ORIGIN,
    ]);
    (server, secret)
}

/// The answer to an upgrade of `path` with `extra` header lines.
async fn upgrade_with(server: &Server, path: &str, extra: &str) -> HttpResponse {
    let request = String::from_utf8(upgrade_request(server.addr, path)).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1);
    let request = request.replace("\r\n\r\n\r\n", "\r\n\r\n");
    http_raw(server.addr, request.as_bytes()).await
}

/// A tokio-tungstenite client of `path_and_query`, with `headers`.
async fn ws_with(server: &Server, path_and_query: &str, headers: &[(&'static str, &str)]) -> Ws {
    let mut request = server.url(path_and_query).into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (ws, response) = within(STEP, "connect", tokio_tungstenite::connect_async(request))
        .await
        .unwrap_or_else(|e| panic!("connect {path_and_query}: {e}"));
    assert_eq!(response.status(), 101);
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_good_token_get_401_and_other_channels_403() {
    let (server, _secret) = server();
    let sub_news = json!([{"channels": ["news"], "allow": ["sub"]}]);
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(json!({"sub": "u", "exp": unix_now() + 60, "caps": sub_news}).to_string())
        )
    };
    let cases = [
        ("/news".to_owned(), "", 401, "token is required"),
        ("/news?token=garbage".to_owned(), "", 401, "invalid token"),
        (
            format!("/news?token={}", token_with(SECRET, sub_news.clone(), -5)),
            "",
            401,
            "token expired",
        ),
        (
            format!(
                "/news?token={}",
                token_with(b"another secret", sub_news.clone(), 60)
            ),
            "",
            401,
            "invalid token",
        ),
        (format!("/news?token={none}"), "", 401, "invalid token"),
        (
            format!("/sports?token={}", token(sub_news.clone())),
            "",
            403,
            "does not allow subscribing to \"sports\"",
        ),
        (
            format!("/news?token={}", token(sub_news.clone())),
            "Origin: https://evil.example",
            403,
            "origin https://evil.example not allowed",
        ),
    ];
    for (path, extra, status, reason) in &cases {
        let r = upgrade_with(&server, path, extra).await;
        assert_eq!(r.status, *status, "{path} {extra}: {}", r.body);
        assert!(
            r.body.contains(reason),
            "{path}: body {:?}, want {reason:?}",
            r.body
        );
    }
    let m = metrics(&server).await;
    assert_eq!(
        m["ringcast_handshake_failures_total{reason=\"unauthorized\"}"],
        5
    );
    assert_eq!(
        m["ringcast_handshake_failures_total{reason=\"forbidden\"}"],
        2
    );
    assert_eq!(m["ringcast_connections"], 0, "nothing was upgraded");
    // The same token from the allowed origin, or from no origin at all, is upgraded.
    let good = format!("/news?token={}", token(sub_news));
    let allowed = format!("Origin: {ORIGIN}");
    for extra in [allowed.as_str(), ""] {
        let head = upgrade_head(&server, &good, extra).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{extra:?}: {head}");
    }
}

/// The status line and headers of the answer to an upgrade (the connection stays open after
/// a 101, so only the head is read).
async fn upgrade_head(server: &Server, path: &str, extra: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = String::from_utf8(upgrade_request(server.addr, path)).unwrap();
    let request = request.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1);
    let request = request.replace("\r\n\r\n\r\n", "\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    within(STEP, "the answer's head", async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            head.push(byte[0]);
        }
    })
    .await;
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_token_with_pub_may_publish_and_the_rest_is_never_relayed() {
    let (server, _secret) = server();
    let reader_token =
        token(json!([{"channels": ["room.*"], "allow": ["sub"], "match": "wildcard"}]));
    let writer_token = token(json!([{"channels": ["room.lobby"], "allow": ["sub", "pub"]}]));
    let mut reader = ws(&server, &format!("/room.lobby?token={reader_token}")).await;
    let bearer = format!("Bearer {writer_token}");
    let mut writer = ws_with(&server, "/room.lobby", &[("Authorization", &bearer)]).await;
    let mut sneaky = ws(&server, &format!("/room.lobby?token={reader_token}")).await;
    wait_connections(&server, 3).await;

    send(&mut writer, Message::text("from the writer")).await;
    assert_eq!(
        next_data(&mut reader, "the writer's message").await,
        Message::text("from the writer")
    );
    assert_eq!(
        next_data(&mut sneaky, "the writer's message").await,
        Message::text("from the writer")
    );
    // A reader's data message closes it with 1008 and reaches nobody.
    send(&mut sneaky, Message::text("injected")).await;
    let close = close_frame(&mut sneaky, "the close").await;
    assert_eq!(u16::from(close.code), 1008);
    assert!(
        close.reason.contains("does not allow publishing"),
        "{}",
        close.reason
    );
    send(&mut writer, Message::text("after")).await;
    assert_eq!(
        next_data(&mut reader, "the next message").await,
        Message::text("after"),
        "the injected message was relayed"
    );
    assert_eq!(metric(&server, "messages_in_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_closed_when_its_token_expires() {
    let (server, _secret) = server();
    let short = token_with(SECRET, json!([{"channels": ["t"], "allow": ["sub"]}]), 2);
    let started = Instant::now();
    let mut raw = Raw::connect(server.addr, &format!("/t?token={short}")).await;
    let f = within(Duration::from_secs(10), "the close", async {
        loop {
            match raw.read_frame().await {
                Some(f) if f.opcode == ringcast_proto::frame::OpCode::Close => return f,
                Some(_) => continue,
                None => panic!("EOF without a close frame"),
            }
        }
    })
    .await;
    let after = started.elapsed();
    assert_eq!(f.close_code(), Some(1008));
    assert!(
        String::from_utf8_lossy(&f.payload[2..]).contains("token expired"),
        "reason {:?}",
        String::from_utf8_lossy(&f.payload[2..])
    );
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(5),
        "closed {after:?} after connecting with a token valid for 1-2 s"
    );
}

#[test]
fn anonymous_clients_are_refused_off_loopback_unless_allowed() {
    let out = run_bounded(
        Command::new(env!("CARGO_BIN_EXE_ringcast")).args(["--listen", "0.0.0.0:0"]),
        Duration::from_secs(10),
    )
    .expect("ringcast exits at once");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--allow-anonymous") && stderr.contains("without client tokens"),
        "stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "it must not have listened");
}

/// `--token-public-key-file` with an EC (ES256) and an RSA (RS256) public key: a token signed
/// with the matching private key is upgraded and may publish as its caps say; one signed with
/// the other key, or with the other algorithm, gets 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_key_tokens_are_verified_with_the_key_given() {
    let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keys");
    let sign = |algorithm: Algorithm, private: &str| {
        let pem = std::fs::read(format!("{keys}/{private}")).unwrap();
        let key = match algorithm {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => EncodingKey::from_rsa_pem(&pem).unwrap(),
        };
        let caps = json!([{"channels": ["k"], "allow": ["sub", "pub"]}]);
        encode(
            &Header::new(algorithm),
            &json!({"sub": "u", "exp": unix_now() + 600, "caps": caps}),
            &key,
        )
        .unwrap()
    };
    let es256 = sign(Algorithm::ES256, "ec-private.pem");
    let rs256 = sign(Algorithm::RS256, "rsa-private.pem");
    for (public, good, bad) in [
        ("ec-public.pem", &es256, &rs256),
        ("rsa-public.pem", &rs256, &es256),
    ] {
        let key = format!("{keys}/{public}");
        let server = Server::start(&["--threads", "1", "--token-public-key-file", &key]);
        let mut a = ws(&server, &format!("/k?token={good}")).await;
        let mut b = ws(&server, &format!("/k?token={good}")).await;
        wait_connections(&server, 2).await;
        send(&mut a, Message::text("signed")).await;
        assert_eq!(next_data(&mut b, public).await, Message::text("signed"));
        let r = upgrade_with(&server, &format!("/k?token={bad}"), "").await;
        assert_eq!(r.status, 401, "{public}: {}", r.body);
    }
}

/// `--admin-listen`: `/metrics` and the page answer there, and 404 (with the reason) on the
/// clients' port; the admin listener serves no WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_the_page_move_to_the_admin_listener() {
    let admin_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let server = Server::start(&["--threads", "1", "--admin-listen", &admin_addr.to_string()]);
    let mut a = ws(&server, "/adm").await;
    let _b = ws(&server, "/adm").await;
    send(&mut a, Message::text("x")).await;
    let get = |addr: std::net::SocketAddr, path: &str| {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        async move { http_raw(addr, request.as_bytes()).await }
    };
    let public = get(server.addr, "/metrics").await;
    assert_eq!(public.status, 404, "{}", public.body);
    assert!(public.body.contains("--admin-listen"), "{}", public.body);
    assert_eq!(get(server.addr, "/").await.status, 404);
    let within_admin = within(STEP, "two connections on the admin metrics", async {
        loop {
            let m = metrics_at(admin_addr).await;
            if m["ringcast_connections"] == 2 {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(within_admin["ringcast_messages_in_total"], 1);
    let page = get(admin_addr, "/").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("<title>"), "not the page: {}", page.body);
    let upgrade = http_raw(admin_addr, &upgrade_request(admin_addr, "/adm")).await;
    assert_eq!(upgrade.status, 404, "{}", upgrade.body);
}
