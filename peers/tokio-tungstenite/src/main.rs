//! Relay-protocol peer server on tokio + tokio-tungstenite: the usual epoll design.
//!
//! Why this exists: ringcast is compared against the servers its users run today,
//! and this is how a Rust user would write a broadcast server without io_uring:
//! a tokio runtime (`current_thread` by default, `--threads N` for the
//! multi-thread scheduler), one `tokio::sync::broadcast` channel per channel name
//! (the request path) in a `Mutex<HashMap>`, and per connection a reader that
//! publishes each received message tagged with the sender's id and a writer that
//! forwards every message except its own.
//!
//! The writer feeds every message already queued for it before flushing (as
//! `StreamExt::forward` does), so one socket write carries all of them. A
//! receiver that lags past the broadcast capacity is closed and logged: the
//! relay protocol forbids silent drops.
//!
//! Usage: `peer-tokio-tungstenite PORT [--threads N]` (binds 127.0.0.1:PORT).

use std::collections::HashMap;
use std::error::Error;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast::{self, error::RecvError, error::TryRecvError};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Messages a receiver may fall behind before it is closed as lagging.
const CHANNEL_CAPACITY: usize = 65536;

/// A relayed message and the id of the connection that sent it.
type Tagged = (u64, Message);

/// Channel name (request path) to its broadcast sender.
type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Tagged>>>>;

type BoxError = Box<dyn Error + Send + Sync>;

/// Command line: the port and the number of runtime threads (0 = current_thread).
struct Args {
    port: u16,
    threads: usize,
}

fn usage() -> BoxError {
    "usage: peer-tokio-tungstenite PORT [--threads N]".into()
}

fn parse_args() -> Result<Args, BoxError> {
    let mut port = None;
    let mut threads = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--threads" {
            let n = args.next().ok_or_else(usage)?;
            threads = n.parse().map_err(|_| usage())?;
        } else if let Some(n) = arg.strip_prefix("--threads=") {
            threads = n.parse().map_err(|_| usage())?;
        } else if port.is_none() {
            port = Some(arg.parse().map_err(|_| usage())?);
        } else {
            return Err(usage());
        }
    }
    Ok(Args {
        port: port.ok_or_else(usage)?,
        threads,
    })
}

fn main() {
    if let Err(e) = run() {
        eprintln!("peer-tokio-tungstenite: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), BoxError> {
    let args = parse_args()?;
    let runtime = if args.threads == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args.port))
}

async fn serve(port: u16) -> Result<(), BoxError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    println!("listening on {addr}");

    let channels: Channels = Arc::new(Mutex::new(HashMap::new()));
    let next_id = AtomicU64::new(0);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;

    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = next_id.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(connection(stream, id, Arc::clone(&channels)));
                }
                Err(e) => eprintln!("accept failed: {e}"),
            },
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    // Returning drops the runtime, which cancels every connection task.
    Ok(())
}

/// Serve one client until it leaves; errors are logged, never fatal to the server.
async fn connection(stream: TcpStream, id: u64, channels: Channels) {
    if let Err(e) = relay(stream, id, &channels).await {
        eprintln!("connection {id}: {e}");
    }
}

async fn relay(stream: TcpStream, id: u64, channels: &Channels) -> Result<(), BoxError> {
    stream.set_nodelay(true)?;
    let mut path = String::new();
    // The error type is tungstenite's `ErrorResponse`, fixed by its `Callback` trait.
    #[allow(clippy::result_large_err)]
    let keep_path = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let ws = tokio_tungstenite::accept_hdr_async(stream, keep_path).await?;

    let (tx, rx) = {
        let mut map = channels.lock().unwrap_or_else(PoisonError::into_inner);
        let tx = map
            .entry(path.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .clone();
        let rx = tx.subscribe();
        (tx, rx)
    };

    let result = pump(ws, id, &tx, rx).await;

    // `rx` is gone now; forget the channel once nobody is subscribed to it.
    let mut map = channels.lock().unwrap_or_else(PoisonError::into_inner);
    if map.get(&path).is_some_and(|t| t.receiver_count() == 0) {
        map.remove(&path);
    }
    result
}

/// Run the reader and the writer of one connection until either ends.
async fn pump(
    ws: WebSocketStream<TcpStream>,
    id: u64,
    tx: &broadcast::Sender<Tagged>,
    mut rx: broadcast::Receiver<Tagged>,
) -> Result<(), BoxError> {
    let (mut sink, mut stream) = ws.split();

    let reader = async {
        while let Some(msg) = stream.next().await {
            match msg? {
                msg @ (Message::Text(_) | Message::Binary(_)) => {
                    // Cannot fail: this connection's own receiver is subscribed.
                    let _ = tx.send((id, msg));
                }
                Message::Close(_) => break,
                // Pings are answered by tungstenite itself.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
        Ok::<(), BoxError>(())
    };

    let writer = async {
        loop {
            let mut lagged = None;
            match rx.recv().await {
                Ok((from, msg)) if from != id => sink.feed(msg).await?,
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => lagged = Some(n),
                Err(RecvError::Closed) => return Ok(()),
            }
            // Everything else already queued goes out in the same write.
            while lagged.is_none() {
                match rx.try_recv() {
                    Ok((from, msg)) if from != id => sink.feed(msg).await?,
                    Ok(_) => {}
                    Err(TryRecvError::Lagged(n)) => lagged = Some(n),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => return Ok(()),
                }
            }
            if let Some(n) = lagged {
                eprintln!("connection {id}: lagged {n} messages behind, closing it");
                let frame = CloseFrame {
                    code: CloseCode::Again,
                    reason: "receiver lagged behind".into(),
                };
                sink.send(Message::Close(Some(frame))).await?;
                return Ok(());
            }
            sink.flush().await?;
        }
    };

    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}
