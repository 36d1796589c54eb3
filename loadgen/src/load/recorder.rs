//! What subscribers measure: exact delivery counts, latency histograms, fan-out completion.
//!
//! Each reader thread owns one [`Recorder`] (no locks, no atomics on the hot path but one
//! relaxed counter for the progress line); at the end of a step the main thread merges them.
//! Counting is exact: every subscriber tracks, per publisher of its channel, the next sequence
//! number it expects and the ranges it skipped, so a delivery is classified as in order, filling
//! a gap (out of order), or a duplicate. Loss is what is left: expected deliveries (messages
//! sent to a channel x its subscribers) minus distinct deliveries, after a drain.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

pub use crate::load::fanout::{merge_fanout, FanoutSlot, FanoutTable, PublisherFanout};
use crate::load::payload::Stamp;
use crate::load::tally::LatencyTally;
pub use crate::load::tally::{new_histogram, MAX_LATENCY_NS};
use crate::load::topology::Placement;
pub use crate::load::topology::Topology;

/// Histograms on the wire: HdrHistogram's V2 serialized form (lossless: every bucket's count),
/// base64 in a string, for `#[serde(with = "hist_serde")]`.
pub mod hist_serde {
    use base64::Engine;
    use hdrhistogram::serialization::{Deserializer as V2In, Serializer as _, V2Serializer};
    use hdrhistogram::Histogram;
    use serde::{
        de::Error as _, ser::Error as _, Deserialize, Deserializer, Serialize, Serializer,
    };

    /// The base64 of the V2 serialized form of `h`.
    pub fn encode(h: &Histogram<u64>) -> Result<String, String> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut bytes)
            .map_err(|e| format!("{e:?}"))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// A histogram from [`encode`]'s text.
    pub fn decode(text: &str) -> Result<Histogram<u64>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| e.to_string())?;
        V2In::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| format!("{e:?}"))
    }

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        encode(h).map_err(S::Error::custom)?.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        decode(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    /// The same for a list of histograms.
    pub mod list {
        use super::{decode, encode};
        use hdrhistogram::Histogram;
        use serde::{
            de::Error as _, ser::Error as _, Deserialize, Deserializer, Serialize, Serializer,
        };

        pub fn serialize<S: Serializer>(h: &[Histogram<u64>], s: S) -> Result<S::Ok, S::Error> {
            h.iter()
                .map(encode)
                .collect::<Result<Vec<_>, _>>()
                .map_err(S::Error::custom)?
                .serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<Histogram<u64>>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|t| decode(t))
                .collect::<Result<_, _>>()
                .map_err(D::Error::custom)
        }
    }

    /// The same for an optional pair of histograms.
    pub mod option_pair {
        use super::{decode, encode};
        use hdrhistogram::Histogram;
        use serde::{
            de::Error as _, ser::Error as _, Deserialize, Deserializer, Serialize, Serializer,
        };

        pub fn serialize<S: Serializer>(
            h: &Option<[Histogram<u64>; 2]>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let text = match h {
                None => None,
                Some([a, b]) => Some([
                    encode(a).map_err(S::Error::custom)?,
                    encode(b).map_err(S::Error::custom)?,
                ]),
            };
            text.serialize(s)
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<[Histogram<u64>; 2]>, D::Error> {
            match Option::<[String; 2]>::deserialize(d)? {
                None => Ok(None),
                Some([a, b]) => Ok(Some([
                    decode(&a).map_err(D::Error::custom)?,
                    decode(&b).map_err(D::Error::custom)?,
                ])),
            }
        }
    }
}

