//! What the server tells about itself: counters for `/metrics` and the `--stats-interval` line.

pub mod cluster;
pub mod metrics;
pub mod stats;
