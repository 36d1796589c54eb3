//! The NATS broker (core pub/sub through async-nats): the one [`Broker`] today.
//!
//! Only what is NATS lives here: the client's options (connection name, `no_echo`, TLS,
//! credentials), its events in the link's terms, the broker's `max_payload` from its INFO, and
//! which servers to try. The reconnecting and resubscribing are the link's (see
//! [`super::broker`]): a session is one client, which after losing its connection tries each
//! server it knows once more at once (async-nats cannot be told to try zero times:
//! `max_reconnects(0)` means forever) and then closes.
//!
//! Failover: a NATS server of a cluster advertises its cluster's servers to clients (the
//! `connect_urls` of its INFO, kept up to date as servers come and go). A session remembers
//! the last list it was told ([`Broker::failover`]), and the next connection attempt tries the
//! `--cluster` URL and each of those servers (in async-nats's shuffled order, each once, with
//! the same TLS and credentials; advertised `host:port`s take the `--cluster` URL's scheme), so
//! a node whose server is gone goes on through another server of the cluster.

use super::broker::{Broker, BrokerError, BrokerEvent, ConnectError};
use super::settings::{ClusterConfig, Credentials};
use async_nats::{
    Client, ClientError, ConnectOptions, Event, Message, ServerAddr, Subject, Subscriber,
};
use futures_util::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A session with a NATS server: one async-nats client and its events.
pub(super) struct Nats {
    client: Client,
    events: mpsc::UnboundedReceiver<Event>,
}

/// One subject's messages, as payloads.
pub(super) struct Payloads(Subscriber);

/// A message's payload.
pub(super) struct Payload(Message);

impl AsRef<[u8]> for Payload {
    fn as_ref(&self) -> &[u8] {
        &self.0.payload
    }
}

impl Stream for Payloads {
    type Item = Payload;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Payload>> {
        Pin::new(&mut self.0).poll_next(cx).map(|m| m.map(Payload))
    }
}

impl Broker for Nats {
    const SCHEMES: &'static [&'static str] = &["nats://", "tls://"];
    /// NATS servers carry at most this many bytes per message unless configured otherwise.
    const DEFAULT_MAX_PAYLOAD: usize = 1 << 20;

    type Subject = Subject;
    type Subscription = Payloads;
    /// The servers the broker advertised to the last session (`host:port`, or URLs).
    type Failover = Vec<String>;

    fn subject(name: String) -> Subject {
        Subject::from(name)
    }

    async fn connect(
        config: &ClusterConfig,
        advertised: &Vec<String>,
    ) -> Result<Nats, ConnectError> {
        let servers = servers(&config.url, advertised)?;
        let (sender, events) = mpsc::unbounded_channel();
        let mut options = ConnectOptions::new()
            .name(&config.node_name)
            // async-nats counts one attempt per server tried, the first connection's included:
            // each server once.
            .max_reconnects(servers.len())
            .reconnect_delay_callback(|_| Duration::ZERO)
            .connection_timeout(CONNECT_TIMEOUT)
            .event_callback(move |event| {
                // The receiver is gone only once the session is dropped.
                let _ = sender.send(event);
                async {}
            });
        if !config.through_broker {
            options = options.no_echo();
        }
        if config.url.starts_with("tls://") {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        options = match &config.credentials {
            Credentials::None => options,
            Credentials::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => options.token(token.clone()),
            Credentials::CredsFile(path) => {
                options.credentials_file(path).await.map_err(|err| {
                    ConnectError::Fatal(format!(
                        "cannot read the credentials file {}: {err}",
                        path.display()
                    ))
                })?
            }
        };
        match options.connect(servers).await {
            Ok(client) => Ok(Nats { client, events }),
            Err(err) => Err(ConnectError::Retry(err.into())),
        }
    }

    async fn subscribe(&self, subject: Subject) -> Result<Payloads, BrokerError> {
        Ok(Payloads(self.client.subscribe(subject).await?))
    }

    async fn publish(&self, subject: Subject, payload: Vec<u8>) -> Result<(), BrokerError> {
        Ok(self.client.publish(subject, payload.into()).await?)
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(self.client.flush().await?)
    }

    /// The `connect_urls` of the server's INFO, which the client keeps up to date (and keeps
    /// after the connection is gone).
    fn failover(&self) -> Vec<String> {
        self.client.server_info().connect_urls
    }

    /// From the server's INFO, which the client keeps up to date.
    fn max_payload(&self) -> usize {
        match self.client.server_info().max_payload {
            0 => Self::DEFAULT_MAX_PAYLOAD,
            n => n,
        }
    }

    async fn next_event(&mut self) -> BrokerEvent {
        // The events end when the client's connection task does (it gave up reconnecting).
        let Some(event) = self.events.recv().await else {
            return BrokerEvent::Closed;
        };
        match event {
            Event::Connected => BrokerEvent::Connected,
            Event::Disconnected => BrokerEvent::Disconnected,
            Event::Closed | Event::ClientError(ClientError::MaxReconnects) => BrokerEvent::Closed,
            Event::SlowConsumer(_) => BrokerEvent::SlowConsumer,
            other => BrokerEvent::Other(other.to_string()),
        }
    }
}

