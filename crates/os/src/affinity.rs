//! CPU affinity: pin the calling thread (or a child between fork and exec) to a set of CPUs.

use std::io;

/// Pins the calling thread to `cpus` (each taken modulo `CPU_SETSIZE`).
///
/// Allocates nothing and calls only `sched_setaffinity`, so a child process may call it between
/// fork and exec (`CommandExt::pre_exec`).
pub fn pin_current_thread(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set); CPU_SET writes only inside
    // it (indices are reduced below its size); sched_setaffinity reads it through a valid
    // pointer, and pid 0 names the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on.
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: as above; sched_getaffinity writes into the set through a valid pointer.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// The number of CPUs online (at least 1).
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_and_reads_back() {
        let before = allowed_cpus();
        assert!(!before.is_empty());
        let handle = std::thread::spawn(move || {
            pin_current_thread(&[before[0]]).unwrap();
            allowed_cpus()
        });
        assert_eq!(handle.join().unwrap().len(), 1);
    }
}
