//! The runtime: one OS thread per core, each with its own tokio-uring runtime, its own
//! SO_REUSEPORT listener (the kernel spreads connections over them), and its own channels.
//!
//! [`Server::bind`] opens the listeners (port 0 becomes one free port shared by all threads);
//! [`Server::run`] starts the workers and serves until the `shutdown` future it is given
//! completes, then stops accepting, sends close 1001 to every client, waits up to
//! `--shutdown-timeout` for them to finish the closing handshake, and returns.

use crate::accept;
use crate::access::token::KeyError;
use crate::access::Access;
use crate::admission::Admission;
use crate::cluster::{ClusterConfig, ClusterError, ClusterLink};
use crate::config::Config;
use crate::connection::outbound::Ring;
use crate::connection::Connections;
use crate::fanout::channel::WindowPolicy;
use crate::fanout::compressed::{self, DeflateSettings};
use crate::fanout::history::{Histories, Retention};
use crate::fanout::inbox::{self, InboxReceiver, InboxSender};
use crate::fanout::registry::Registry;
use crate::fanout::uplink::Uplink;
use crate::fanout::FanOut;
use crate::telemetry::metrics::Metrics;
use crate::worker::Worker;
use socket2::{Domain, Protocol, Socket, Type};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio_uring::net::TcpListener;

/// Errors that stop the server.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker thread {index}: {source}")]
    Spawn { index: usize, source: io::Error },
    #[error("worker thread {index} failed: {source}")]
    Worker { index: usize, source: io::Error },
    #[error("worker thread {index} panicked")]
    Panicked { index: usize },
    #[error("cannot start the signal runtime: {0}")]
    Runtime(io::Error),
    #[error("cannot start the admin listener's thread: {0}")]
    Admin(io::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("client tokens: {0}")]
    Key(#[from] KeyError),
    #[error(
        "refusing to listen on {0} without client tokens: anyone who reaches it could read and \
         publish on every channel. Give --token-hmac-secret-file or --token-public-key-file, or \
         --allow-anonymous to serve anyone"
    )]
    Unprotected(SocketAddr),
}

/// A bound, not yet running server.
#[derive(Debug)]
pub struct Server {
    config: Arc<Config>,
    listeners: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
    cluster: Option<ClusterConfig>,
    access: Arc<Access>,
    /// `--admin-listen`, bound.
    admin: Option<std::net::TcpListener>,
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// Fails with `AddrInUse` if anything already listens on `addr`, including another ringcast,
/// whose SO_REUSEPORT group our listeners would otherwise silently join (the kernel would then
/// split new connections between the two processes). Returns `addr` with its port (port 0
/// picks a free one). SO_REUSEADDR, as on the listeners, so that connections of an earlier run
/// still in TIME_WAIT do not count.
fn claim_port(addr: SocketAddr) -> io::Result<SocketAddr> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())?;
    probe
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("bound to a non-IP address"))
}

