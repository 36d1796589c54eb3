//! A memory-limited cgroup for one test's server: cgroup v2 (`memory.max`) where the unified
//! hierarchy has the memory controller, else cgroup v1 (`memory.limit_in_bytes` under
//! `/sys/fs/cgroup/memory`). Creating one needs root; [`MemoryCgroup::create`] says why when it
//! cannot. Removed when dropped (after its processes have exited).

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Which hierarchy a cgroup lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

/// A cgroup with a memory limit.
pub struct MemoryCgroup {
    path: PathBuf,
    version: Version,
    pub limit_bytes: u64,
}

impl MemoryCgroup {
    /// Creates `NAME-PID` with a memory limit of `limit_bytes`; `Err(why)` when this machine or
    /// user cannot.
    pub fn create(name: &str, limit_bytes: u64) -> Result<MemoryCgroup, String> {
        let leaf = format!("{name}-{}", std::process::id());
        let v2_controllers = std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers");
        let (path, version, limit_file) = match v2_controllers {
            Ok(c) if c.split_whitespace().any(|w| w == "memory") => (
                PathBuf::from("/sys/fs/cgroup").join(&leaf),
                Version::V2,
                "memory.max",
            ),
            _ if PathBuf::from("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists() => (
                PathBuf::from("/sys/fs/cgroup/memory").join(&leaf),
                Version::V1,
                "memory.limit_in_bytes",
            ),
            _ => return Err("no cgroup memory controller (v2 or v1) on this machine".into()),
        };
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create {} (needs root): {e}", path.display()))?;
        let cgroup = MemoryCgroup {
            path,
            version,
            limit_bytes,
        };
        std::fs::write(cgroup.path.join(limit_file), limit_bytes.to_string())
            .map_err(|e| format!("cannot set {limit_file}: {e}"))?;
        if version == Version::V1 {
            // No swap to escape into: the limit is on memory plus swap.
            let _ = std::fs::write(
                cgroup.path.join("memory.memsw.limit_in_bytes"),
                limit_bytes.to_string(),
            );
        }
        Ok(cgroup)
    }

    /// Moves process `pid` into the cgroup.
    pub fn add(&self, pid: i32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("move {pid} into {}: {e}", self.path.display()));
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.path.join(file))
            .unwrap_or_else(|e| panic!("read {file} of {}: {e}", self.path.display()))
    }

    /// The most memory the cgroup has used (v1: `memory.max_usage_in_bytes`; v2:
    /// `memory.peak`).
    pub fn peak_bytes(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.max_usage_in_bytes",
            Version::V2 => "memory.peak",
        };
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// Processes the kernel's OOM killer killed in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Times usage hit the limit (v1: `memory.failcnt`; v2: `max` in `memory.events`).
    pub fn limit_hits(&self) -> u64 {
        match self.version {
            Version::V1 => self.read("memory.failcnt").trim().parse().unwrap_or(0),
            Version::V2 => self
                .read("memory.events")
                .lines()
                .find_map(|l| l.strip_prefix("max "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0),
        }
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The server was stopped first; its exit may take a moment to leave the cgroup.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.path).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
