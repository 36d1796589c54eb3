//! ringcast-os: the few Linux process knobs and readings that both the server and the load
//! generator need, written once.
//!
//! # Layout
//!
//! - [`fd_limit`]: the open-file limit (every connection is a descriptor).
//! - [`affinity`]: pinning threads and child processes to CPUs (benchmarks pin the server and
//!   the load generator to different cores).
//! - [`procfs`]: what `/proc` says about a process: CPU time, resident memory, run-queue wait.
//! - [`memory`]: how much memory the process may use (the machine's, its cgroup's limit).

pub mod affinity;
pub mod fd_limit;
pub mod memory;
pub mod procfs;