/// Exact counts of what subscribers received in one step (mergeable by addition).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryCounts {
    /// Distinct (subscriber, message) deliveries of messages of this step.
    pub received: u64,
    /// Deliveries of a message the subscriber already had.
    pub duplicated: u64,
    /// Deliveries that arrived after a later message of the same publisher.
    pub out_of_order: u64,
    /// Deliveries of messages of an earlier step (arrived after its drain; counted lost there).
    pub late_from_earlier_step: u64,
    /// Deliveries whose publisher belongs to another channel (must be 0).
    pub cross_channel: u64,
    /// Messages without our stamp or with another run's tag.
    pub foreign: u64,
    /// Frames that broke the protocol (masked, reserved opcode, bad length).
    pub malformed: u64,
    /// Subscriber connections that ended (EOF or error) during the step.
    pub disconnects: u64,
    /// Close frames received from the server.
    pub server_close_frames: u64,
    /// Pings received (and answered, on subscribers).
    pub pings: u64,
    /// Data frames received by publishers (read and discarded).
    pub publisher_frames: u64,
    /// Bytes subscribers received from the socket (frames and headers, as on the wire).
    #[serde(default)]
    pub wire_bytes: u64,
    /// Data frames subscribers received compressed (permessage-deflate, RSV1).
    #[serde(default)]
    pub compressed: u64,
    /// Error replies from the server (Centrifugo's `{"error":...}` replies; HTTP API responses
    /// other than 200, or with an error).
    #[serde(default)]
    pub server_errors: u64,
}

impl DeliveryCounts {
    /// Adds `o` into `self`.
    pub fn merge(&mut self, o: &DeliveryCounts) {
        self.received += o.received;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.late_from_earlier_step += o.late_from_earlier_step;
        self.cross_channel += o.cross_channel;
        self.foreign += o.foreign;
        self.malformed += o.malformed;
        self.disconnects += o.disconnects;
        self.server_close_frames += o.server_close_frames;
        self.pings += o.pings;
        self.publisher_frames += o.publisher_frames;
        self.wire_bytes += o.wire_bytes;
        self.compressed += o.compressed;
        self.server_errors += o.server_errors;
    }
}

/// How one delivery relates to what the subscriber had from that publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    /// Skipped some sequence numbers (maybe lost, maybe coming later).
    AfterGap,
    /// Filled an earlier gap.
    OutOfOrder,
    Duplicate,
}

/// Per (subscriber, publisher): the next expected sequence number and the skipped ranges.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    next: u64,
    /// Half-open ranges [a, b) of sequence numbers skipped and not yet seen.
    missing: Vec<(u64, u64)>,
}

/// Skipped ranges kept per (subscriber, publisher); past it the oldest are forgotten (a late
/// arrival from those would then count as a duplicate, not as out of order).
const MAX_MISSING_RANGES: usize = 1024;

impl SeqTracker {
    /// Classifies the arrival of `seq` and updates the state.
    #[inline(always)]
    pub fn observe(&mut self, seq: u64) -> Arrival {
        if seq == self.next {
            self.next += 1;
            return Arrival::InOrder;
        }
        self.observe_unexpected(seq)
    }

    /// A gap, a late arrival or a duplicate: rare, kept out of the common path.
    #[cold]
    #[inline(never)]
    fn observe_unexpected(&mut self, seq: u64) -> Arrival {
        if seq > self.next {
            if self.missing.len() == MAX_MISSING_RANGES {
                self.missing.remove(0);
            }
            self.missing.push((self.next, seq));
            self.next = seq + 1;
            return Arrival::AfterGap;
        }
        // seq < next: a gap being filled, or a duplicate.
        match self.missing.iter().position(|&(a, b)| a <= seq && seq < b) {
            Some(i) => {
                let (a, b) = self.missing[i];
                match (seq == a, seq + 1 == b) {
                    (true, true) => {
                        self.missing.remove(i);
                    }
                    (true, false) => self.missing[i].0 = a + 1,
                    (false, true) => self.missing[i].1 = b - 1,
                    (false, false) => {
                        self.missing[i].1 = seq;
                        self.missing.insert(i + 1, (seq + 1, b));
                    }
                }
                Arrival::OutOfOrder
            }
            None => Arrival::Duplicate,
        }
    }
}

/// Latency figures of one histogram, in ns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_ns: u64,
    pub mean_ns: f64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p99_9_ns: u64,
    pub p99_99_ns: u64,
    pub max_ns: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.50),
            p90_ns: h.value_at_quantile(0.90),
            p99_ns: h.value_at_quantile(0.99),
            p99_9_ns: h.value_at_quantile(0.999),
            p99_99_ns: h.value_at_quantile(0.9999),
            max_ns: h.max(),
        }
    }
}

