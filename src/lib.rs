//! ringcast: a WebSocket broadcast server on io_uring.
//!
//! The crate has two layers. The protocol layer is pure and I/O-free: [`handshake`] (the HTTP
//! upgrade), [`frame`] (RFC 6455 headers), [`mask`], [`utf8`], [`close`] and [`message`] (frames
//! to messages). The runtime layer runs it on tokio-uring, one thread per core.

pub mod close;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
