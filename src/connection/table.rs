//! One worker thread's connections: every open socket (upgraded or still in its handshake),
//! the upgraded ones' outgoing sides, the send ring that writes for them, and what is done to
//! all of them at once: the keepalive and token sweep, the housekeeping tick, the drain at
//! shutdown.
//!
//! It sits above the worker (the thread's channels, publishing and budgets), which knows
//! nothing of connections: the server makes one table per thread and hands it to the accept
//! loop, and every connection of the thread holds it.

use super::outbound::{Outbound, Ring};
use crate::config::Config;
use crate::maps::remove_and_shrink;
use crate::memory::Trimmer;
use crate::worker::Worker;
use ringcast_proto::close::CloseCode;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio_uring::net::TcpStream;

/// One worker thread's connections (see the module documentation).
pub(crate) struct Connections {
    pub(crate) worker: Rc<Worker>,
    /// Every connection's writes go through it; idle connections' readiness polls too.
    pub(crate) ring: Rc<Ring>,
    next_id: Cell<u64>,
    /// Every open socket of this thread, upgraded or not.
    sockets: RefCell<HashMap<u64, Rc<TcpStream>>>,
    /// The upgraded connections.
    upgraded: RefCell<HashMap<u64, Rc<Outbound>>>,
    /// Returns freed memory to the OS after a spike of connections.
    trimmer: Trimmer,
}

impl Connections {
    /// The table of worker thread `index` (which is in the top bits of its connection ids, so
    /// that they are unique across threads).
    pub(crate) fn new(index: usize, worker: Rc<Worker>, ring: Rc<Ring>) -> Rc<Connections> {
        Rc::new(Connections {
            worker,
            ring,
            next_id: Cell::new((index as u64) << 48),
            sockets: RefCell::default(),
            upgraded: RefCell::default(),
            trimmer: Trimmer::default(),
        })
    }

    /// Records a new socket; returns its connection id (unique across threads).
    pub(crate) fn register(&self, stream: &Rc<TcpStream>) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let mut sockets = self.sockets.borrow_mut();
        sockets.insert(id, stream.clone());
        self.trimmer.note(sockets.len());
        id
    }

    pub(crate) fn unregister(&self, id: u64) {
        remove_and_shrink(&mut self.sockets.borrow_mut(), &id);
    }

    /// Records an upgraded connection, for the sweep and the drain.
    pub(crate) fn add(&self, outbound: &Rc<Outbound>) {
        self.upgraded
            .borrow_mut()
            .insert(outbound.id, outbound.clone());
    }

    pub(crate) fn remove(&self, id: u64) {
        remove_and_shrink(&mut self.upgraded.borrow_mut(), &id);
    }

    /// The once-a-second housekeeping: the worker's (windows, memory budget), and memory back
    /// to the OS after a spike of connections.
    pub(crate) fn tick(&self) {
        self.worker.tick();
        self.trimmer.tick(self.sockets.borrow().len());
    }

    /// The sweep of this thread's upgraded connections: pings each every `--ping-interval`
    /// and closes those silent for `--ping-timeout`, and closes those whose token has expired.
    /// One pass every quarter interval (at most a second apart) rather than a timer per
    /// connection, which would outlive a closed connection by up to an interval and cost every
    /// idle one a task. Ends at shutdown.
    pub(crate) async fn run_sweep(self: Rc<Self>) {
        let config = &self.worker.config;
        let ping = Config::enabled(config.ping_interval);
        let timeout = config.ping_timeout.0;
        let sweep = ping.map_or(Duration::from_secs(1), |interval| {
            (interval / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
        });
        let mut ticks = tokio::time::interval(sweep);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = Vec::new();
        while !self.worker.is_shutting_down() {
            ticks.tick().await;
            let now = Instant::now();
            due.extend(self.upgraded.borrow().values().cloned());
            for outbound in due.drain(..) {
                if outbound.token_expired(now) {
                    outbound.close_expired();
                } else if let Some(interval) = ping {
                    outbound.keep_alive(now, interval, timeout);
                }
            }
        }
    }

    /// Graceful shutdown: close 1001 to every client, wait for the closing handshakes up to
    /// `--shutdown-timeout`, then shut down whatever is left.
    pub(crate) async fn drain(&self) {
        self.worker.begin_shutdown();
        let upgraded: Vec<Rc<Outbound>> = self.upgraded.borrow().values().cloned().collect();
        for outbound in &upgraded {
            outbound.close(CloseCode::GOING_AWAY, "server shutting down", false);
        }
        drop(upgraded);
        // Connections still in their handshake are not waited for.
        let handshaking: Vec<Rc<TcpStream>> = {
            let upgraded = self.upgraded.borrow();
            self.sockets
                .borrow()
                .iter()
                .filter(|(id, _)| !upgraded.contains_key(id))
                .map(|(_, s)| s.clone())
                .collect()
        };
        for stream in handshaking {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + self.worker.config.shutdown_timeout.0;
        while !self.sockets.borrow().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let remaining: Vec<Rc<TcpStream>> = self.sockets.borrow().values().cloned().collect();
        if !remaining.is_empty() {
            tracing::warn!(
                count = remaining.len(),
                "closing connections that did not finish in time"
            );
        }
        for stream in remaining {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while !self.sockets.borrow().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The kernel may still be reading buffers of writes in flight: let them complete.
        self.ring.wait_idle(Duration::from_secs(1)).await;
    }
}
