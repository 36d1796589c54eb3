//! ringcast-proto: the WebSocket protocol (RFC 6455) as pure functions over bytes.
//!
//! No I/O, no runtime: the server, the load generator, the fuzz targets and the benches all use
//! this crate, and none of them needs the server's io_uring runtime to do so.
//!
//! # Layout
//!
//! - [`handshake`]: the HTTP/1.1 upgrade, [`handshake::server`] and [`handshake::client`].
//! - [`frame`]: frame headers (§5.2), decode and encode; `Ok(None)` means "need more bytes".
//! - [`mask`]: the client-to-server masking (§5.3), by 8-byte words, resumable at any offset.
//! - [`utf8`]: an incremental UTF-8 validator that fails at the first impossible byte.
//! - [`close`]: close codes and close payloads (§5.5.1, §7.4).
//! - [`message`]: frames to messages (§5.4-5.5): fragmentation, control frames, limits, and
//!   the close code for every violation.
//! - [`deflate`]: permessage-deflate payloads (RFC 7692): one message compressed alone, and
//!   inflated within a bound (its negotiation is [`handshake::extension`]).
//!
//! Dependencies point down this list's reverse: `message` uses `frame`, `mask`, `utf8` and
//! `close`; `handshake` stands alone.

pub mod close;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod utf8;
