//! The NATS broker (core pub/sub through async-nats): the one [`Broker`] today.
//!
//! Only what is NATS lives here: the client's options (connection name, `no_echo`, TLS,
//! credentials), its events in the link's terms, and the broker's `max_payload` from its INFO.
//! The reconnecting and resubscribing are the link's (see [`super::broker`]): a session is one
//! client, which after losing its connection tries once more at once (async-nats cannot be
//! told to try zero times: `max_reconnects(0)` means forever) and then closes.

use super::broker::{Broker, BrokerError, BrokerEvent, ConnectError};
use super::settings::{ClusterConfig, Credentials};
use async_nats::{Client, ClientError, ConnectOptions, Event, Message, Subject, Subscriber};
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

    fn subject(name: String) -> Subject {
        Subject::from(name)
    }

    async fn connect(config: &ClusterConfig) -> Result<Nats, ConnectError> {
        let (sender, events) = mpsc::unbounded_channel();
        let mut options = ConnectOptions::new()
            .name(&config.node_name)
            .max_reconnects(1)
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
        match options.connect(config.url.as_str()).await {
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
