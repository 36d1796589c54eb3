//! The open-file limit: raised to the hard limit at start, checked before opening anything.
//!
//! Every connection is a descriptor. A run that needs more than the limit allows must fail at
//! once with a message naming the limit, not after minutes with EMFILE in the middle of a ramp.

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

pub use ringcast_os::fd_limit::{nofile, raise_nofile};

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
