//! The commands `run`, `sweep`, `cluster`, `connections` and `ceiling`: thin layers that turn parsed arguments into
//! a session on the load layer (starting the server when there is no `--url`), run it, and
//! write the report. `compare` has its own folder, [`crate::compare`].
//!
//! What every command does around its measurement, by concept:
//!
//! - [`common`]: what a command returns ([`Outcome`]) or fails with ([`AppError`]).
//! - [`prepare`]: the environment (arguments checked, output directory, servers found or
//!   started, token, CPUs), with [`servers`] starting the server or the cluster.
//! - [`load`](mod@load): the connections, in this process or its workers, and their steps.
//! - [`progress`]: the live progress line.
//! - [`summary`]: the summary begun, the verdict's helpers, and the end (servers stopped, files
//!   written, summary printed).
//!
//! And one file per command:
//!
//! - [`run`](mod@run), [`sweep`](mod@sweep), [`cluster`](mod@cluster),
//!   [`connections`](mod@connections), [`ceiling`](mod@ceiling): one command each.

pub mod ceiling;
pub mod cluster;
pub mod common;
pub mod connections;
pub mod load;
pub mod prepare;
pub mod progress;
pub mod run;
pub mod servers;
pub mod summary;
pub mod sweep;

pub use ceiling::ceiling;
pub use cluster::cluster;
pub use common::{AppError, Outcome};
pub use connections::connections;
pub use run::run;
pub use sweep::sweep;
