//! loadgen: an open-loop fan-out load generator for servers that speak the relay protocol
//! (every data message a client sends goes to every other client of its channel).
//!
//! # Layout
//!
//! Layers, top down; a module imports only from the layers below it, never from one above,
//! and no two modules import each other:
//!
//! - [`commands`]: `run`, `sweep` and `connections`, thin layers that turn parsed arguments
//!   into a session (starting the server when there is no `--url`), run it and write the
//!   report; [`main_with_args`] dispatches to them or to [`compare`].
//! - [`cli`]: the command line, clap data only (`compare`'s own arguments are the leaf
//!   [`compare::args`]).
//! - [`compare`]: `loadgen compare`, ringcast side by side with the peer servers: the main
//!   loop, scenarios, peers, the runner of each cell and strace counts fill a leaf data model
//!   ([`compare::model`]) that [`compare::report`] alone turns into `compare.md`, JSON and
//!   charts.
//! - [`distributed`]: loadgen as a coordinator of worker processes (`--workers`), and the
//!   worker (`loadgen worker`): shares of the run, a common start, exact merged results.
//! - [`report`]: what a run leaves behind: `summary.json` ([`report::model::Summary`]), `report.md`,
//!   the terminal text, `latency.hgrm` ([`report::hgrm`]) and the charts ([`report::plots`]).
//! - [`search`]: the capacity search: what counts as a step that held and which rate to try
//!   next (the sweep's rates, compare's grid).
//! - [`load`]: the load itself: clock, schedule and payload (what is sent and when), client,
//!   reader (epoll receive side) and pacer (send side), recorder (exact counts and
//!   histograms), session (steps on a set of connections) and idle connections.
//! - [`sys`]: the machine and processes around a run: the server process, the open-file
//!   limit, the machine's description; with `ringcast-os` for affinity and `/proc`.
//! - [`units`]: parsing and formatting durations and rates, a leaf every layer may use.

pub mod cli;
pub mod commands;
pub mod compare;
pub mod distributed;
pub mod load;
pub mod report;
pub mod search;
pub mod sys;
pub mod units;

use clap::Parser;

/// Parses the command line and runs the command; returns the process exit status.
pub fn main_with_args() -> i32 {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Commands::Run(a)) => commands::run(&a),
        Some(cli::Commands::Sweep(a)) => commands::sweep(&a),
        Some(cli::Commands::Connections(a)) => commands::connections(&a),
        Some(cli::Commands::Compare(a)) => return compare::main(&a),
        Some(cli::Commands::Cluster(a)) => commands::cluster(&a),
        Some(cli::Commands::Worker(a)) => {
            return match distributed::worker::serve(a.listen) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("loadgen worker: {e}");
                    1
                }
            }
        }
        Some(cli::Commands::Ceiling(a)) => return commands::ceiling(&a),
        None => commands::sweep(&cli.default_sweep),
    };
    match result {
        Ok(o) => o.exit_code,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    }
}