/// One reader thread's measurements for the current step.
pub struct Recorder {
    pub counts: DeliveryCounts,
    /// Publish -> receive latency of messages intended inside the measurement window, one
    /// histogram per second of the window (by intended time: second k holds the messages meant
    /// to be sent in [k, k+1) s after the window's start): the run's interval log
    /// (`latency.hlog`) and its latency-over-time chart. The window's histogram is their sum
    /// ([`Recorder::window_latency`]), built when asked for rather than recorded twice per
    /// message. Up to date after [`Recorder::flush_pending`].
    pub intervals: Vec<Histogram<u64>>,
    /// Latencies counted but not yet in their second's histogram: two seconds' worth, so that
    /// around a second's end, when connections read messages of both, neither is handed over
    /// at every switch ([`PendingSeconds`]).
    pending: PendingSeconds,
    /// The same, split by whether publisher and subscriber are on the same server ([0]) or on
    /// different ones ([1]): kept only when the run spans several servers.
    pub by_route: Option<[Histogram<u64>; 2]>,
    pub fanout: FanoutTable,
    pub run_tag: u32,
    pub topology: Topology,
    pub placement: Placement,
    /// Per publisher, what a received message needs to know of it (one lookup instead of two
    /// divisions and a second table per message).
    publishers: Vec<PublisherInfo>,
    /// Messages intended before this belong to an earlier step.
    pub step_start_ns: u64,
    /// Measurement window [start, end) on intended times.
    pub window_start_ns: u64,
    pub window_end_ns: u64,
}

/// What the recorder looks up per received message, per publisher.
#[derive(Debug, Clone, Copy)]
struct PublisherInfo {
    channel: u32,
    /// Index among the publishers of its channel (of the subscriber's trackers).
    index_in_channel: u32,
    /// Its latency is measured (it shares this process's clock).
    timed: bool,
}

/// What [`Recorder::on_messages`] holds in locals to count a subscriber's next messages of
/// one publisher whose intended times fall in one second of the window.
#[derive(Debug, Clone, Copy)]
struct InOrderRun {
    publisher: u32,
    /// Index of the publisher's tracker among the subscriber's.
    tracker: usize,
    /// The sequence number expected next (written back to the tracker when the run ends).
    next: u64,
    /// Intended times [from, until) inside the step, the window and the second.
    from_ns: u64,
    until_ns: u64,
    /// The pending slot of that second.
    slot: usize,
    /// The publisher's fan-out table's first sequence number.
    fan_base: u64,
}

/// The seconds being counted: slot `second % 2` tallies that second's latencies until a
/// message of second `second + 2` takes the slot over (the tally then goes to its histogram).
#[derive(Debug, Clone, Default)]
struct PendingSeconds {
    slots: [(usize, LatencyTally); 2],
}

impl PendingSeconds {
    /// The tally of `second`, the one it replaces handed to `intervals` first.
    #[inline(always)]
    fn tally(&mut self, second: usize, intervals: &mut Vec<Histogram<u64>>) -> &mut LatencyTally {
        let slot = &mut self.slots[second % 2];
        if slot.0 != second {
            if !slot.1.is_empty() {
                drain_second(&mut slot.1, slot.0, intervals);
            }
            slot.0 = second;
        }
        &mut slot.1
    }

    /// Hands every tally to its second's histogram.
    fn flush(&mut self, intervals: &mut Vec<Histogram<u64>>) {
        for (second, tally) in &mut self.slots {
            if !tally.is_empty() {
                drain_second(tally, *second, intervals);
            }
        }
    }
}

#[cold]
#[inline(never)]
fn drain_second(tally: &mut LatencyTally, second: usize, intervals: &mut Vec<Histogram<u64>>) {
    if second >= intervals.len() {
        intervals.resize_with(second + 1, new_histogram);
    }
    tally.drain_into(&mut intervals[second]);
}

/// One step's measurements, taken from a [`Recorder`].
pub struct Taken {
    pub counts: DeliveryCounts,
    pub latency: Histogram<u64>,
    pub intervals: Vec<Histogram<u64>>,
    pub by_route: Option<[Histogram<u64>; 2]>,
    pub fanout: FanoutTable,
}

