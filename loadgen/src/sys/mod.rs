//! The machine and the processes around a run: the server process loadgen starts and stops,
//! the open-file limit, and the description of the machine every report carries.
//!
//! The bottom layer: it uses `ringcast-os` (CPU affinity, the open-file limit, `/proc` readers
//! of a process) and nothing else of the crate.
//!
//! - [`child`]: what every process loadgen starts does before exec: die with loadgen, pin.
//! - [`server_process`]: start the server under test, pinned, on a free port; stop it.
//! - [`broker`]: start the nats-server of a ringcast cluster; see its subscriptions; stop it.
//! - [`cpu_quota`]: hold the server to part of a core (a cgroup CPU quota).
//! - [`limits`]: fail early, naming the limit, when a run needs more descriptors than allowed.
//! - [`machine`]: cores, CPU model, memory, kernel, git commit, UTC time (the only module that
//!   reads `/proc` files of its own).

pub mod broker;
pub mod child;
pub mod cpu_quota;
pub mod limits;
pub mod machine;
pub mod server_process;
