//! One machine-wide monotonic clock, in nanoseconds: `CLOCK_MONOTONIC`.
//!
//! Every timestamp in a run (a message's intended send time, its receive time, the pacer's
//! actual send time) comes from here, so latencies are plain subtractions and no two threads
//! disagree about "now". The clock is the kernel's own, not offset per process, so that every
//! loadgen process on one machine (a coordinator and its workers) shares it: a message stamped
//! by one process and received by another is timed exactly. Processes on different machines do
//! not share it; they meet on the wall clock ([`realtime_ns`]) for a common start, and their
//! deliveries are counted but not timed. `CLOCK_MONOTONIC` is read through the vDSO (tens of
//! ns), and [`sleep_until_ns`] uses `clock_nanosleep(TIMER_ABSTIME)` on the same clock: tokio's
//! timer wheel has 1 ms granularity, which would add up to 1 ms of false latency to every
//! message.

fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks used here always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Nanoseconds on the machine's monotonic clock.
#[inline]
pub fn now_ns() -> u64 {
    read_clock(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch (the wall clock: may step; only for meeting other machines).
pub fn realtime_ns() -> u64 {
    read_clock(libc::CLOCK_REALTIME)
}

/// The monotonic time of wall-clock time `realtime`, as this machine reckons it now.
pub fn monotonic_of_realtime(realtime: u64) -> u64 {
    let (mono, real) = (now_ns(), realtime_ns());
    (realtime + mono).saturating_sub(real)
}

/// The wall-clock time of monotonic time `monotonic` on this machine.
pub fn realtime_of_monotonic(monotonic: u64) -> u64 {
    let (mono, real) = (now_ns(), realtime_ns());
    (monotonic + real).saturating_sub(mono)
}

/// This machine's boot id: processes with the same one share [`now_ns`]'s clock.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Sleeps until `deadline_ns` ([`now_ns`]'s clock); returns at once if it has passed.
pub fn sleep_until_ns(deadline_ns: u64) {
    let abs = deadline_ns;
    let ts = libc::timespec {
        tv_sec: (abs / 1_000_000_000) as libc::time_t,
        tv_nsec: (abs % 1_000_000_000) as libc::c_long,
    };
    loop {
        // SAFETY: `ts` is a valid timespec; a null remainder is allowed with TIMER_ABSTIME.
        let rc = unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            )
        };
        if rc != libc::EINTR {
            return;
        }
    }
}

/// Sleeps until `deadline_ns`, the last `spin_ns` of it in a busy loop (sharper wake-up at the
/// cost of CPU).
pub fn wait_until_ns(deadline_ns: u64, spin_ns: u64) {
    let now = now_ns();
    if now >= deadline_ns {
        return;
    }
    if deadline_ns - now > spin_ns {
        sleep_until_ns(deadline_ns - spin_ns);
    }
    while now_ns() < deadline_ns {
        std::hint::spin_loop();
    }
}

/// Asks the kernel for 1 ns timer slack on the calling thread (the default 50 µs would be added
/// to every timed wake-up of the pacer).
pub fn set_thread_timer_slack_1ns() {
    // SAFETY: PR_SET_TIMERSLACK takes an integer argument and affects only this thread.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0) };
}

/// CPU time (user + system) used by the calling thread, in ns.
pub fn thread_cpu_ns() -> u64 {
    rusage_cpu_ns(libc::RUSAGE_THREAD)
}

/// CPU time (user + system) used by the whole process so far, in ns.
pub fn process_cpu_ns() -> u64 {
    rusage_cpu_ns(libc::RUSAGE_SELF)
}

fn rusage_cpu_ns(who: libc::c_int) -> u64 {
    // SAFETY: zeroed rusage is a valid value to be overwritten by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is valid and writable.
    unsafe { libc::getrusage(who, &mut ru) };
    let tv_ns = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000_000 + tv.tv_usec as u64 * 1_000;
    tv_ns(ru.ru_utime) + tv_ns(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_and_sleeps() {
        let a = now_ns();
        sleep_until_ns(a + 2_000_000);
        let b = now_ns();
        assert!(b >= a + 2_000_000);
        wait_until_ns(b + 100_000, 50_000);
        assert!(now_ns() >= b + 100_000);
    }

    #[test]
    fn monotonic_and_wall_clock_times_convert_both_ways() {
        let mono = now_ns() + 5_000_000_000;
        let back = monotonic_of_realtime(realtime_of_monotonic(mono));
        assert!(back.abs_diff(mono) < 10_000_000, "{mono} -> {back}");
        assert_eq!(boot_id().len(), 36);
    }
}
