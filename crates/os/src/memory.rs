//! How much memory this process may use: the machine's (`MemTotal`) and its memory cgroup's
//! limit (v1 `memory.limit_in_bytes` or v2 `memory.max`), whichever is smaller. The server
//! derives its default `--memory-limit` from it.

use std::fs;

/// The smaller of the machine's memory and this process's memory cgroup limit, in bytes;
/// `None` when neither can be read.
pub fn available_bytes() -> Option<u64> {
    let total = mem_total_bytes();
    let cgroup = cgroup_limit_bytes();
    match (total, cgroup) {
        (Some(t), Some(c)) => Some(t.min(c)),
        (t, c) => t.or(c),
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn mem_total_bytes() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// This process's memory cgroup limit, in bytes (`None`: no cgroup limit, or none readable).
pub fn cgroup_limit_bytes() -> Option<u64> {
    let membership = fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_limit_in(&membership, |path| fs::read_to_string(path).ok())
}

/// The limit named by `/proc/self/cgroup`'s `membership`, read through `read` (a test gives
/// its own files).
fn cgroup_limit_in(membership: &str, read: impl Fn(&str) -> Option<String>) -> Option<u64> {
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        let Some(text) = read(&file) else {
            continue;
        };
        // v2 says "max" for no limit; v1 says a number near 2^63.
        if let Ok(limit) = text.trim().parse::<u64>() {
            if limit < 1 << 60 {
                return Some(limit);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        assert!(mem_total_bytes().unwrap() > 1 << 20);
        assert!(available_bytes().unwrap() <= mem_total_bytes().unwrap());
    }

    #[test]
    fn finds_the_cgroup_limit_of_either_version() {
        let files = |path: &str| match path {
            "/sys/fs/cgroup/memory/box/memory.limit_in_bytes" => Some("134217728\n".into()),
            "/sys/fs/cgroup/user/memory.max" => Some("268435456\n".into()),
            "/sys/fs/cgroup/free/memory.max" => Some("max\n".into()),
            "/sys/fs/cgroup/memory/root/memory.limit_in_bytes" => {
                Some("9223372036854771712\n".into())
            }
            _ => None,
        };
        assert_eq!(
            cgroup_limit_in("12:cpu:/x\n5:memory:/box\n", files),
            Some(128 << 20)
        );
        assert_eq!(cgroup_limit_in("0::/user\n", files), Some(256 << 20));
        assert_eq!(cgroup_limit_in("0::/free\n", files), None);
        assert_eq!(cgroup_limit_in("5:memory:/root\n", files), None);
        assert_eq!(cgroup_limit_in("", files), None);
    }
}
