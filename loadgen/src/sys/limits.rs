//! The open-file limit, checked before opening anything (it is raised to the hard limit at
//! start with [`ringcast_os::fd_limit::raise_nofile`]).
//!
//! Every connection is a descriptor. A run that needs more than the limit allows must fail at
//! once with a message naming the limit, not after minutes with EMFILE in the middle of a ramp.

use ringcast_os::fd_limit::nofile;
use thiserror::Error;

/// The limit is too low for what was asked.
#[derive(Debug, Error)]
pub enum LimitError {
    #[error(
        "this run needs about {needed} file descriptors ({what}) but the open-file limit \
         (RLIMIT_NOFILE) is {soft} (hard limit {hard}); lower -c, or spread the connections \
         over several loadgen processes"
    )]
    TooFew {
        needed: u64,
        what: String,
        soft: u64,
        hard: u64,
    },
}

/// Fails unless `needed` descriptors fit under the soft limit.
pub fn ensure_fds(needed: u64, what: &str) -> Result<(), LimitError> {
    let (soft, hard) = nofile();
    if needed > soft {
        return Err(LimitError::TooFew {
            needed,
            what: what.to_owned(),
            soft,
            hard,
        });
    }
    Ok(())
}
