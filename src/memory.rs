//! Giving memory back after a spike of connections.
//!
//! glibc's allocator keeps what it frees in its arenas (one per thread) for reuse; after
//! 50,000 connections come and go, the process would hold their peak memory for good, which
//! `/proc` shows as a leak even though nothing is live. Once a second each worker compares its
//! open sockets with their peak since its last look; when they have fallen to half of a peak of
//! at least [`MIN_SPIKE`], it asks the allocator to return free pages (`malloc_trim`). The cost
//! (a walk of the free lists, a millisecond or so) is paid only after large departures, never
//! per connection.

/// Peaks smaller than this many sockets are not worth a trim.
const MIN_SPIKE: usize = 256;

/// One worker thread's peak of open sockets since its last trim.
#[derive(Debug, Default)]
pub(crate) struct Trimmer {
    peak: std::cell::Cell<usize>,
}

impl Trimmer {
    /// The thread now has `open` sockets (called as sockets are registered: only the peak
    /// matters).
    pub(crate) fn note(&self, open: usize) {
        if open > self.peak.get() {
            self.peak.set(open);
        }
    }

    /// The once-a-second look: trims when the thread has lost half of a large peak.
    pub(crate) fn tick(&self, open: usize) {
        let peak = self.peak.get();
        if peak >= MIN_SPIKE && open <= peak / 2 {
            trim();
            self.peak.set(open);
        }
    }
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_departure() {
        let t = Trimmer::default();
        t.note(1000);
        t.tick(600);
        assert_eq!(t.peak.get(), 1000, "not yet half");
        t.tick(500);
        assert_eq!(t.peak.get(), 500, "trimmed: the peak restarts");
        let small = Trimmer::default();
        small.note(MIN_SPIKE - 1);
        small.tick(0);
        assert_eq!(
            small.peak.get(),
            MIN_SPIKE - 1,
            "a peak under MIN_SPIKE is left alone"
        );
    }
}
