//! `loadgen ceiling`: measures loadgen's own receive ceiling on this machine
//! ([`crate::load::ceiling`]) for each number of frames per write, prints a table (or JSON),
//! and stores it for later reports ([`crate::report::ceiling`]).

use crate::cli::{CeilingArgs, Format};
use crate::load::ceiling::{limit, measure, CeilingConfig, CeilingReport};
use crate::report::ceiling::{default_path, machine_key, StoredCeiling};
use crate::sys::machine;
use crate::units::fmt_rate;

/// Runs `loadgen ceiling`; returns the exit status.
pub fn ceiling(a: &CeilingArgs) -> i32 {
    let mut reports: Vec<CeilingReport> = Vec::new();
    for &frames_per_write in &a.frames_per_write {
        let cfg = CeilingConfig {
            connections: a.subscribers,
            size: a.size,
            frames_per_write,
            warmup: a.warmup,
            duration: a.duration,
            source_cpu: Some(a.source_cpu),
            reader_cpus: Some(vec![a.reader_cpu]),
            recv_buf_bytes: a.recv_buf_kib * 1024,
        };
        match measure(&cfg) {
            Ok(r) => reports.push(r),
            Err(e) => {
                eprintln!("loadgen ceiling: {frames_per_write} frames per write: {e}");
                return 1;
            }
        }
    }
    let errors = reports.iter().any(|r| r.errors > 0);
    if !a.no_store && !errors {
        store(&reports);
    }
    match a.format {
        Format::Json => match serde_json::to_string_pretty(&reports) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("loadgen ceiling: {e}");
                return 1;
            }
        },
        Format::Text => print_table(a, &reports),
    }
    i32::from(errors)
}

/// Stores the ceiling where later runs look for it (a failure is reported, not fatal).
fn store(reports: &[CeilingReport]) {
    let Some(path) = default_path() else {
        eprintln!("loadgen ceiling: no HOME or XDG_CACHE_HOME: the result is not stored");
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stored = StoredCeiling::from_reports(
        reports,
        machine::rfc3339(now),
        machine_key(&machine::collect()),
    );
    match stored.save(&path) {
        Ok(()) => eprintln!(
            "loadgen ceiling: stored in {}; reports on this machine show it from now on",
            path.display()
        ),
        Err(e) => eprintln!(
            "loadgen ceiling: storing it in {} failed: {e}",
            path.display()
        ),
    }
}

fn print_table(a: &CeilingArgs, reports: &[CeilingReport]) {
    println!(
        "loadgen's receive ceiling: {} connections x {} B, minimal source on CPU {}, reader on \
         CPU {}, {:.1} s each",
        a.subscribers,
        a.size,
        a.source_cpu,
        a.reader_cpu,
        a.duration.as_secs_f64()
    );
    println!("| frames per write | deliveries/s | reader core | reader CPU per delivery | source core | limit |");
    println!("|---|---|---|---|---|---|");
    for r in reports {
        println!(
            "| {} | {} | {:.0} % | {:.0} ns | {:.0} % | {} |",
            r.frames_per_write,
            fmt_rate(r.deliveries_per_s),
            r.reader_cpu_share * 100.0,
            r.reader_cpu_ns_per_delivery,
            r.source_cpu_share * 100.0,
            limit(r.reader_cpu_share, r.source_cpu_share)
        );
    }
    println!(
        "Every delivery's stamp and sequence number checked: {} errors. A run's ceiling is lower \
         by its pacer's share of the same core; a server whose capacity is near the row for its \
         writes was measured at loadgen's limit.",
        reports.iter().map(|r| r.errors).sum::<u64>()
    );
}