impl Server {
    /// Opens one listener per worker thread on `config.listen`.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        crate::connection::note_start();
        let threads = config.worker_threads();
        let cluster = ClusterConfig::from_config(&config)?;
        let access = Access::from_config(&config)?;
        if !config.listen.ip().is_loopback() && !access.requires_tokens() && !config.allow_anonymous
        {
            return Err(ServerError::Unprotected(config.listen));
        }
        let bind_err = |addr, source| ServerError::Bind { addr, source };
        let addr = claim_port(config.listen).map_err(|e| bind_err(config.listen, e))?;
        let first = reuseport_listener(addr).map_err(|e| bind_err(config.listen, e))?;
        let local_addr = first.local_addr().map_err(|e| bind_err(config.listen, e))?;
        let mut listeners = vec![first];
        for _ in 1..threads {
            listeners.push(reuseport_listener(local_addr).map_err(|e| bind_err(local_addr, e))?);
        }
        let admin = match config.admin_listen {
            Some(addr) => Some(std::net::TcpListener::bind(addr).map_err(|e| bind_err(addr, e))?),
            None => None,
        };
        Ok(Server {
            admin,
            config: Arc::new(config),
            listeners,
            local_addr,
            cluster,
            access: Arc::new(access),
        })
    }

    /// The address clients connect to (with the real port when `--listen` gave port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn threads(&self) -> usize {
        self.listeners.len()
    }

    /// Serves until `shutdown` completes, then shuts down gracefully. Blocks the caller.
    pub fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let threads = self.listeners.len();
        compressed::configure(DeflateSettings {
            min_bytes: self.config.compress_min,
            level: self.config.compress_level,
        });
        let metrics = Arc::new(Metrics::new(threads));
        if let Some(admin) = self.admin {
            let addr = admin.local_addr().map_err(|e| ServerError::Bind {
                addr: self.local_addr,
                source: e,
            })?;
            crate::telemetry::admin::spawn(admin, metrics.clone()).map_err(ServerError::Admin)?;
            tracing::info!(%addr, "metrics and the live page on the admin listener");
        }
        let (inbox_senders, inboxes): (Vec<_>, Vec<_>) = (0..threads)
            .map(|_| inbox::inbox(inbox::INBOX_BYTES))
            .unzip();
        let (registry, cluster) = match self.cluster {
            None => (Registry::new(metrics.clone()), None),
            Some(cluster) => {
                tracing::info!(
                    url = %cluster.url,
                    node = %cluster.node_name,
                    delivery = if cluster.through_broker { "broker" } else { "local" },
                    "joining the cluster"
                );
                let (events, channel_events) = mpsc::unbounded_channel();
                let link = ClusterLink::start(
                    cluster,
                    channel_events,
                    inbox_senders.clone(),
                    metrics.clone(),
                )?;
                (Registry::with_events(metrics.clone(), events), Some(link))
            }
        };
        let registry = Arc::new(registry);
        crate::budget::BUDGET
            .set_limit(usize::try_from(self.config.memory_budget()).unwrap_or(usize::MAX));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (failed_tx, mut failed_rx) = mpsc::unbounded_channel::<ServerError>();
        let admission = Arc::new(Admission::new(
            self.config.connection_limit(),
            self.config.per_address_limit(),
            self.config.limit_loopback,
        ));
        let stats =
            crate::telemetry::stats::spawn_reporter(self.config.stats_interval.0, metrics.clone());

        let histories = Arc::new(Histories::new(Retention {
            size: self.config.history_size,
            ttl: self.config.history_ttl.0,
        }));
        let mut handles = Vec::with_capacity(threads);
        for (index, (listener, inbox)) in self.listeners.into_iter().zip(inboxes).enumerate() {
            let peers = inbox_senders
                .iter()
                .enumerate()
                .map(|(j, sender)| (j != index).then(|| sender.clone()))
                .collect();
            let shared = Shared {
                config: self.config.clone(),
                metrics: metrics.clone(),
                registry: registry.clone(),
                admission: admission.clone(),
                access: self.access.clone(),
                histories: histories.clone(),
                uplink: cluster.as_ref().map(|link| link.uplink().clone()),
            };
            let stop = stop_rx.clone();
            let failed = failed_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("ringcast-{index}"))
                .spawn(move || {
                    if let Err(source) = worker_main(index, listener, inbox, peers, shared, stop) {
                        let _ = failed.send(ServerError::Worker { index, source });
                    }
                })
                .map_err(|source| ServerError::Spawn { index, source })?;
            handles.push(handle);
        }
        drop(inbox_senders);
        drop(failed_tx);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let failure = runtime.block_on(async {
            tokio::select! {
                () = shutdown => None,
                Some(err) = failed_rx.recv() => Some(err),
            }
        });
        let _ = stop_tx.send(true);
        let mut result = failure.map_or(Ok(()), Err);
        for (index, handle) in handles.into_iter().enumerate() {
            if handle.join().is_err() && result.is_ok() {
                result = Err(ServerError::Panicked { index });
            }
        }
        if let Ok(err) = failed_rx.try_recv() {
            result = result.and(Err(err));
        }
        // The cluster link sends what the workers queued last, then stops.
        drop(cluster);
        drop(stats);
        result
    }
}

/// What every worker thread shares.
struct Shared {
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    registry: Arc<Registry>,
    /// `--max-connections` and `--max-connections-per-ip`, across all threads.
    admission: Arc<Admission>,
    /// Origins and client tokens.
    access: Arc<Access>,
    /// Numbered publications of Centrifugo's protocol.
    histories: Arc<Histories>,
    /// The way to the cluster's broker, with `--cluster`.
    uplink: Option<Uplink>,
}

fn worker_main(
    index: usize,
    listener: std::net::TcpListener,
    inbox: InboxReceiver,
    peers: Vec<Option<InboxSender>>,
    shared: Shared,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    if shared.config.pin {
        let core = index % ringcast_os::affinity::online_cpus();
        if let Err(err) = ringcast_os::affinity::pin_current_thread(&[core]) {
            tracing::warn!(index, "could not pin worker thread: {err}");
        }
    }
    let mut builder = tokio_uring::builder();
    builder.entries(shared.config.ring_entries);
    let runtime = tokio_uring::Runtime::new(&builder)?;
    runtime.block_on(async move {
        let config = &shared.config;
        let policy = WindowPolicy {
            window: config.channel_window,
            slow_timeout: config.slow_timeout.0,
            policy: config.slow_policy,
        };
        let fanout = Rc::new(FanOut::new(
            index,
            shared.registry,
            peers,
            policy,
            shared.metrics.threads[index].clone(),
            shared.uplink,
        ));
        tokio_uring::spawn(fanout.clone().run_inbox(inbox));
        let send_ring = Ring::new(shared.config.ring_entries)?;
        tokio_uring::spawn(send_ring.clone().run());
        let worker = Worker::new(
            index,
            shared.config,
            shared.metrics,
            shared.admission,
            shared.access,
            shared.histories,
            fanout,
        );
        let connections = Connections::new(index, worker.clone(), send_ring);
        // The sweep has work only with pings or tokens (an idle server sweeps nothing).
        if Config::enabled(worker.config.ping_interval).is_some() || worker.access.requires_tokens()
        {
            tokio_uring::spawn(connections.clone().run_sweep());
        }
        let listener = TcpListener::from_std(listener);
        accept::run(&connections, &listener, stop).await;
        // SAFETY: shutting down a listening socket we own, to cancel the accept in flight.
        unsafe {
            libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR);
        }
        connections.drain().await;
        Ok(())
    })
}
