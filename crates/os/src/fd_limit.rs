//! The open-file limit (RLIMIT_NOFILE).
//!
//! Each connection is a descriptor, and the usual soft limit (1,024) is far below what a
//! broadcast server or a load generator holds: both raise the soft limit to the hard one at
//! start and size what they do by the result.

/// The current (soft, hard) limit.
pub fn nofile() -> (u64, u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the plain struct it is given a valid pointer to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return (0, 0);
    }
    (limit.rlim_cur, limit.rlim_max)
}

/// Raises the soft limit to the hard limit; returns the soft limit now in force.
pub fn raise_nofile() -> u64 {
    let (soft, hard) = nofile();
    if soft < hard {
        let raised = libc::rlimit {
            rlim_cur: hard,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the plain struct it is given a valid pointer to.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return hard;
        }
    }
    soft
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit() {
        let (_, hard) = nofile();
        assert_eq!(raise_nofile(), hard);
        assert_eq!(nofile(), (hard, hard));
    }
}
