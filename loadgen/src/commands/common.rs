//! What every command returns: its outcome, or why it failed.
//!
//! Why it exists: `run`, `sweep`, `cluster`, `connections` and `ceiling` share one error type
//! and one outcome, which [`crate::main_with_args`] turns into the exit status; the steps
//! around a measurement live beside it by concept ([`super::prepare`], [`super::servers`],
//! [`super::load`], [`super::progress`], [`super::summary`]).

use std::path::PathBuf;

use thiserror::Error;

use crate::load::client::AddressError;
use crate::load::session::SessionError;
use crate::report::model::Summary;
use crate::report::ReportError;
use crate::sys::server_process::ServerError;

/// Why a command failed.
#[derive(Debug, Error)]
pub enum AppError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// What a command produced.
pub struct Outcome {
    pub summary: Summary,
    pub dir: Option<PathBuf>,
    /// Process exit status: 0, or 2 for loss with --fail-on-loss.
    pub exit_code: i32,
}
