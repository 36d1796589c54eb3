//! How a run's clients speak, decided once per session from its [`RunSpec`]: the request
//! target of each connection, what it sends after its upgrade ([`Join`]), how the reader parses
//! its bytes ([`Wire`]), how publishers publish ([`PublishEncoder`]; through the HTTP API, on
//! their own connections).
//!
//! Why it exists: the session opens connections and runs steps whatever the protocol; the
//! protocol's choices live here, in one place, instead of as branches through the session.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use crate::load::centrifugo::{channel_name, DataTemplate, Join, PublishEncoder};
use crate::load::client::Target;
use crate::load::http_api::{self, ApiEndpoint};
use crate::load::pacer::PublisherSocket;
use crate::load::reader::{ReaderConn, Role, Wire};
use crate::load::recorder::Topology;
use crate::load::session::SessionError;
use crate::load::spec::{Protocol, PublishVia, RunSpec};
use crate::load::topology::Placement;

/// How a run's clients speak, decided once for the session: what a connection sends after its
/// upgrade, how its bytes are read, and how publishers publish.
pub struct Clients {
    protocol: Protocol,
    /// Each channel's subscriber set-up (Centrifugo).
    subscribe: Vec<Arc<Join>>,
    /// A client publisher's set-up (Centrifugo).
    pub connect: Option<Arc<Join>>,
    /// Where publishers' API requests go (`--publish-via api`), by server.
    pub api: Option<Vec<ApiEndpoint>>,
}

impl Clients {
    pub fn new(spec: &RunSpec, targets: &[Target]) -> Result<Clients, SessionError> {
        let token = spec.client_token.as_deref();
        let channels = spec.channels.max(1);
        let centrifugo = spec.protocol == Protocol::Centrifugo;
        let api = centrifugo && spec.publish_via == PublishVia::Api;
        Ok(Clients {
            protocol: spec.protocol,
            subscribe: if centrifugo {
                (0..channels)
                    .map(|ch| Arc::new(Join::new(token, Some(&channel_name(ch, channels)))))
                    .collect()
            } else {
                Vec::new()
            },
            connect: (centrifugo && !api).then(|| Arc::new(Join::new(token, None))),
            api: if api {
                Some(
                    targets
                        .iter()
                        .map(|t| ApiEndpoint::new(spec.api_url.as_deref(), t))
                        .collect::<Result<_, _>>()
                        .map_err(|e| SessionError::Io(std::io::Error::other(e)))?,
                )
            } else {
                None
            },
        })
    }

    /// The request target of a connection to `target` for channel `ch`: the channel's path
    /// (relay), or the endpoint itself (Centrifugo).
    pub fn path(&self, target: &Target, ch: u32, channels: u32) -> String {
        match self.protocol {
            Protocol::Relay => target.channel_path(ch, channels),
            Protocol::Centrifugo => target.request_path(),
        }
    }

    pub fn subscriber_join(&self, ch: u32) -> Option<Arc<Join>> {
        self.subscribe.get(ch as usize).cloned()
    }

    pub fn wire(&self) -> Wire {
        match self.protocol {
            Protocol::Relay => Wire::Relay,
            Protocol::Centrifugo => Wire::Centrifugo,
        }
    }

    /// What the pacer sends: relay frames (`None`), or Centrifugo's commands or API requests.
    pub fn encoder(
        &self,
        spec: &RunSpec,
        body: &[u8],
    ) -> Result<Option<PublishEncoder>, SessionError> {
        if self.protocol == Protocol::Relay {
            return Ok(None);
        }
        let data = DataTemplate::new(spec.size, body);
        let channels = spec.channels.max(1);
        match self.api.as_ref().and_then(|a| a.first()) {
            None => Ok(Some(PublishEncoder::client(channels, data))),
            Some(endpoint) => {
                let key = match &spec.api_key_file {
                    Some(path) => Some(
                        http_api::read_key(path)
                            .map_err(|e| SessionError::Io(std::io::Error::other(e)))?,
                    ),
                    None => None,
                };
                Ok(Some(PublishEncoder::api(
                    channels,
                    data,
                    endpoint,
                    key.as_deref(),
                )))
            }
        }
    }

    /// Connects the publishers of `publishers` to the HTTP API (`--publish-via api`; nothing to
    /// do otherwise): each publisher's socket to the pacer, a clone to a reader (round-robin
    /// over `per_reader`) for the responses.
    pub fn connect_api_publishers(
        &self,
        publishers: &Range<u32>,
        placement: &Placement,
        topology: &Topology,
        timeout: Duration,
        per_reader: &mut [Vec<ReaderConn>],
        pub_sockets: &mut Vec<PublisherSocket>,
    ) -> Result<(), SessionError> {
        let Some(endpoints) = &self.api else {
            return Ok(());
        };
        let threads = per_reader.len().max(1);
        for (k, p) in publishers.clone().enumerate() {
            let endpoint = endpoints
                .get(placement.publisher_target(p) as usize)
                .or(endpoints.first())
                .ok_or_else(|| std::io::Error::other("no server for the API"))?;
            let stream = endpoint.connect(timeout).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("publisher {p}: HTTP API at {}: {e}", endpoint.addr),
                )
            })?;
            if let Some(conns) = per_reader.get_mut(k % threads) {
                conns.push(ReaderConn {
                    stream: stream.try_clone()?,
                    role: Role::Publisher,
                    leftover: Vec::new(),
                    deflate: false,
                    wire: Wire::HttpApi,
                    write_lock: None,
                });
            }
            pub_sockets.push(PublisherSocket {
                stream,
                id: p,
                channel: topology.channel_of_publisher(p),
                write_lock: None,
            });
        }
        Ok(())
    }
}
