//! Latencies counted per delivery at a few instructions each, handed to HdrHistogram in bulk.
//!
//! A reader records one latency per delivery: 48 million a second when the default benchmark
//! reaches the server's limit on a 2-vCPU VM. `Histogram::record_n` is a call that checks its
//! bounds, keeps the minimum, maximum and total and cannot be inlined; it was 46 % of the
//! reader's user-space time per 16 KiB read (`benches/RESULTS.md`, "loadgen's headroom").
//! [`LatencyTally`] keeps a plain array of counts laid out exactly as a 3-significant-digit
//! HdrHistogram from 1 ns lays out its buckets, so a record is a bit scan, a shift and an add,
//! and [`LatencyTally::drain_into`] moves the counts into the real histogram, each bucket as
//! its lowest value. Lossless: the histogram ends up with the very counts it would have had
//! (the unit tests compare them bucket by bucket).

use hdrhistogram::Histogram;

/// Highest latency the histograms can hold (1 hour, in ns); larger values are clamped.
pub const MAX_LATENCY_NS: u64 = 3_600_000_000_000;

/// A new latency histogram: 1 ns .. 1 h, 3 significant figures (the layout a tally mirrors).
pub fn new_histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 * low, sigfig 3).
    Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_NS, 3).unwrap_or_else(|_| unreachable!())
}

/// log2 of half the sub-buckets of a bucket: 3 significant digits need 2,048 sub-buckets.
const HALF_MAGNITUDE: u32 = 10;
const SUB_BUCKET_MASK: u64 = (1 << (HALF_MAGNITUDE + 1)) - 1;
/// Leading zeros of a value just above the first bucket.
const LEADING_ZERO_BASE: u32 = 64 - (HALF_MAGNITUDE + 1);
/// The largest latency counted as itself: the top of the bucket that holds
/// [`MAX_LATENCY_NS`] (HdrHistogram sizes its counts by whole buckets; a larger value is
/// counted as [`MAX_LATENCY_NS`], as `saturating_record` does).
const HIGHEST_COUNTED_NS: u64 = ((SUB_BUCKET_MASK + 1) << bucket_of(MAX_LATENCY_NS)) - 1;
/// Slots: one per bucket of the histogram.
const SLOTS: usize = index_of(HIGHEST_COUNTED_NS) + 1;

#[inline(always)]
const fn bucket_of(value: u64) -> u32 {
    LEADING_ZERO_BASE - (value | SUB_BUCKET_MASK).leading_zeros()
}

/// The bucket of `value` in a [`new_histogram`]: HdrHistogram's `counts_index_for` with a unit
/// of 1 and 2,048 sub-buckets.
#[inline(always)]
const fn index_of(value: u64) -> usize {
    let bucket = bucket_of(value);
    ((bucket as usize) << HALF_MAGNITUDE) + (value >> bucket) as usize
}

/// The lowest value that falls in slot `index`.
fn lowest_of(index: usize) -> u64 {
    let half = 1usize << HALF_MAGNITUDE;
    if index < 2 * half {
        return index as u64;
    }
    let bucket = (index >> HALF_MAGNITUDE) - 1;
    (((index & (half - 1)) | half) as u64) << bucket
}

/// Counts of latencies by HdrHistogram bucket, not yet in a histogram.
#[derive(Debug, Clone)]
pub struct LatencyTally {
    counts: Box<[u64]>,
    /// Something was counted since the last drain. A plain store per record, where keeping the
    /// range of slots in use was a load, a compare and a store on the same two words for every
    /// delivery; a drain reads all the slots instead (~270 KB, a few times a second).
    dirty: bool,
}

impl Default for LatencyTally {
    fn default() -> Self {
        LatencyTally {
            counts: vec![0; SLOTS].into_boxed_slice(),
            dirty: false,
        }
    }
}

impl LatencyTally {
    /// Counts `n` latencies of `latency_ns` (one past the histogram's range counts as its
    /// highest, as `saturating_record` does).
    #[inline(always)]
    pub fn record_n(&mut self, latency_ns: u64, n: u64) {
        let v = if latency_ns > HIGHEST_COUNTED_NS {
            MAX_LATENCY_NS
        } else {
            latency_ns
        };
        let i = index_of(v);
        // `i` < SLOTS for every clamped value; the check is the compiler's to drop.
        if let Some(c) = self.counts.get_mut(i) {
            *c += n;
        }
        self.dirty = true;
    }

    /// True when nothing is counted.
    pub fn is_empty(&self) -> bool {
        !self.dirty
    }

    /// Adds every count to `hist` (a [`new_histogram`]) and starts empty again.
    pub fn drain_into(&mut self, hist: &mut Histogram<u64>) {
        if self.is_empty() {
            return;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                hist.saturating_record_n(lowest_of(i), std::mem::take(c));
            }
        }
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values around every power of two and every bucket edge, up to past the maximum.
    fn probe_values() -> Vec<u64> {
        let mut v = vec![
            0, 1, 2, 3, 1000, 1023, 1024, 1025, 2047, 2048, 2049, 4095, 4096,
        ];
        for shift in 0..63 {
            let p = 1u64 << shift;
            v.extend([p - 1, p, p + 1, p + p / 3, p + p / 2 + 7]);
        }
        v.extend([MAX_LATENCY_NS - 1, MAX_LATENCY_NS, MAX_LATENCY_NS + 1]);
        v.extend([HIGHEST_COUNTED_NS, HIGHEST_COUNTED_NS + 1, u64::MAX]);
        v
    }

    /// Each slot's lowest value is HdrHistogram's lowest equivalent value of its members.
    #[test]
    fn slots_are_hdrhistogram_buckets() {
        let h = new_histogram();
        assert_eq!(SLOTS, h.distinct_values());
        for v in probe_values() {
            let v = v.min(HIGHEST_COUNTED_NS);
            assert_eq!(lowest_of(index_of(v)), h.lowest_equivalent(v), "value {v}");
            assert!(index_of(v) < SLOTS);
        }
    }

    /// A tally drained into a histogram gives the very histogram direct records give.
    #[test]
    fn drained_tally_equals_direct_records() {
        let mut direct = new_histogram();
        let mut tally = LatencyTally::default();
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut values = probe_values();
        for _ in 0..100_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            // Latencies from ns to minutes, skewed to the ms range.
            values.push(seed >> (20 + seed % 40));
        }
        for (k, &v) in values.iter().enumerate() {
            let n = 1 + (k as u64 % 3);
            direct.saturating_record_n(v, n);
            tally.record_n(v, n);
        }
        let mut drained = new_histogram();
        tally.drain_into(&mut drained);
        assert!(tally.is_empty());
        assert_eq!(drained.len(), direct.len());
        assert_eq!(drained.max(), direct.max());
        assert_eq!(drained.min(), direct.min());
        let buckets = |h: &Histogram<u64>| -> Vec<(u64, u64)> {
            h.iter_recorded()
                .map(|x| (x.value_iterated_to(), x.count_at_value()))
                .collect()
        };
        let (a, b) = (buckets(&drained), buckets(&direct));
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y, "bucket (value, count)");
        }
        for q in [0.5, 0.9, 0.99, 0.999, 0.9999, 1.0] {
            assert_eq!(drained.value_at_quantile(q), direct.value_at_quantile(q));
        }
        // Drained twice adds nothing the second time.
        tally.drain_into(&mut drained);
        assert_eq!(drained.len(), direct.len());
    }
}
