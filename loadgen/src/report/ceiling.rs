//! loadgen's own ceiling on this machine, stored once and shown beside every run's figures.
//!
//! `loadgen ceiling` measures how many deliveries per second loadgen's reader takes in from a
//! source that costs next to nothing, for several numbers of frames per write
//! ([`crate::load::ceiling`]), and stores the rows in a file of the user's cache. Every later
//! run and comparison on the machine reads that file and shows the rows beside its steps, with
//! each step's deliveries per read (how the server batched its writes: which rows compare).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::load::ceiling::{limit, CeilingReport};
use crate::load::session::StepResult;
use crate::sys::machine::MachineInfo;
use crate::units::fmt_rate;

/// What `loadgen ceiling` stores, and what a run's summary echoes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredCeiling {
    pub measured_utc: String,
    /// CPU model, core count and kernel of the machine it was measured on.
    pub machine: String,
    pub connections: u32,
    pub size: usize,
    /// One per number of frames per write, as measured.
    pub rows: Vec<CeilingReport>,
}

/// The machine key a stored ceiling is valid for.
pub fn machine_key(m: &MachineInfo) -> String {
    format!("{}, {} cores, Linux {}", m.cpu_model, m.cores, m.kernel)
}

/// Where the ceiling is stored: `$LOADGEN_CEILING_FILE`, else
/// `$XDG_CACHE_HOME/loadgen/ceiling.json`, else `~/.cache/loadgen/ceiling.json`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("LOADGEN_CEILING_FILE") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(cache.join("loadgen").join("ceiling.json"))
}

impl StoredCeiling {
    /// The rows of one `loadgen ceiling` run.
    pub fn from_reports(reports: &[CeilingReport], measured_utc: String, machine: String) -> Self {
        StoredCeiling {
            measured_utc,
            machine,
            connections: reports.first().map_or(0, |r| r.connections),
            size: reports.first().map_or(0, |r| r.size),
            rows: reports.to_vec(),
        }
    }

    /// Writes it to `path` (creating the directory).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, text)
    }

    /// The stored ceiling at `path` if it was measured on `machine`; `None` when there is no
    /// file, it cannot be read, or it belongs to another machine.
    pub fn load_for(path: &Path, machine: &str) -> Option<StoredCeiling> {
        let text = std::fs::read_to_string(path).ok()?;
        let stored: StoredCeiling = serde_json::from_str(&text).ok()?;
        (stored.machine == machine && !stored.rows.is_empty()).then_some(stored)
    }

    /// The ceiling stored for machine `m` at [`default_path`], if any.
    pub fn for_machine(m: &MachineInfo) -> Option<StoredCeiling> {
        StoredCeiling::load_for(&default_path()?, &machine_key(m))
    }
}

const NOT_MEASURED: &str = "loadgen's own ceiling on this machine is not stored yet: \
    `loadgen ceiling` measures it once (~25 s) and every later report shows it here.";

fn source(c: &StoredCeiling) -> String {
    format!(
        "`loadgen ceiling` of {}, {} connections x {} B",
        c.measured_utc, c.connections, c.size
    )
}

/// Each step's deliveries per read, `rate: n` joined.
fn steps_per_read(steps: &[StepResult]) -> String {
    steps
        .iter()
        .filter_map(|st| {
            let d = st.cpu.deliveries_per_read?;
            Some(format!(
                "{} msg/s: {d:.1}",
                fmt_rate(st.requested_rate_per_s)
            ))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The terminal summary's lines: the stored ceiling and the steps' deliveries per read.
pub fn text(out: &mut String, steps: &[StepResult], stored: Option<&StoredCeiling>) {
    if steps.is_empty() {
        return;
    }
    let Some(c) = stored else {
        let _ = writeln!(out, "  {NOT_MEASURED}");
        return;
    };
    let rows: Vec<String> = c
        .rows
        .iter()
        .map(|r| {
            format!(
                "{} at {:.1} deliveries per read, limit {}",
                fmt_rate(r.deliveries_per_s),
                r.deliveries_per_read,
                limit(r.reader_cpu_share, r.source_cpu_share)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  loadgen's own ceiling ({}): {}",
        source(c),
        rows.join("; ")
    );
    let _ = writeln!(
        out,
        "  This run's deliveries per read: {}",
        steps_per_read(steps)
    );
}

/// The markdown report's section: the stored ceiling beside the steps' deliveries per read.
pub fn markdown(out: &mut String, steps: &[StepResult], stored: Option<&StoredCeiling>) {
    if steps.is_empty() {
        return;
    }
    let _ = writeln!(out, "## loadgen's own ceiling\n");
    let Some(c) = stored else {
        let _ = writeln!(out, "{NOT_MEASURED}\n");
        return;
    };
    let _ = writeln!(
        out,
        "What loadgen's reader took in on this machine from a source that costs next to nothing \
         ({}), by frames per write of the source. Read it beside the steps: how many \
         deliveries each read of a step carried is the server's batching; a step near the \
         row of similar batching whose limit was loadgen's reader measured loadgen, not the \
         server. The source writes each chunk as it is built, which costs the reader more per \
         read than a server's sends of the same size: rows limited by the source are lower \
         bounds. The direct test remains the step's own CPU (the saturation verdict).\n",
        source(c)
    );
    let _ = writeln!(
        out,
        "| frames per write | deliveries per read | deliveries/s | reader core | source core | limit |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    for r in &c.rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {:.0} % | {:.0} % | {} |",
            r.frames_per_write,
            r.deliveries_per_read,
            fmt_rate(r.deliveries_per_s),
            r.reader_cpu_share * 100.0,
            r.source_cpu_share * 100.0,
            limit(r.reader_cpu_share, r.source_cpu_share)
        );
    }
    let _ = writeln!(
        out,
        "\nThis run's deliveries per read: {}.\n",
        steps_per_read(steps)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(dpr: f64, per_s: f64, reader: f64, ns: f64) -> CeilingReport {
        CeilingReport {
            connections: 1000,
            size: 64,
            frames_per_write: dpr as usize,
            window_s: 4.0,
            deliveries: (per_s * 4.0) as u64,
            deliveries_per_s: per_s,
            reader_cpu_share: reader,
            reader_cpu_ns_per_delivery: ns,
            deliveries_per_read: dpr,
            source_cpu_share: 0.99,
            errors: 0,
        }
    }

    fn stored() -> StoredCeiling {
        StoredCeiling {
            measured_utc: "2026-11-29T21:00:00Z".into(),
            machine: "cpu, 2 cores, Linux 6.18".into(),
            connections: 1000,
            size: 64,
            rows: vec![
                row(64.0, 24e6, 0.5, 20.0),
                row(1.0, 1e6, 0.98, 980.0),
                row(4.0, 4e6, 0.98, 245.0),
            ],
        }
    }

    #[test]
    fn stored_ceiling_round_trips_and_belongs_to_its_machine() {
        let dir = std::env::temp_dir().join(format!("loadgen-ceiling-{}", std::process::id()));
        let path = dir.join("ceiling.json");
        let c = stored();
        c.save(&path).unwrap();
        assert_eq!(StoredCeiling::load_for(&path, &c.machine), Some(c.clone()));
        assert_eq!(StoredCeiling::load_for(&path, "another machine"), None);
        assert_eq!(
            StoredCeiling::load_for(&dir.join("absent.json"), &c.machine),
            None
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
