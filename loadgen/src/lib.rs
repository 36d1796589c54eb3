//! loadgen: an open-loop fan-out load generator for servers that speak the relay protocol
//! (every data message a client sends goes to every other client of its channel).
//!
//! Layers, bottom up: [`clock`], [`schedule`], [`payload`] (what is sent and when);
//! [`client`] (connect + upgrade), [`reader`] (io_uring receive side), [`pacer`] (send side),
//! [`recorder`] (exact counts and histograms); [`session`] (steps on a set of connections),
//! [`sweep`], [`connections`]; [`server_process`], [`machine`], [`limits`]; [`report`],
//! [`hgrm`], [`plots`] (output); [`cli`] and [`app`] (the commands).

pub mod cli;
pub mod commands;
pub mod compare;
pub mod load;
pub mod report;
pub mod search;
pub mod sys;
pub mod units;

use clap::Parser;

/// Parses the command line and runs the command; returns the process exit status.
pub fn main_with_args() -> i32 {
    load::clock::init();
    let cli = cli::Cli::parse();
    let result = match cli.command {
        Some(cli::Commands::Run(a)) => commands::run(&a),
        Some(cli::Commands::Sweep(a)) => commands::sweep(&a),
        Some(cli::Commands::Connections(a)) => commands::connections(&a),
        Some(cli::Commands::Compare(a)) => return compare::main(&a),
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
