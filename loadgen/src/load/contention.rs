//! Was the machine busy with something else? The "machine busy" warning must mean work from
//! outside the benchmark, not loadgen's pacer and reader competing for their own core (which
//! the run-queue wait of loadgen's threads cannot tell apart).
//!
//! So a step reads, at its start and end, how long the CPUs that loadgen and the servers may
//! run on were busy (`/proc/stat`: user, nice, system and steal time), and subtracts the CPU
//! time loadgen's process and the servers (and the broker) used: what remains was spent by
//! other processes. Its share of those CPUs' time is the step's `foreign_cpu_share`. Clock
//! ticks are 10 ms here, a 0.1 % error over a 10 s step on 1 CPU.

use crate::load::clock;

/// A reading at one moment.
#[derive(Debug, Clone)]
pub struct MachineReading {
    cpus: Vec<usize>,
    busy_ns: u64,
    /// CPU time of loadgen and of every watched process (servers, broker).
    accounted_ns: u64,
    at_ns: u64,
}

fn accounted(pids: &[u32]) -> Option<u64> {
    let mut total = clock::process_cpu_ns();
    for &p in pids {
        total += ringcast_os::procfs::cpu_ns(p)?;
    }
    Some(total)
}

impl MachineReading {
    /// Reads the CPUs `loadgen_cpus` (all online CPUs when `None`) and those the processes
    /// `pids` may run on; `None` if `/proc` cannot say (then no share is reported).
    pub fn now(loadgen_cpus: Option<&[usize]>, pids: &[u32]) -> Option<MachineReading> {
        let mut cpus: Vec<usize> = match loadgen_cpus {
            Some(c) => c.to_vec(),
            None => (0..ringcast_os::affinity::online_cpus()).collect(),
        };
        for &p in pids {
            cpus.extend(ringcast_os::procfs::allowed_cpus(p)?);
        }
        cpus.sort_unstable();
        cpus.dedup();
        Some(MachineReading {
            busy_ns: ringcast_os::procfs::cpus_busy_ns(&cpus)?,
            accounted_ns: accounted(pids)?,
            cpus,
            at_ns: clock::now_ns(),
        })
    }

    /// The share of those CPUs' time that other processes used since this reading (0.0 to
    /// 1.0), or `None` if a process is gone.
    pub fn foreign_share_since(&self, pids: &[u32]) -> Option<f64> {
        let busy = ringcast_os::procfs::cpus_busy_ns(&self.cpus)?;
        let accounted = accounted(pids)?;
        let wall = clock::now_ns().saturating_sub(self.at_ns).max(1) as f64;
        let foreign = busy.saturating_sub(self.busy_ns) as f64
            - accounted.saturating_sub(self.accounted_ns) as f64;
        Some((foreign / (wall * self.cpus.len() as f64)).clamp(0.0, 1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A busy loop in another process on our CPU is foreign; our own busy loop is not.
    #[test]
    fn tells_our_work_from_other_work() {
        let cpu = ringcast_os::affinity::allowed_cpus()[0];
        ringcast_os::affinity::pin_current_thread(&[cpu]).unwrap();
        let spin = |ms: u64| {
            let end = clock::now_ns() + ms * 1_000_000;
            while clock::now_ns() < end {
                std::hint::spin_loop();
            }
        };
        let r = MachineReading::now(Some(&[cpu]), &[]).unwrap();
        spin(600);
        let own = r.foreign_share_since(&[]).unwrap();
        assert!(own < 0.3, "our own work counted as foreign: {own}");

        let mut other = std::process::Command::new("taskset")
            .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("spawn a busy loop");
        let r = MachineReading::now(Some(&[cpu]), &[]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(600));
        let foreign = r.foreign_share_since(&[]).unwrap();
        let _ = other.kill();
        let _ = other.wait();
        assert!(
            foreign > 0.5,
            "another process's busy loop not seen: {foreign}"
        );
    }
}
