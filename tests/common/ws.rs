//! tokio-tungstenite clients: a well-behaved WebSocket peer, connected to a channel, that
//! answers pings as it reads.

use super::{within, Server, STEP};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A tokio-tungstenite client on `path`.
pub async fn ws(server: &Server, path: &str) -> Ws {
    let url = server.url(path);
    let (ws, response) = within(STEP, &format!("connect {url}"), async {
        tokio_tungstenite::connect_async(url.as_str())
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"))
    })
    .await;
    assert_eq!(response.status(), 101);
    ws
}

/// The next data message (pings and pongs are skipped; a close or an error panics).
pub async fn next_data(ws: &mut Ws, what: &str) -> Message {
    within(STEP, what, async {
        loop {
            match ws.next().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return m,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{what}: expected a data message, got {other:?}"),
            }
        }
    })
    .await
}

/// The close frame the server sends next (data before it is skipped; the stream ending, an
/// error or a close without a code panics).
pub async fn close_frame(
    ws: &mut Ws,
    what: &str,
) -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    within(STEP, what, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(Some(frame)))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("{what}: expected a close frame, got {other:?}"),
            }
        }
    })
    .await
}

/// Asserts nothing arrives on `ws` for `quiet`.
pub async fn assert_silent(ws: &mut Ws, quiet: Duration, what: &str) {
    if let Ok(m) = tokio::time::timeout(quiet, ws.next()).await {
        panic!("{what}: expected nothing, got {m:?}");
    }
}

/// Sends a message, flushing it.
pub async fn send(ws: &mut Ws, m: Message) {
    within(STEP, "send", ws.send(m)).await.expect("send");
}
