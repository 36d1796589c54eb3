//! ringcast: a WebSocket broadcast server on io_uring.
//!
//! The protocol layer is its own crate, [`ringcast_proto`] (pure, I/O-free); this crate is the
//! runtime that runs it on tokio-uring, one thread per core.

pub use ringcast_proto as proto;

pub mod config;
pub mod fanout;
pub mod metrics;
pub mod send_ring;
pub mod server;
pub mod shared_frame;
pub mod stats;
pub mod subscriber;

mod connection;
