//! What the server tells about itself: counters for `/metrics`, the `--stats-interval` line, and
//! the live page at `/`, on the clients' port or on `--admin-listen`.

pub mod admin;
pub mod cluster;
pub mod metrics;
pub mod page;
pub mod stats;
