//! What the server tells about itself: counters for `/metrics`, the `--stats-interval` line, and
//! the live page at `/`.

pub mod cluster;
pub mod metrics;
pub mod page;
pub mod stats;
