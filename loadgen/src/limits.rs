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

/// Current (soft, hard) RLIMIT_NOFILE.
pub fn nofile() -> (u64, u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
    (r.rlim_cur, r.rlim_max)
}

/// Raises the soft open-file limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let r = libc::rlimit {
            rlim_cur: hard as libc::rlim_t,
            rlim_max: hard as libc::rlim_t,
        };
        // SAFETY: valid rlimit value within the hard limit.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    }
    nofile().0
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
