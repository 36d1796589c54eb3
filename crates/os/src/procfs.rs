//! What `/proc` says about a process: CPU time, resident memory, and time spent waiting for a
//! CPU; and about the machine: how busy each CPU was. Every reader returns `None` when the
//! process is gone or the file unreadable.

use std::fs;

/// Sums one field of `/proc/PID/task/*/schedstat` over the threads of `pid`: field 0 is time on
/// a CPU, field 1 time runnable but waiting for one, both in ns (exact, not clock ticks).
fn schedstat_sum(pid: u32, field: usize) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        if let Some(v) = stat
            .split_whitespace()
            .nth(field)
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += v;
            any = true;
        }
    }
    any.then_some(total)
}

/// CPU time of the threads of `pid` whose name starts with `prefix` (the kernel keeps the
/// first 15 bytes of a thread's name), in ns, from their schedstat.
pub fn threads_cpu_ns(pid: u32, prefix: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let name = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if !name.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = fs::read_to_string(entry.path().join("schedstat")).unwrap_or_default();
        if let Some(v) = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
        {
            total += v;
            any = true;
        }
    }
    any.then_some(total)
}

/// CPU time (all threads, user + system) of `pid` in ns: from schedstat, exact, or from
/// `/proc/PID/stat` in clock ticks where schedstat is not available.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    schedstat_sum(pid, 0).or_else(|| stat_cpu_ns(pid))
}

/// CPU time from `/proc/PID/stat` (utime + stime, clock ticks).
fn stat_cpu_ns(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some((utime + stime) * 1_000_000_000 / hz)
}

/// Time the CPUs `cpus` spent running anything (user, nice, system and steal time of their
/// `/proc/stat` lines; not interrupts, which no process is charged for), in ns, at clock-tick
/// resolution.
pub fn cpus_busy_ns(cpus: &[usize]) -> Option<u64> {
    let stat = fs::read_to_string("/proc/stat").ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0u64;
    let mut found = 0;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|n| n.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        let v: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
        // user nice system idle iowait irq softirq steal ...
        ticks += v.first()? + v.get(1)? + v.get(2)? + v.get(7).copied().unwrap_or(0);
        found += 1;
    }
    (found == cpus.len()).then(|| ticks * 1_000_000_000 / hz)
}

/// The CPUs `pid` may run on (`Cpus_allowed_list` of `/proc/PID/status`).
pub fn allowed_cpus(pid: u32) -> Option<Vec<usize>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

/// Time the threads of `pid` spent runnable but waiting for a CPU, in ns, summed over its
/// threads: time a thread wanted to run and could not.
pub fn runqueue_wait_ns(pid: u32) -> Option<u64> {
    schedstat_sum(pid, 1)
}

/// A `kB` line of `/proc/PID/status`, in bytes.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident memory of `pid` now (VmRSS), in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// Peak resident memory of `pid` (VmHWM), in bytes.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM:")
}

/// Open descriptors of `pid` (entries of `/proc/PID/fd`).
pub fn open_fds(pid: u32) -> Option<u64> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = std::process::id();
        let rss = rss_bytes(me).unwrap();
        assert!(rss > 0);
        // The peak read after the current figure: other tests of this binary allocate
        // meanwhile, and a peak read first could be overtaken by the RSS read second.
        assert!(peak_rss_bytes(me).unwrap() >= rss);
        assert!(cpu_ns(me).is_some());
        assert!(stat_cpu_ns(me).is_some());
        assert!(runqueue_wait_ns(me).is_some());
        let mine = allowed_cpus(me).unwrap();
        assert!(!mine.is_empty());
        assert!(cpus_busy_ns(&mine).unwrap() > 0);
        assert_eq!(cpus_busy_ns(&[usize::MAX]), None);
        assert!(open_fds(me).unwrap() >= 3);
        let named = std::thread::Builder::new()
            .name("procfs-probe".into())
            .spawn(move || threads_cpu_ns(me, "procfs-probe"))
            .unwrap();
        assert!(named.join().unwrap().is_some());
        assert_eq!(threads_cpu_ns(me, "no-such-thread"), None);
        assert_eq!(rss_bytes(u32::MAX), None);
    }
}
