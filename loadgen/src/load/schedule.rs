//! When each message is meant to be sent: the open-loop schedule.
//!
//! Publishers send at a constant total rate whatever the server does, and every message carries
//! the time it was *meant* to go out. Latency is measured from that intended time, so a server
//! that stalls the sender cannot hide the stall (coordinated omission, as in wrk2). Message `i`
//! of a step is intended at `start + i * 1e9 / rate`, computed exactly in integer nanoseconds
//! (no accumulated floating-point drift), and goes to publisher `i mod P`. A loadgen process
//! that runs some of the publishers (a worker) sends the messages of its own only.

/// The intended send times of one rate step.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Intended time of message 0 (monotonic ns, `clock::now_ns`).
    pub start_ns: u64,
    /// Messages are intended strictly before this time.
    pub end_ns: u64,
    /// Total messages per second over all publishers.
    pub rate_per_s: f64,
    /// Number of publishers (round-robin).
    pub publishers: u32,
    /// The publishers this process sends for (global numbers).
    pub own: std::ops::Range<u32>,
}

impl Schedule {
    /// The rate in messages per 1000 s: integer, so that intended times are exact rationals
    /// (no floating-point drift over long runs) for any rate with up to 3 decimals.
    fn rate_milli(&self) -> u128 {
        ((self.rate_per_s * 1000.0).round() as u128).max(1)
    }

    /// Intended time of message `index` (monotonic ns, `clock::now_ns`): `start + floor(index * 1e9 / rate)`.
    pub fn intended_ns(&self, index: u64) -> u64 {
        self.start_ns + (u128::from(index) * 1_000_000_000_000 / self.rate_milli()) as u64
    }

    /// Publisher (0-based) that sends message `index`.
    pub fn publisher_of(&self, index: u64) -> u32 {
        (index % u64::from(self.publishers.max(1))) as u32
    }

    /// Whether this process sends message `index`.
    pub fn is_own(&self, index: u64) -> bool {
        self.own.contains(&self.publisher_of(index))
    }

    /// Number of messages whose intended time is `<= now_ns` and before `end_ns`.
    pub fn due_count(&self, now_ns: u64) -> u64 {
        let upto = now_ns.min(self.end_ns.saturating_sub(1));
        if upto < self.start_ns {
            return 0;
        }
        // Message i is due iff floor(i * 1e12 / r) <= e, i.e. i < (e + 1) * r / 1e12.
        let e1 = u128::from(upto - self.start_ns) + 1;
        ((e1 * self.rate_milli()).div_ceil(1_000_000_000_000)) as u64
    }

    /// Total messages of the step.
    pub fn total(&self) -> u64 {
        if self.end_ns <= self.start_ns {
            return 0;
        }
        self.due_count(self.end_ns - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(rate: f64) -> Schedule {
        Schedule {
            start_ns: 1_000,
            end_ns: 1_000 + 1_000_000_000,
            rate_per_s: rate,
            publishers: 3,
            own: 0..3,
        }
    }

    #[test]
    fn intended_times_are_evenly_spaced() {
        let s = sched(2000.0);
        assert_eq!(s.intended_ns(0), 1_000);
        assert_eq!(s.intended_ns(1), 1_000 + 500_000);
        assert_eq!(s.intended_ns(2000), 1_000 + 1_000_000_000);
        assert_eq!(s.total(), 2000);
    }

    #[test]
    fn non_integer_interval_does_not_drift() {
        // 3 msg/s: 333,333,333.33 ns apart; message 3 is exactly one second later.
        let s = sched(3.0);
        assert_eq!(s.intended_ns(1), 1_000 + 333_333_333);
        assert_eq!(s.intended_ns(3), 1_000 + 1_000_000_000);
        // 7000/s over 1 s: exactly 7000 messages.
        assert_eq!(sched(7000.0).total(), 7000);
    }

    #[test]
    fn due_counts_follow_the_clock() {
        let s = sched(1000.0);
        assert_eq!(s.due_count(999), 0);
        assert_eq!(s.due_count(1_000), 1);
        assert_eq!(s.due_count(1_000 + 999_999), 1);
        assert_eq!(s.due_count(1_000 + 1_000_000), 2);
        assert_eq!(s.due_count(u64::MAX), 1000);
        for i in 0..1000 {
            assert_eq!(s.due_count(s.intended_ns(i)), i + 1);
        }
    }

    #[test]
    fn round_robin_publishers() {
        let s = sched(10.0);
        let pubs: Vec<u32> = (0..6).map(|i| s.publisher_of(i)).collect();
        assert_eq!(pubs, vec![0, 1, 2, 0, 1, 2]);
    }
}