/// The servers one connection attempt tries: the `--cluster` URL, then each server the broker
/// advertised that is not already in the list. An advertised `host:port` takes the scheme of
/// `url` (`tls://` keeps TLS required of it); one that does not parse is left out.
fn servers(url: &str, advertised: &[String]) -> Result<Vec<ServerAddr>, ConnectError> {
    let first: ServerAddr = url
        .parse()
        .map_err(|err| ConnectError::Fatal(format!("--cluster {url:?}: {err}")))?;
    let scheme = if url.starts_with("tls://") {
        "tls://"
    } else {
        "nats://"
    };
    let mut servers = vec![first];
    for server in advertised {
        let parsed = if server.contains("://") {
            server.parse::<ServerAddr>()
        } else {
            format!("{scheme}{server}").parse()
        };
        match parsed {
            // WebSocket URLs are left out: async-nats cannot mix them with nats:// and tls://.
            Ok(addr) if addr.is_websocket() || servers.contains(&addr) => {}
            Ok(addr) => servers.push(addr),
            Err(err) => tracing::debug!("cluster: an advertised server {server:?}: {err}"),
        }
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::super::broker::BROKERS;
    use super::*;
    use futures_util::StreamExt;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::time::Instant;

    fn urls(servers: &[ServerAddr]) -> Vec<&str> {
        servers.iter().map(ServerAddr::as_url_str).collect()
    }

    #[test]
    fn an_attempt_tries_the_cluster_url_then_each_advertised_server_once() {
        let none = servers("nats://127.0.0.1:4222", &[]).expect("servers");
        assert_eq!(urls(&none), ["nats://127.0.0.1:4222"]);

        let advertised: Vec<String> = [
            "127.0.0.1:4222",
            "127.0.0.1:4223",
            "[::1]:4224",
            "nats.example:4225",
            "tls://other.example:4226",
            "ws://127.0.0.1:8080",
            "not a server:4227",
            "127.0.0.1:4223",
        ]
        .map(String::from)
        .into();
        let all = servers("nats://127.0.0.1:4222", &advertised).expect("servers");
        assert_eq!(
            urls(&all),
            [
                "nats://127.0.0.1:4222",
                "nats://127.0.0.1:4223",
                "nats://[::1]:4224",
                "nats://nats.example:4225",
                "tls://other.example:4226",
            ]
        );

        // Over TLS, the advertised servers are reached over TLS too.
        let advertised = ["nats.example:4222", "10.0.0.2:4222"].map(String::from);
        let tls = servers("tls://nats.example:4222", &advertised).expect("servers");
        assert_eq!(
            urls(&tls),
            ["tls://nats.example:4222", "tls://10.0.0.2:4222"]
        );
        assert!(tls.iter().all(ServerAddr::tls_required));

        assert!(matches!(
            servers("nats://bad host:4222", &[]),
            Err(ConnectError::Fatal(_))
        ));
    }

    /// A nats-server of a two-server cluster, killed (by PID) when dropped.
    struct ClusterServer {
        child: Child,
        port: u16,
    }

    impl Drop for ClusterServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port")
    }

    /// Debian's nats-server (on the PATH or in /usr/sbin), as `tests/cluster.rs` uses.
    fn nats_server() -> std::path::PathBuf {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .chain(["/usr/sbin", "/usr/local/bin"])
            .map(|dir| std::path::Path::new(dir).join("nats-server"))
            .find(|path| path.exists())
            .expect("nats-server (scripts/test installs it, or apt-get install nats-server)")
    }

    /// Starts a server on `port` with its route port `route`, routed to `peer`, and waits
    /// until it takes clients.
    fn cluster_server(port: u16, route: u16, peer: u16) -> ClusterServer {
        let child = Command::new(nats_server())
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["--cluster_name", "ringcast-failover"])
            .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
            .args(["--routes", &format!("nats://127.0.0.1:{peer}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let server = ClusterServer { child, port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn config(port: u16, name: &str) -> ClusterConfig {
        ClusterConfig {
            url: format!("nats://127.0.0.1:{port}"),
            broker: &BROKERS[0],
            node_name: name.into(),
            node_id: 1,
            through_broker: false,
            queue_bytes: 1 << 20,
            prefix: "ringcast".into(),
            max_message: 1 << 16,
            credentials: Credentials::None,
            ca_file: None,
        }
    }

    /// A node whose `--cluster` server dies goes on through another server of the NATS
    /// cluster, which the dead one advertised: the link's next attempt, given what the closed
    /// session remembered, reaches it, and messages from that server's clients come through.
    #[tokio::test(flavor = "current_thread")]
    async fn a_session_remembers_the_cluster_and_the_next_one_fails_over() {
        let (a_port, b_port, a_route, b_route) =
            (free_port(), free_port(), free_port(), free_port());
        let a = cluster_server(a_port, a_route, b_route);
        let _b = cluster_server(b_port, b_route, a_route);
        let b_advertised = format!("127.0.0.1:{b_port}");
        let on_a = config(a.port, "on-a");

        // A advertises B once their route is up.
        let mut session = Nats::connect(&on_a, &Vec::new())
            .await
            .expect("a session with A");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !session.failover().contains(&b_advertised) {
            assert!(
                Instant::now() < deadline,
                "A never advertised B: {:?}",
                session.failover()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        drop(a);
        // The session ends (or gets B back by itself); either way it still knows B.
        let over = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match session.next_event().await {
                    BrokerEvent::Closed | BrokerEvent::Connected => break,
                    _ => {}
                }
            }
        })
        .await;
        assert!(over.is_ok(), "the session never noticed that A is gone");
        let failover = session.failover();
        assert!(failover.contains(&b_advertised), "{failover:?}");
        drop(session);

        // The --cluster URL alone leads nowhere now; with what the session remembered, B.
        assert!(Nats::connect(&on_a, &Vec::new()).await.is_err());
        let node = Nats::connect(&on_a, &failover)
            .await
            .expect("a session with B");
        assert_eq!(node.client.server_info().port, b_port);

        // And it relays: a message published at B by another node reaches it.
        let subject = Nats::subject("ringcast.ch.%2Ffailover".into());
        let mut messages = node.subscribe(subject.clone()).await.expect("subscribe");
        node.flush().await.expect("flush");
        let other = Nats::connect(&config(b_port, "on-b"), &Vec::new())
            .await
            .expect("on B");
        other
            .publish(subject, b"through B".to_vec())
            .await
            .expect("publish");
        other.flush().await.expect("flush");
        let got = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let payload = got.ok().flatten().expect("the message through B");
        assert_eq!(payload.as_ref(), b"through B");
    }
}
