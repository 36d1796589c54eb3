//! Fan-out completion: when the last subscriber of a message got it.
//!
//! Why apart from [`crate::load::recorder`], which fills it: a table per reader thread of one
//! slot per message (how many of the thread's subscribers got it, and the latest of their
//! latencies), merged across threads and processes at the end of a step into the histogram
//! of the time a message took to reach all its subscribers. A message some subscriber never
//! got is counted incomplete, not timed.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::load::tally::new_histogram;

/// Fan-out of one message as seen by one reader thread: how many of its subscribers got it and
/// when the last of them did (as latency from the intended time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanoutSlot {
    pub count: u32,
    pub max_latency_ns: u64,
}

/// Fan-out slots of one publisher, indexed by `seq - base`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PublisherFanout {
    pub base: u64,
    pub slots: Vec<FanoutSlot>,
}

/// Largest jump ahead in sequence numbers a fan-out table follows (a corrupt or foreign seq
/// must not allocate gigabytes).
const MAX_FANOUT_AHEAD: u64 = 1 << 26;

/// Per-thread fan-out tables, one per publisher.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutTable {
    pub publishers: Vec<PublisherFanout>,
}

impl FanoutTable {
    pub fn new(publishers: u32) -> FanoutTable {
        FanoutTable {
            publishers: vec![PublisherFanout::default(); publishers as usize],
        }
    }

    #[inline(always)]
    pub fn record(&mut self, publisher: u32, seq: u64, latency_ns: u64) {
        let Some(p) = self.publishers.get_mut(publisher as usize) else {
            return;
        };
        if seq < p.base || seq - p.base > MAX_FANOUT_AHEAD {
            return;
        }
        let i = (seq - p.base) as usize;
        if i >= p.slots.len() {
            p.slots.resize(i + 1, FanoutSlot::default());
        }
        let s = &mut p.slots[i];
        s.count += 1;
        s.max_latency_ns = s.max_latency_ns.max(latency_ns);
    }

    /// Moves the slots out (for merging) and continues after them.
    pub fn take(&mut self) -> FanoutTable {
        FanoutTable {
            publishers: self
                .publishers
                .iter_mut()
                .map(|p| {
                    let slots = std::mem::take(&mut p.slots);
                    let out = PublisherFanout {
                        base: p.base,
                        slots,
                    };
                    p.base += out.slots.len() as u64;
                    out
                })
                .collect(),
        }
    }
}

/// Merges the tables of all threads and records, for every message delivered to all
/// `expected(publisher)` subscribers, the time its last subscriber got it.
pub fn merge_fanout(
    tables: &[FanoutTable],
    expected: impl Fn(u32) -> u32,
) -> (Histogram<u64>, u64) {
    let mut hist = new_histogram();
    let mut incomplete = 0u64;
    let publishers = tables.iter().map(|t| t.publishers.len()).max().unwrap_or(0);
    for p in 0..publishers {
        let parts: Vec<&PublisherFanout> =
            tables.iter().filter_map(|t| t.publishers.get(p)).collect();
        let Some(lo) = parts
            .iter()
            .filter(|x| !x.slots.is_empty())
            .map(|x| x.base)
            .min()
        else {
            continue;
        };
        let hi = parts
            .iter()
            .map(|x| x.base + x.slots.len() as u64)
            .max()
            .unwrap_or(lo);
        let mut merged = vec![FanoutSlot::default(); (hi - lo) as usize];
        for part in &parts {
            for (i, s) in part.slots.iter().enumerate() {
                let m = &mut merged[(part.base - lo) as usize + i];
                m.count += s.count;
                m.max_latency_ns = m.max_latency_ns.max(s.max_latency_ns);
            }
        }
        let want = expected(p as u32);
        for m in merged.iter().filter(|m| m.count > 0) {
            if m.count >= want {
                hist.saturating_record(m.max_latency_ns.max(1));
            } else {
                incomplete += 1;
            }
        }
    }
    (hist, incomplete)
}