impl Recorder {
    /// `timed`: per publisher, whether its messages are timed (those that share this
    /// process's clock); empty: all of them.
    pub fn new(
        run_tag: u32,
        topology: Topology,
        placement: Placement,
        timed: Vec<bool>,
    ) -> Recorder {
        let publishers = (0..topology.publishers)
            .map(|p| PublisherInfo {
                channel: topology.channel_of_publisher(p),
                index_in_channel: topology.index_in_channel(p),
                timed: timed.get(p as usize).copied().unwrap_or(true),
            })
            .collect();
        Recorder {
            counts: DeliveryCounts::default(),
            intervals: Vec::new(),
            pending: PendingSeconds::default(),
            by_route: (placement.targets > 1).then(|| [new_histogram(), new_histogram()]),
            fanout: FanoutTable::new(topology.publishers),
            run_tag,
            topology,
            placement,
            publishers,
            step_start_ns: u64::MAX,
            window_start_ns: u64::MAX,
            window_end_ns: u64::MAX,
        }
    }

    /// Records one data message received by a subscriber of `channel`, connected to server
    /// `target`, whose per-publisher trackers are `trackers` (indexed by the publisher's index
    /// in the channel).
    #[inline(always)]
    pub fn on_message(
        &mut self,
        payload: &[u8],
        channel: u32,
        target: u32,
        trackers: &mut [SeqTracker],
        recv_ns: u64,
    ) {
        self.on_stamp(Stamp::read(payload), channel, target, trackers, recv_ns);
    }

    /// [`Recorder::on_message`] of a payload whose stamp is read (`None`: too short for one).
    #[inline(always)]
    fn on_stamp(
        &mut self,
        stamp: Option<Stamp>,
        channel: u32,
        target: u32,
        trackers: &mut [SeqTracker],
        recv_ns: u64,
    ) {
        let Some(stamp) = stamp else {
            self.counts.foreign += 1;
            return;
        };
        let info = match self.publishers.get(stamp.publisher as usize) {
            Some(info) if stamp.run_tag == self.run_tag => *info,
            _ => {
                self.counts.foreign += 1;
                return;
            }
        };
        if info.channel != channel {
            self.counts.cross_channel += 1;
            return;
        }
        let Some(tracker) = trackers.get_mut(info.index_in_channel as usize) else {
            self.counts.foreign += 1;
            return;
        };
        let arrival = tracker.observe(stamp.seq);
        if stamp.intended_ns < self.step_start_ns {
            if arrival != Arrival::Duplicate {
                self.counts.late_from_earlier_step += 1;
            } else {
                self.counts.duplicated += 1;
            }
            return;
        }
        match arrival {
            Arrival::InOrder | Arrival::AfterGap => self.counts.received += 1,
            Arrival::OutOfOrder => {
                self.counts.received += 1;
                self.counts.out_of_order += 1;
            }
            Arrival::Duplicate => {
                self.counts.duplicated += 1;
                return;
            }
        }
        if info.timed
            && stamp.intended_ns >= self.window_start_ns
            && stamp.intended_ns < self.window_end_ns
        {
            let latency_ns = recv_ns.saturating_sub(stamp.intended_ns).max(1);
            let second = ((stamp.intended_ns - self.window_start_ns) / 1_000_000_000) as usize;
            self.pending
                .tally(second, &mut self.intervals)
                .record_n(latency_ns, 1);
            if let Some(routes) = &mut self.by_route {
                let cross = self.placement.publisher_target(stamp.publisher) != target;
                routes[usize::from(cross)].saturating_record(latency_ns);
            }
            self.fanout.record(stamp.publisher, stamp.seq, latency_ns);
        }
    }

