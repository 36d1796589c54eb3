//! Holding the server to part of a core (`--server-cpu-quota FRACTION`), through the kernel's
//! CPU bandwidth control: a cgroup of its own whose quota is FRACTION of one core per period.
//!
//! Why it exists: on a 2-core machine the server and loadgen get one core each, and a server
//! faster than loadgen's reader can take in measures loadgen, not itself. Holding the server to
//! part of its core leaves the instrument headroom, so the capacity found is the server's own,
//! for that fraction of a core: the report says so plainly and never calls it a full core's.
//!
//! cgroup v1 (`/sys/fs/cgroup/cpu/`, `cpu.cfs_quota_us` over `cpu.cfs_period_us`) or v2 (the
//! unified hierarchy with the `cpu` controller, `cpu.max`), whichever the machine has. The
//! cgroup is removed when the guard is dropped (the server moved back to the root first if it
//! still runs).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The bandwidth period: 10 ms. The kernel's default of 100 ms would stop a server held to a
/// quarter of a core for 75 ms at a time, which every latency would carry; over 10 ms the
/// pauses are at most 7.5 ms.
const PERIOD_US: u64 = 10_000;

/// Why the quota could not be set.
#[derive(Debug, Error)]
pub enum QuotaError {
    #[error("--server-cpu-quota must be in (0, 1] (a fraction of one core), not {0}")]
    OutOfRange(f64),
    #[error("no cgroup CPU controller here (neither /sys/fs/cgroup/cpu nor a unified hierarchy with cpu)")]
    NoController,
    #[error("{path}: {source} (setting a CPU quota needs root)")]
    Io { path: PathBuf, source: io::Error },
}

/// Which cgroup interface the machine has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the `cpu` controller's own mount.
    V1(PathBuf),
    /// cgroup v2: the unified mount, with `cpu` among its controllers.
    V2(PathBuf),
}

impl Hierarchy {
    /// The machine's CPU controller, if any.
    pub fn detect() -> Option<Hierarchy> {
        Hierarchy::detect_in(Path::new("/sys/fs/cgroup"))
    }

    /// The CPU controller under `root` (a test passes a directory of its own).
    pub fn detect_in(root: &Path) -> Option<Hierarchy> {
        let v1 = root.join("cpu");
        if v1.join("cpu.cfs_quota_us").exists() {
            return Some(Hierarchy::V1(v1));
        }
        for unified in [root.to_path_buf(), root.join("unified")] {
            let controllers = fs::read_to_string(unified.join("cgroup.controllers"));
            if controllers.is_ok_and(|c| c.split_whitespace().any(|name| name == "cpu")) {
                return Some(Hierarchy::V2(unified));
            }
        }
        None
    }

    fn root(&self) -> &Path {
        match self {
            Hierarchy::V1(root) | Hierarchy::V2(root) => root,
        }
    }
}

/// A server held to a fraction of one core, until dropped.
#[derive(Debug)]
pub struct CpuQuota {
    hierarchy: Hierarchy,
    dir: PathBuf,
    pid: u32,
    pub fraction: f64,
}

fn write(path: PathBuf, value: &str) -> Result<(), QuotaError> {
    fs::write(&path, value).map_err(|source| QuotaError::Io { path, source })
}

/// The quota and the period, in µs, for `fraction` of one core: [`PERIOD_US`], or a longer
/// period when the quota would fall under the kernel's least (1 ms).
pub fn quota_us(fraction: f64) -> Result<(u64, u64), QuotaError> {
    if !(fraction > 0.0 && fraction <= 1.0) {
        return Err(QuotaError::OutOfRange(fraction));
    }
    let quota = (fraction * PERIOD_US as f64).round() as u64;
    if quota >= 1_000 {
        Ok((quota, PERIOD_US))
    } else {
        Ok((1_000, (1_000.0 / fraction).round() as u64))
    }
}

/// The longest the server is stopped at a time under `fraction`: the rest of a period.
fn pause_ms(fraction: f64) -> f64 {
    let (quota, period) = quota_us(fraction).unwrap_or((PERIOD_US, PERIOD_US));
    period.saturating_sub(quota) as f64 / 1000.0
}

