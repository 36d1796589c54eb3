//! A broker in memory, for the tests of what the link does whatever the broker: reconnecting
//! with backoff (where the closed session said the broker also is), resubscribing every
//! channel on a new session, delivering what a subscription brings to the worker threads. It is also the smallest [`Broker`]: a new one starts like
//! this.

use super::broker::{Broker, BrokerError, BrokerEvent, ConnectError, BROKERS};
use super::envelope;
use super::link::{self, LinkParts};
use super::settings::{ClusterConfig, Credentials};
use crate::fanout::block::BlockEncoder;
use crate::fanout::inbox;
use crate::fanout::registry::Registry;
use crate::telemetry::metrics::Metrics;
use futures_util::Stream;
use ringcast_proto::frame::OpCode;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};

/// The broker's side, shared with the test: one test uses it.
#[derive(Default)]
struct World {
    /// Connection attempts still to refuse.
    refuse: usize,
    /// Attempts made, refused ones included.
    attempts: usize,
    /// What each attempt was told about where the broker also is (see [`Broker::failover`]).
    failovers: Vec<Vec<String>>,
    /// Per session: its events' sender, and its subscriptions.
    sessions: Vec<(mpsc::UnboundedSender<BrokerEvent>, Vec<Subscribed>)>,
    /// What was published: (session, subject, payload).
    published: Vec<(usize, String, Vec<u8>)>,
}

/// A subscription at the fake broker: its subject, and the sender of its payloads.
type Subscribed = (String, mpsc::UnboundedSender<Vec<u8>>);

static WORLD: Mutex<Option<World>> = Mutex::new(None);

fn world() -> MutexGuard<'static, Option<World>> {
    WORLD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the world (made on first use).
fn with_world<T>(f: impl FnOnce(&mut World) -> T) -> T {
    f(world().get_or_insert_with(World::default))
}

struct Fake {
    session: usize,
    events: mpsc::UnboundedReceiver<BrokerEvent>,
}

struct Payloads(mpsc::UnboundedReceiver<Vec<u8>>);

impl Stream for Payloads {
    type Item = Vec<u8>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Vec<u8>>> {
        self.0.poll_recv(cx)
    }
}

impl Broker for Fake {
    const SCHEMES: &'static [&'static str] = &["fake://"];
    const DEFAULT_MAX_PAYLOAD: usize = 1 << 16;
    type Subject = String;
    type Subscription = Payloads;
    /// Where the broker also is: a session says `fake://elsewhere-N`, N its number.
    type Failover = Vec<String>;

    fn subject(name: String) -> String {
        name
    }

    async fn connect(_: &ClusterConfig, failover: &Vec<String>) -> Result<Fake, ConnectError> {
        with_world(|world| {
            world.attempts += 1;
            world.failovers.push(failover.clone());
            if world.refuse > 0 {
                world.refuse -= 1;
                return Err(ConnectError::Retry("refused".into()));
            }
            let (sender, events) = mpsc::unbounded_channel();
            world.sessions.push((sender, Vec::new()));
            Ok(Fake {
                session: world.sessions.len() - 1,
                events,
            })
        })
    }

    async fn subscribe(&self, subject: String) -> Result<Payloads, BrokerError> {
        let (sender, payloads) = mpsc::unbounded_channel();
        with_world(|world| world.sessions[self.session].1.push((subject, sender)));
        Ok(Payloads(payloads))
    }

    async fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), BrokerError> {
        with_world(|world| world.published.push((self.session, subject, payload)));
        Ok(())
    }

    async fn flush(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    fn failover(&self) -> Vec<String> {
        vec![format!("fake://elsewhere-{}", self.session)]
    }

    fn max_payload(&self) -> usize {
        Self::DEFAULT_MAX_PAYLOAD
    }

    async fn next_event(&mut self) -> BrokerEvent {
        self.events.recv().await.unwrap_or(BrokerEvent::Closed)
    }
}

/// Waits (up to 5 s) until `done` holds of the world.
fn wait_for(what: &str, done: impl Fn(&World) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !with_world(|world| done(world)) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The subjects session `n` subscribed to.
fn subjects(world: &World, n: usize) -> Vec<String> {
    world
        .sessions
        .get(n)
        .map(|(_, subs)| subs.iter().map(|(subject, _)| subject.clone()).collect())
        .unwrap_or_default()
}

#[test]
fn the_link_reconnects_with_backoff_resubscribes_and_delivers_whatever_the_broker() {
    with_world(|world| world.refuse = 2);
    let metrics = Arc::new(Metrics::new(1));
    let (events_in, events) = mpsc::unbounded_channel();
    let registry = Registry::with_events(metrics.clone(), events_in);
    let (_queue, outgoing) = inbox::inbox(1 << 20);
    let (worker, mut worker_inbox) = inbox::inbox(1 << 20);
    let (stop, stopped) = watch::channel(false);
    let config = ClusterConfig {
        url: "fake://test".into(),
        broker: &BROKERS[0],
        node_name: "test".into(),
        node_id: 7,
        through_broker: false,
        queue_bytes: 1 << 20,
        prefix: "ringcast".into(),
        max_message: 1 << 16,
        credentials: Credentials::None,
        ca_file: None,
    };
    let parts = LinkParts {
        config,
        events,
        outgoing,
        inboxes: vec![worker],
        metrics: metrics.clone(),
        stop: stopped,
    };
    let thread = std::thread::spawn(|| link::run::<Fake>(parts));
    let name: Arc<str> = Arc::from("/a");
    let _shared = registry.join(&name, 0);

    // Two refused attempts, then a session that takes the channel's subscription.
    wait_for("the first subscription", |w| {
        subjects(w, 0) == ["ringcast.ch.%2Fa"]
    });
    assert_eq!(with_world(|w| w.attempts), 3);
    assert!(metrics.cluster.connected.load(Ordering::Relaxed));

    // A block from another node reaches the worker thread with the channel's subscribers.
    let mut encoder = BlockEncoder::default();
    encoder.push(OpCode::Text, b"from afar");
    let block = encoder.finish(1).expect("a block");
    let payload = envelope::encode(99, 1, block.frames(), block.bytes());
    with_world(|w| w.sessions[0].1[0].1.send(payload.clone())).expect("a subscription");
    let deadline = Instant::now() + Duration::from_secs(5);
    let forward = loop {
        if let Ok(forward) = worker_inbox.try_recv() {
            break forward;
        }
        assert!(Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(forward.block.bytes(), block.bytes());
    assert_eq!(forward.channel.name(), &name);

    // The session ends: the link connects again, where the session said the broker also is,
    // and subscribes the channel again.
    with_world(|w| w.sessions[0].0.send(BrokerEvent::Closed)).expect("a session");
    wait_for("the subscription on the new session", |w| {
        subjects(w, 1) == ["ringcast.ch.%2Fa"]
    });
    let told: Vec<Vec<String>> = vec![vec![], vec![], vec![], vec!["fake://elsewhere-0".into()]];
    assert_eq!(with_world(|w| w.failovers.clone()), told);
    assert_eq!(metrics.cluster.reconnects.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.cluster.subscribed_channels.load(Ordering::Relaxed),
        1
    );

    let _ = stop.send(true);
    thread.join().expect("the link's thread");
}
