//! Why `loadgen compare` stopped before it compared anything (or could not write its
//! report): one cause per variant, each printed as `Error: ...` with exit status 1.
//!
//! What goes wrong inside one cell (a server that does not start, a step that fails) does not
//! stop the comparison: it is recorded in that cell's `error` and reported.

use std::path::PathBuf;

use thiserror::Error;

use super::peers::PeerError;
use super::report::WriteError;
use super::scenarios::UnknownScenario;
use crate::sys::limits::LimitError;

/// A comparison that could not run or could not write its report.
#[derive(Debug, Error)]
pub enum CompareError {
    #[error(
        "--server-cpu {server_cpu} and --loadgen-cpu {loadgen_cpu} must be two different CPUs \
         of the {available} available"
    )]
    Cpus {
        server_cpu: usize,
        loadgen_cpu: usize,
        available: usize,
    },
    #[error(transparent)]
    UnknownScenario(#[from] UnknownScenario),
    #[error("unknown server {name:?} (known: {known})")]
    UnknownServer { name: String, known: String },
    #[error(transparent)]
    FdLimit(#[from] LimitError),
    /// A server named with `--servers`, or ringcast, cannot run here.
    #[error("{name}: {source}")]
    Server { name: String, source: PeerError },
    #[error("no server to compare")]
    NoServer,
    #[error("--publish-via api needs --protocol centrifugo")]
    PublishViaApiOnRelay,
    #[error("generating the run's secrets: {0}")]
    Secrets(String),
    #[error("cannot create {}: {source}", path.display())]
    OutputDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Report(#[from] WriteError),
}
