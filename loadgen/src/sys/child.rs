//! The processes loadgen starts (the server under test, the cluster's broker, strace) die with
//! loadgen and run on the CPUs they are given: one place for the code that runs in the child
//! between fork and exec.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Whether a child that cannot be pinned to its CPUs may run anyway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// The spawn fails: a server or broker off its CPU would skew the measurement.
    Required,
    /// It runs wherever the kernel puts it (a helper such as strace).
    BestEffort,
}

/// Makes `cmd`'s process receive SIGTERM when loadgen dies (Ctrl-C, a crash), and pins it to
/// `cpus` when given.
pub fn tie_to_loadgen(cmd: &mut Command, cpus: Option<Vec<usize>>, pinning: Pinning) {
    // SAFETY: only async-signal-safe calls (prctl, sched_setaffinity) run in the child, between
    // fork and exec; `cpus` is moved in and only read.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            let pinned = match &cpus {
                Some(c) => ringcast_os::affinity::pin_current_thread(c),
                None => Ok(()),
            };
            match pinning {
                Pinning::Required => pinned,
                Pinning::BestEffort => Ok(()),
            }
        })
    };
}
