//! The commands `run`, `sweep` and `connections`.

pub mod common;

pub use common::{connections, run, sweep, AppError, Outcome};
