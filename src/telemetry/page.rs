//! The live page: `GET /` (no upgrade) serves a small HTML page, embedded in the binary, that
//! shows this server's figures from `/metrics` once a second and, with `?watch=CHANNEL`,
//! subscribes to a channel over WebSocket and shows its message rate and last messages. It
//! keeps what it shows in `window.ringcast` too, for scripts and the browser test.

/// The page (`src/telemetry/page.html`).
pub const PAGE: &str = include_str!("page.html");