    /// Records the data messages of one read of a subscriber of `channel` (connected to server
    /// `target`), `first` and those after it, exactly as [`Recorder::on_message`] would one by
    /// one, at a fraction of the instructions per message. `first` goes through
    /// `on_message`; after it, the common case (the next message of the same publisher, timed,
    /// in the same second of the window, its fan-out slot already there) is counted with what
    /// it needs held in locals, and anything else goes through `on_message` and starts a new
    /// run. Near capacity a read holds hundreds of messages and this loop is the reader's
    /// user-space cost per delivery (`benches/RESULTS.md`, "loadgen's headroom").
    #[inline]
    pub fn on_messages<'a>(
        &mut self,
        first: &[u8],
        rest: impl Iterator<Item = &'a [u8]>,
        channel: u32,
        target: u32,
        trackers: &mut [SeqTracker],
        recv_ns: u64,
    ) {
        let stamp = Stamp::read(first);
        self.on_stamp_out_of_line(stamp, channel, target, trackers, recv_ns);
        // The stamp `on_message` recorded last: the next run starts from it.
        let mut after = stamp;
        let mut run: Option<InOrderRun> = None;
        let mut received = 0u64;
        for payload in rest {
            if let Some(last) = after.take() {
                run = self.in_order_run(&last, channel, trackers);
            }
            let stamp = Stamp::read(payload);
            if let (Some(r), Some(stamp)) = (run.as_mut(), stamp) {
                if stamp.publisher == r.publisher
                    && stamp.run_tag == self.run_tag
                    && stamp.seq == r.next
                    && stamp.intended_ns >= r.from_ns
                    && stamp.intended_ns < r.until_ns
                {
                    let fan_index = stamp.seq.wrapping_sub(r.fan_base) as usize;
                    let fan_slot = self
                        .fanout
                        .publishers
                        .get_mut(r.publisher as usize)
                        .and_then(|f| f.slots.get_mut(fan_index));
                    if let Some(fan_slot) = fan_slot {
                        let latency_ns = recv_ns.saturating_sub(stamp.intended_ns).max(1);
                        r.next += 1;
                        received += 1;
                        self.pending.slots[r.slot].1.record_n(latency_ns, 1);
                        fan_slot.count += 1;
                        fan_slot.max_latency_ns = fan_slot.max_latency_ns.max(latency_ns);
                        continue;
                    }
                }
            }
            if let Some(r) = run.take() {
                trackers[r.tracker].next = r.next;
            }
            self.on_stamp_out_of_line(stamp, channel, target, trackers, recv_ns);
            after = stamp;
        }
        if let Some(r) = run {
            trackers[r.tracker].next = r.next;
        }
        self.counts.received += received;
    }

    /// [`Recorder::on_stamp`] as a call: the rare case of [`Recorder::on_messages`], kept out
    /// of its loop.
    #[inline(never)]
    fn on_stamp_out_of_line(
        &mut self,
        stamp: Option<Stamp>,
        channel: u32,
        target: u32,
        trackers: &mut [SeqTracker],
        recv_ns: u64,
    ) {
        self.on_stamp(stamp, channel, target, trackers, recv_ns);
    }

    /// What [`Recorder::on_messages`] needs to count the messages after `last` (just recorded
    /// by `on_message`) without it: `None` when the next one could need anything else.
    fn in_order_run(
        &self,
        last: &Stamp,
        channel: u32,
        trackers: &[SeqTracker],
    ) -> Option<InOrderRun> {
        let info = self.publishers.get(last.publisher as usize)?;
        let tracker = info.index_in_channel as usize;
        let usable = last.run_tag == self.run_tag
            && info.channel == channel
            && info.timed
            && self.by_route.is_none()
            && last.intended_ns >= self.step_start_ns
            && last.intended_ns >= self.window_start_ns
            && last.intended_ns < self.window_end_ns
            && trackers.get(tracker)?.next == last.seq + 1;
        if !usable {
            return None;
        }
        let second = ((last.intended_ns - self.window_start_ns) / 1_000_000_000) as usize;
        if self.pending.slots[second % 2].0 != second {
            return None;
        }
        let second_start = self.window_start_ns + second as u64 * 1_000_000_000;
        Some(InOrderRun {
            publisher: last.publisher,
            tracker,
            next: last.seq + 1,
            from_ns: second_start.max(self.step_start_ns),
            until_ns: second_start
                .saturating_add(1_000_000_000)
                .min(self.window_end_ns),
            slot: second % 2,
            fan_base: self.fanout.publishers.get(last.publisher as usize)?.base,
        })
    }

    /// Hands the latencies counted so far to their seconds' histograms.
    pub fn flush_pending(&mut self) {
        self.pending.flush(&mut self.intervals);
    }

    /// Latency of every message of the window so far: the sum of the per-second histograms
    /// (call [`Recorder::flush_pending`] first for the latest).
    pub fn window_latency(&self) -> Histogram<u64> {
        let mut sum = new_histogram();
        for h in &self.intervals {
            // Same bounds: adding cannot fail.
            let _ = sum.add(h);
        }
        sum
    }

    /// Takes this step's measurements and starts afresh.
    pub fn take(&mut self) -> Taken {
        self.flush_pending();
        let fresh = (self.placement.targets > 1).then(|| [new_histogram(), new_histogram()]);
        Taken {
            counts: std::mem::take(&mut self.counts),
            latency: self.window_latency(),
            intervals: std::mem::take(&mut self.intervals),
            by_route: std::mem::replace(&mut self.by_route, fresh),
            fanout: self.fanout.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_arrivals() {
        let mut t = SeqTracker::default();
        assert_eq!(t.observe(0), Arrival::InOrder);
        assert_eq!(t.observe(1), Arrival::InOrder);
        assert_eq!(t.observe(5), Arrival::AfterGap); // 2,3,4 missing
        assert_eq!(t.observe(3), Arrival::OutOfOrder);
        assert_eq!(t.observe(3), Arrival::Duplicate);
        assert_eq!(t.observe(2), Arrival::OutOfOrder);
        assert_eq!(t.observe(4), Arrival::OutOfOrder);
        assert_eq!(t.observe(4), Arrival::Duplicate);
        assert_eq!(t.observe(5), Arrival::Duplicate);
        assert_eq!(t.observe(6), Arrival::InOrder);
        assert!(t.missing.is_empty());
    }

    #[test]
    fn percentiles_of_a_fixture() {
        // 1..=100,000 µs, once each: the p-th percentile is p% of 100 ms.
        let mut h = new_histogram();
        for us in 1..=100_000u64 {
            h.record(us * 1_000).unwrap();
        }
        let s = LatencySummary::of(&h);
        let close = |got: u64, want: u64| {
            let err = (got as f64 - want as f64).abs() / want as f64;
            assert!(err < 0.001, "{got} vs {want}");
        };
        assert_eq!(s.count, 100_000);
        close(s.min_ns, 1_000);
        close(s.p50_ns, 50_000_000);
        close(s.p90_ns, 90_000_000);
        close(s.p99_ns, 99_000_000);
        close(s.p99_9_ns, 99_900_000);
        close(s.p99_99_ns, 99_990_000);
        close(s.max_ns, 100_000_000);
        assert!((s.mean_ns - 50_000_500.0).abs() / 50_000_500.0 < 0.001);
        // Merging per-thread histograms gives the same figures as one histogram.
        let (mut a, mut b) = (new_histogram(), new_histogram());
        for us in 1..=100_000u64 {
            if us % 3 == 0 { &mut a } else { &mut b }
                .record(us * 1_000)
                .unwrap();
        }
        a.add(&b).unwrap();
        assert_eq!(LatencySummary::of(&a), s);
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn topology_spreads_evenly() {
        let t = Topology {
            channels: 3,
            publishers: 4,
            subscribers: 10,
        };
        assert_eq!(
            (0..3)
                .map(|c| t.publishers_in_channel(c))
                .collect::<Vec<_>>(),
            vec![2, 1, 1]
        );
        assert_eq!((0..3).map(|c| t.subscribers_in_channel(c)).sum::<u32>(), 10);
        assert_eq!(t.channel_of_publisher(3), 0);
        assert_eq!(t.index_in_channel(3), 1);
    }

    fn stamp(p: u32, seq: u64, t: u64) -> [u8; 24] {
        let mut b = [0u8; 24];
        Stamp {
            run_tag: 9,
            publisher: p,
            seq,
            intended_ns: t,
        }
        .write(&mut b);
        b
    }

    #[test]
    fn histograms_cross_the_wire_whole_and_merge_as_their_sum() {
        // Two workers' histograms, serialized and read back, add up to exactly the histogram
        // of every value they recorded (bucket by bucket, not percentile by percentile).
        let (mut a, mut b, mut all) = (new_histogram(), new_histogram(), new_histogram());
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..50_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 1_000 + x % 2_000_000_000;
            if i % 3 == 0 { &mut a } else { &mut b }.record(v).unwrap();
            all.record(v).unwrap();
        }
        let mut merged = new_histogram();
        for h in [&a, &b] {
            let back = hist_serde::decode(&hist_serde::encode(h).unwrap()).unwrap();
            assert_eq!(&back, h, "lossless round trip");
            merged.add(&back).unwrap();
        }
        assert_eq!(merged, all);
        assert_eq!(merged.len(), 50_000);
        assert_eq!(merged.value_at_quantile(0.99), all.value_at_quantile(0.99));
    }

    #[test]
    fn latencies_are_counted_exactly() {
        // Runs of equal latency (one message to many subscribers in one batch), runs broken by
        // a new value or a new second, single values, and messages of one second arriving
        // after the next second's: the histograms get exactly the counts that one record per
        // delivery would give.
        let subscribers = 5u32;
        let topo = Topology {
            channels: 1,
            publishers: 1,
            subscribers,
        };
        let mut r = Recorder::new(9, topo, Placement::single(), Vec::new());
        r.step_start_ns = 0;
        r.window_start_ns = 0;
        r.window_end_ns = u64::MAX;
        let mut trackers = vec![vec![SeqTracker::default()]; subscribers as usize];
        let (mut want_all, mut want_per_second) = (new_histogram(), Vec::new());
        for seq in 0..400u64 {
            let intended = seq * 10_000_000; // 100 messages per second: 4 seconds
            for (s, t) in trackers.iter_mut().enumerate() {
                // Same latency for subscribers 0-2 (one batch), distinct for 3 and 4.
                let latency = 1_000 + (seq % 7) * 100 + if s < 3 { 0 } else { s as u64 * 37 };
                r.on_message(&stamp(0, seq, intended), 0, 0, t, intended + latency);
                want_all.record(latency).unwrap();
                let second = (intended / 1_000_000_000) as usize;
                if want_per_second.len() <= second {
                    want_per_second.resize_with(second + 1, new_histogram);
                }
                want_per_second[second].record(latency).unwrap();
            }
            if seq == 250 {
                // A look at the window mid-run, once flushed, has every delivery so far.
                r.flush_pending();
                assert_eq!(r.window_latency().len(), 251 * u64::from(subscribers));
            }
        }
        // Late arrivals of seconds 0, 1 and 2 (each slot taken over twice since), after
        // seconds 3's: each lands in its own second.
        for (second, t) in [(0u64, 0usize), (2, 1), (1, 2), (2, 3)] {
            let intended = second * 1_000_000_000 + 5;
            let latency = 2_000_000 + second;
            r.on_message(
                &stamp(0, 1_000 + second, intended),
                0,
                0,
                &mut trackers[t],
                intended + latency,
            );
            want_all.record(latency).unwrap();
            want_per_second[second as usize].record(latency).unwrap();
        }
        let taken = r.take();
        assert_eq!(taken.latency, want_all);
        assert_eq!(taken.intervals, want_per_second);
        assert_eq!(taken.counts.received, 400 * u64::from(subscribers) + 4);
    }

    /// `on_messages` over reads of any size gives what `on_message` gives one message at a
    /// time: counts, trackers, every second's histogram and the fan-out tables, through runs
    /// broken by every case it hands over (another publisher, a gap, a duplicate, a late
    /// message, a new second, the window's edges, the step's start, a short or foreign
    /// payload, a fan-out slot not there yet).
    #[test]
    fn a_read_at_a_time_counts_what_a_message_at_a_time_does() {
        let topo = Topology {
            channels: 1,
            publishers: 2,
            subscribers: 3,
        };
        let fresh = || {
            let mut r = Recorder::new(9, topo.clone(), Placement::single(), vec![true, true]);
            r.step_start_ns = 500_000_000;
            r.window_start_ns = 1_000_000_000;
            r.window_end_ns = 4_000_000_000;
            r
        };
        let (mut one, mut many) = (fresh(), fresh());
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut rand = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        // Per subscriber: the payloads it receives, mostly in order, 200 per second and
        // publisher from 0.4 s to 4.2 s.
        let mut streams: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
        for stream in &mut streams {
            let mut seqs = [0u64; 2];
            while seqs.iter().any(|&q| q < 760) {
                let p = if rand(8) == 0 { 1 } else { 0 } as usize;
                let seq = seqs[p];
                if seq >= 760 {
                    seqs[1 - p] += 1;
                    continue;
                }
                let intended = 400_000_000 + seq * 5_000_000;
                let emit = |seq: u64, t: u64, out: &mut Vec<Vec<u8>>| {
                    out.push(stamp(p as u32, seq, t).to_vec());
                };
                match rand(40) {
                    0 => {} // lost
                    1 => {
                        emit(seq, intended, stream);
                        emit(seq, intended, stream); // duplicate
                    }
                    2 if seq > 3 => {
                        emit(seq, intended, stream);
                        emit(seq - 3, 400_000_000 + (seq - 3) * 5_000_000, stream);
                    }
                    3 => stream.push(b"short".to_vec()),
                    4 => {
                        let mut foreign = stamp(p as u32, seq, intended);
                        foreign[0] ^= 1;
                        stream.push(foreign.to_vec());
                        emit(seq, intended, stream);
                    }
                    _ => emit(seq, intended, stream),
                }
                seqs[p] += 1;
            }
        }
        let mut trackers_one = vec![vec![SeqTracker::default(); 2]; 3];
        let mut trackers_many = trackers_one.clone();
        let mut at = [0usize; 3];
        let mut recv_ns = 0;
        while (0..3).any(|s| at[s] < streams[s].len()) {
            let s = rand(3) as usize;
            let n = (1 + rand(60) as usize).min(streams[s].len() - at[s]);
            if n == 0 {
                continue;
            }
            let read = &streams[s][at[s]..at[s] + n];
            at[s] += n;
            recv_ns += rand(3_000_000);
            let latest = read
                .iter()
                .filter_map(|p| Stamp::read(p))
                .map(|t| t.intended_ns);
            let now = recv_ns.max(latest.max().unwrap_or(0) + 1 + rand(2_000_000));
            recv_ns = now;
            for payload in read {
                one.on_message(payload, 0, 0, &mut trackers_one[s], now);
            }
            let (first, rest) = (&read[0], read[1..].iter().map(|p| p.as_slice()));
            many.on_messages(first, rest, 0, 0, &mut trackers_many[s], now);
        }
        assert_eq!(format!("{trackers_one:?}"), format!("{trackers_many:?}"));
        let (a, b) = (one.take(), many.take());
        assert_eq!(a.counts, b.counts);
        assert!(a.counts.received > 2_000, "{:?}", a.counts);
        assert!(a.counts.duplicated > 0 && a.counts.out_of_order > 0 && a.counts.foreign > 0);
        assert!(a.counts.late_from_earlier_step > 0);
        assert_eq!(a.intervals, b.intervals);
        assert_eq!(a.intervals.len(), 3);
        assert_eq!(a.latency, b.latency);
        assert_eq!(
            serde_json::to_string(&a.fanout).unwrap(),
            serde_json::to_string(&b.fanout).unwrap()
        );
    }

    #[test]
    fn recorder_counts_and_fanout() {
        let topo = Topology {
            channels: 1,
            publishers: 1,
            subscribers: 2,
        };
        let mut r = Recorder::new(9, topo, Placement::single(), Vec::new());
        r.step_start_ns = 0;
        r.window_start_ns = 100;
        r.window_end_ns = 1_000;
        let mut a = vec![SeqTracker::default()];
        let mut b = vec![SeqTracker::default()];
        for seq in 0..3u64 {
            let t = 50 + seq * 100; // 50 (warm-up), 150, 250
            r.on_message(&stamp(0, seq, t), 0, 0, &mut a, t + 10);
            if seq != 2 {
                r.on_message(&stamp(0, seq, t), 0, 0, &mut b, t + 30);
            }
        }
        r.on_message(&stamp(0, 1, 150), 0, 0, &mut b, 500);
        r.on_message(b"short", 0, 0, &mut b, 500);
        let Taken {
            counts,
            latency: hist,
            fanout,
            ..
        } = r.take();
        assert_eq!(counts.received, 5);
        assert_eq!(counts.duplicated, 1);
        assert_eq!(counts.foreign, 1);
        assert_eq!(hist.len(), 3); // 150 x2, 250 x1
        let (fan, incomplete) = merge_fanout(&[fanout], |_| 2);
        assert_eq!(fan.len(), 1); // seq 1 reached both
        assert_eq!(fan.max(), 30);
        assert_eq!(incomplete, 1); // seq 2 reached one
    }
}
