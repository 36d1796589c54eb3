//! The commands `run`, `sweep`, `cluster`, `connections` and `ceiling`: thin layers that turn parsed arguments into
//! a session on the load layer (starting the server when there is no `--url`), run it, and
//! write the report. `compare` has its own folder, [`crate::compare`].
//!
//! - [`common`]: what every command does around its measurement (limits, server, progress,
//!   the summary and its files).
//! - [`run`](mod@run), [`sweep`](mod@sweep), [`cluster`](mod@cluster),
//!   [`connections`](mod@connections), [`ceiling`](mod@ceiling): one command each.

pub mod ceiling;
pub mod cluster;
pub mod common;
pub mod connections;
pub mod run;
pub mod sweep;

pub use ceiling::ceiling;
pub use cluster::cluster;
pub use common::{AppError, Outcome};
pub use connections::connections;
pub use run::run;
pub use sweep::sweep;
