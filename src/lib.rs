//! ringcast: a WebSocket broadcast server on io_uring.
//!
//! One OS thread per core, each with its own tokio-uring runtime, `SO_REUSEPORT` listener,
//! channels and send ring. A broadcast is encoded once into a shared block; the same bytes are
//! written to every subscriber, many subscribers' writes per kernel entry.
//!
//! # Layout
//!
//! The protocol is its own crate, [`ringcast_proto`] (re-exported as [`proto`]): pure functions
//! over bytes, no I/O. This crate is the runtime, in layers listed top to bottom: a module uses
//! only those below it (`scripts/check-layers`, run by CI, checks every `crate::` path against
//! this list; modules in one item are one layer and do not use each other).
//!
//! - [`server`]: binds the listeners, starts one worker thread per core, runs until the
//!   shutdown future it is given completes, then drains.
//! - `accept`: each worker's accept loop, which answers 503 when descriptors run out.
//! - [`connection`]: one client from its first byte to its close: `upgrade` (the HTTP request
//!   and its answer), `link` (the WebSocket's read loop), `protocol` (what its path and
//!   messages mean: the raw relay, or Centrifugo's protocol in `centrifugo`), `api` (the
//!   server API), [`connection::outbound`] (its
//!   subscriptions' bytes, control frames, the close, the write in flight), and `table` (the
//!   thread's connections, send ring, keepalive sweep and drain).
//! - `worker`: one thread's state below its connections (channels, block encoder, memory
//!   budget, admission and access), and the publishing of what its clients send.
//! - [`access`]: who may: the `Origin` check and client tokens (JWT) with channel capabilities;
//!   `admission`: the node-wide counts under `--max-connections` and `--max-connections-per-ip`.
//! - [`cluster`]: nodes linked through a NATS server: the link's thread, subjects, envelopes.
//! - [`fanout`]: channels and the fan-out of a message to their subscribers, within a thread
//!   and across threads; [`fanout::block`] (frames encoded once, shared) and
//!   [`fanout::subscription`] (a cursor into a channel's log, which wakes its connection).
//! - [`ring`]: the send ring, the one raw io_uring of each thread, which writes for every
//!   connection and knows nothing of WebSockets; and the readiness polls of idle connections.
//! - [`telemetry`]: counters for `/metrics`, the `--stats-interval` line, the live page.
//! - [`budget`]: the bytes held for messages, counted against `--memory-limit`.
//! - [`config`]: every flag, its default and its trade-off.
//! - `maps`: hash maps that shrink back when their entries leave; `memory`: freed memory
//!   handed back to the OS after a spike of connections.

pub use ringcast_proto as proto;

pub mod access;
pub mod budget;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod fanout;
pub mod ring;
pub mod server;
pub mod telemetry;

mod accept;
mod admission;
mod maps;
mod memory;
mod worker;
