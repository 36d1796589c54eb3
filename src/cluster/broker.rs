//! The broker seam: what the cluster link needs from a pub/sub broker, so that a second broker
//! is one file, not a copy of the link.
//!
//! [`Broker`] is one connection (a session) to one broker. Everything around it is shared and
//! stays in [`super::link`]: connecting again with backoff when a session ends, taking every
//! channel's subscription again on the new session, the per-channel bookkeeping, cutting blocks
//! to the broker's message size, checking what comes back and handing it to the worker
//! threads, the memory-budget drops, the metrics and the warnings. An implementation only
//! speaks its broker's protocol through its client library.
//!
//! A session may also learn where the broker can be reached besides the `--cluster` URL (a
//! NATS server advertises the other servers of its cluster): the link asks it when the session
//! closes ([`Broker::failover`]) and hands that to the next connection attempt, so that failing
//! over to another server of the broker stays the broker's business while the reconnecting
//! stays the link's.
//!
//! Today: [`super::nats::Nats`] (NATS core pub/sub through async-nats). Adding one: a file
//! with a type implementing [`Broker`] (its URL schemes included), and its line in [`BROKERS`].

use super::link;
use super::nats::Nats;
use super::settings::ClusterConfig;
use futures_util::Stream;
use std::future::Future;

/// An error from a broker's client, for the log.
pub(super) type BrokerError = Box<dyn std::error::Error + Send + Sync>;

/// Why a connection attempt failed.
#[derive(Debug)]
pub(super) enum ConnectError {
    /// Tried again with backoff (the broker is down or unreachable, refused us, ...).
    Retry(BrokerError),
    /// Not worth trying again (an unreadable credentials file): the node serves its local
    /// channels only.
    Fatal(String),
}

/// What a session reports about its connection, for the link's state, metrics and log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BrokerEvent {
    /// The connection is up (again, if the client got it back itself after a
    /// [`BrokerEvent::Disconnected`], its subscriptions included).
    Connected,
    /// The connection is down; the client may still get it back itself.
    Disconnected,
    /// The session is over: its subscriptions end and it carries nothing more. The link drops
    /// it, connects again with backoff and subscribes every channel again.
    Closed,
    /// The client dropped messages from the broker because the link read them too slowly.
    SlowConsumer,
    /// Anything else worth a debug line.
    Other(String),
}

/// One session with a broker. The link runs on a current-thread runtime (in a `LocalSet`):
/// nothing here needs to be `Send`.
///
/// Dropping a [`Broker::Subscription`] unsubscribes; dropping the session closes it.
pub(super) trait Broker: Sized + 'static {
    /// The `--cluster` URL schemes that choose this broker, with their `://`.
    const SCHEMES: &'static [&'static str];
    /// The largest payload of one broker message, assumed until a session says otherwise
    /// ([`Broker::max_payload`]): the largest message a publisher may send is derived from it.
    const DEFAULT_MAX_PAYLOAD: usize;

    /// A subject (channel, topic) in the client's own type, made once per channel.
    type Subject: Clone + 'static;
    /// The payloads published on one subject, in order, until the session ends.
    type Subscription: Stream<Item: AsRef<[u8]>> + Unpin + 'static;
    /// What a session learned about where the broker can be reached next (for NATS, the
    /// servers of its cluster), kept by the link from the session that closed for the next
    /// connection attempts; `Default` (nothing learned) before the first session. A broker
    /// with one address only uses `()`.
    type Failover: Default + Clone + 'static;

    /// The subject named `name` (see [`super::subject`]).
    fn subject(name: String) -> Self::Subject;

    /// One attempt at a session with the broker at `config.url` or where `failover` (what the
    /// last session learned, see [`Broker::failover`]) says it also is, with `config`'s
    /// credentials, TLS and echo settings. It should not retry by itself: the link does, with
    /// backoff, and gives up on the attempt after a few seconds.
    fn connect(
        config: &ClusterConfig,
        failover: &Self::Failover,
    ) -> impl Future<Output = Result<Self, ConnectError>>;

    /// Where the broker can be reached, as far as this session knows; the link asks when the
    /// session closes and passes it to the next [`Broker::connect`].
    fn failover(&self) -> Self::Failover;

    /// Subscribes to `subject`.
    fn subscribe(
        &self,
        subject: Self::Subject,
    ) -> impl Future<Output = Result<Self::Subscription, BrokerError>>;

    /// Publishes one message. It may be only queued in the client: [`Broker::flush`] sends
    /// what is queued.
    fn publish(
        &self,
        subject: Self::Subject,
        payload: Vec<u8>,
    ) -> impl Future<Output = Result<(), BrokerError>>;

    /// Sends what the client has queued (before the node stops).
    fn flush(&self) -> impl Future<Output = Result<(), BrokerError>>;

    /// The largest payload one message carries on this session (what the broker says, or
    /// [`Broker::DEFAULT_MAX_PAYLOAD`]).
    fn max_payload(&self) -> usize;

    /// The next thing the session reports; must be cancel-safe (the link polls it in a
    /// `select!`). After [`BrokerEvent::Closed`] it is not called again.
    fn next_event(&mut self) -> impl Future<Output = BrokerEvent>;
}
/// A broker this build speaks: its URL schemes and the cluster link's thread running it.
pub(super) struct BrokerKind {
    pub(super) schemes: &'static [&'static str],
    pub(super) default_max_payload: usize,
    /// The link thread's body with this broker (see [`link::run`]).
    pub(super) run: fn(link::LinkParts),
}

impl BrokerKind {
    const fn of<B: Broker>() -> BrokerKind {
        BrokerKind {
            schemes: B::SCHEMES,
            default_max_payload: B::DEFAULT_MAX_PAYLOAD,
            run: link::run::<B>,
        }
    }

    /// The broker that the scheme of `url` chooses (and something after the scheme).
    pub(super) fn for_url(url: &str) -> Option<&'static BrokerKind> {
        BROKERS.iter().find(|kind| {
            kind.schemes
                .iter()
                .any(|scheme| url.starts_with(scheme) && url.len() > scheme.len())
        })
    }

    /// The URLs `--cluster` takes, for its error message: "nats://HOST:PORT or tls://HOST:PORT".
    pub(super) fn accepted() -> String {
        let all: Vec<String> = BROKERS
            .iter()
            .flat_map(|kind| kind.schemes)
            .map(|scheme| format!("{scheme}HOST:PORT"))
            .collect();
        match all.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        }
    }
}

impl std::fmt::Debug for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BrokerKind({})", self.schemes.join(" "))
    }
}

/// Every broker this build speaks, chosen by the `--cluster` URL's scheme: one line each.
pub(super) const BROKERS: &[BrokerKind] = &[BrokerKind::of::<Nats>()];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_scheme_chooses_the_broker() {
        for url in ["nats://127.0.0.1:4222", "tls://nats.example:4222"] {
            let kind = BrokerKind::for_url(url).map(|k| k.schemes);
            assert_eq!(kind, Some(Nats::SCHEMES), "{url}");
        }
        for url in ["nats://", "redis://127.0.0.1:6379", "127.0.0.1:4222", ""] {
            assert!(BrokerKind::for_url(url).is_none(), "{url}");
        }
        let bad = super::super::ClusterError::BadUrl {
            url: "redis://127.0.0.1:6379".into(),
            schemes: BrokerKind::accepted(),
        };
        assert_eq!(
            bad.to_string(),
            "--cluster must be a nats://HOST:PORT or tls://HOST:PORT URL, not \"redis://127.0.0.1:6379\""
        );
    }
}
