//! The `ringcast` binary: parse the command line, serve until SIGINT/SIGTERM.

use clap::Parser;
use ringcast::config::Config;
use ringcast::server::Server;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::process::ExitCode;

fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<(), Box<dyn std::error::Error>> {
    let nofile = ringcast_os::fd_limit::raise_nofile();
    match config.connection_limit() {
        Some(limit) if config.max_connections.is_none() => tracing::info!(
            "at most {limit} connections: the open-file limit {nofile} minus {} reserved \
             (set --max-connections to change)",
            nofile.saturating_sub(limit as u64)
        ),
        Some(limit) => tracing::info!("at most {limit} connections (--max-connections)"),
        None => tracing::info!(
            "no connection limit (--max-connections 0); the open-file limit is {nofile}"
        ),
    }
    let budget = config.memory_budget();
    tracing::info!(
        "memory budget {:.1} MiB for messages{}",
        budget as f64 / 1048576.0,
        if config.memory_limit.is_some() {
            " (--memory-limit)"
        } else {
            ": half of what the machine or its memory cgroup allows (set --memory-limit to change)"
        }
    );
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let server = Server::bind(config)?;
    println!(
        "ringcast listening on {} ({} threads)",
        server.local_addr(),
        server.threads()
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            tracing::info!(signal, "shutting down");
            let _ = tx.send(());
        }
    });
    server.run(async {
        let _ = rx.await;
    })?;
    Ok(())
}