impl CpuQuota {
    /// Holds process `pid` (all its threads) to `fraction` of one core, in a cgroup named after
    /// it under `hierarchy`.
    pub fn apply(hierarchy: Hierarchy, pid: u32, fraction: f64) -> Result<CpuQuota, QuotaError> {
        let (quota, period) = quota_us(fraction)?;
        let dir = hierarchy.root().join(format!("loadgen-server-{pid}"));
        fs::create_dir_all(&dir).map_err(|source| QuotaError::Io {
            path: dir.clone(),
            source,
        })?;
        let guard = CpuQuota {
            hierarchy,
            dir,
            pid,
            fraction,
        };
        match &guard.hierarchy {
            Hierarchy::V1(_) => {
                write(guard.dir.join("cpu.cfs_period_us"), &period.to_string())?;
                write(guard.dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            Hierarchy::V2(_) => {
                write(guard.dir.join("cpu.max"), &format!("{quota} {period}"))?;
            }
        }
        write(guard.dir.join("cgroup.procs"), &pid.to_string())?;
        Ok(guard)
    }

    /// How the report says it.
    pub fn describe(&self) -> String {
        let file = match self.hierarchy {
            Hierarchy::V1(_) => "cgroup v1 cpu.cfs_quota_us",
            Hierarchy::V2(_) => "cgroup v2 cpu.max",
        };
        let (quota, period) = quota_us(self.fraction).unwrap_or((PERIOD_US, PERIOD_US));
        format!(
            "held to {:.0} % of one core ({file} {quota} / {period} µs): every figure is that fraction's, not a full core's, and latencies include the server's stops of up to {:.1} ms a period",
            self.fraction * 100.0,
            pause_ms(self.fraction)
        )
    }
}

impl Drop for CpuQuota {
    fn drop(&mut self) {
        // A cgroup with a process in it cannot be removed: a server still running goes back to
        // the root first.
        if Path::new(&format!("/proc/{}", self.pid)).exists() {
            let _ = fs::write(
                self.hierarchy.root().join("cgroup.procs"),
                self.pid.to_string(),
            );
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_become_quotas_per_10_ms() {
        assert_eq!(quota_us(0.5).unwrap(), (5_000, 10_000));
        assert_eq!(quota_us(1.0).unwrap(), (10_000, 10_000));
        assert_eq!(
            quota_us(0.05).unwrap(),
            (1_000, 20_000),
            "at least the kernel's 1 ms: a longer period"
        );
        assert_eq!(pause_ms(0.25), 7.5);
        assert!(quota_us(0.0).is_err());
        assert!(quota_us(1.5).is_err());
        assert!(quota_us(f64::NAN).is_err());
    }

    #[test]
    fn the_interface_is_found_and_written_as_the_kernel_reads_it() {
        let root = std::env::temp_dir().join(format!("loadgen-quota-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        assert_eq!(Hierarchy::detect_in(&root), None);

        // cgroup v1: the quota and period, then the process.
        fs::create_dir_all(root.join("cpu")).unwrap();
        fs::write(root.join("cpu/cpu.cfs_quota_us"), "-1").unwrap();
        let v1 = Hierarchy::detect_in(&root).unwrap();
        assert_eq!(v1, Hierarchy::V1(root.join("cpu")));
        let guard = CpuQuota::apply(v1, 4242, 0.25).unwrap();
        let dir = root.join("cpu/loadgen-server-4242");
        assert_eq!(
            fs::read_to_string(dir.join("cpu.cfs_quota_us")).unwrap(),
            "2500"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cpu.cfs_period_us")).unwrap(),
            "10000"
        );
        assert_eq!(
            fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "4242"
        );
        assert!(
            guard.describe().contains("25 % of one core"),
            "{}",
            guard.describe()
        );
        drop(guard);

        // cgroup v2: cpu.max.
        fs::remove_dir_all(root.join("cpu")).unwrap();
        fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory").unwrap();
        let v2 = Hierarchy::detect_in(&root).unwrap();
        assert_eq!(v2, Hierarchy::V2(root.clone()));
        let _guard = CpuQuota::apply(v2, 4343, 0.5).unwrap();
        let max = fs::read_to_string(root.join("loadgen-server-4343/cpu.max")).unwrap();
        assert_eq!(max, "5000 10000");
        let _ = fs::remove_dir_all(&root);
    }
}
