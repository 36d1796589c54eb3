//! Finding capacity: what counts as a step that held, and which rates to try next.
//!
//! A step *holds* when nothing was lost (after the drain), nothing failed to send, no
//! connection dropped, and p99 stayed within the SLO ([`step_passes`]).
//!
//! One search, [`Search`], serves both `loadgen sweep` and `loadgen compare`: it moves up while
//! every step held and down while none did, then narrows between the highest rate that held
//! and the lowest that failed, optionally repeating a failing step once (`--confirm`). Where
//! it moves is its [`Ladder`], the one thing the two commands configure differently:
//!
//! - [`Rates`] (`loadgen sweep`): an explicit list (`--rates`), walked in order until a step
//!   fails; or doubling from `--start-rate` up to `--max-rate` until a step fails (halving
//!   instead while no step has held, down to 1/64 of the start), then `--refine` bisections
//!   to whole msg/s between the last rate that held and the first that did not.
//! - [`Grid`] (`loadgen compare`): indices of the rates 2^(i/6) msg/s (~12 % apart), moved by
//!   a stride that doubles with each move (up to a factor 4), then bisected until the highest
//!   that held and the lowest that failed are adjacent, so that repeated runs land on the same
//!   rates.
//!
//! Capacity is the highest achieved deliveries/s among the steps that held.

use std::fmt::Debug;

use crate::load::session::StepResult;

/// Whether a step held: zero loss, all sent, no disconnects, measured, p99 within the SLO.
pub fn step_passes(s: &StepResult, slo_p99_ns: u64) -> bool {
    s.lost == 0
        && s.unsent == 0
        && s.counts.disconnects == 0
        && s.latency.count > 0
        && s.latency.p99_ns <= slo_p99_ns
}

/// Index of the step with the highest achieved deliveries/s among those that passed.
pub fn capacity_step(steps: &[StepResult]) -> Option<usize> {
    steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.passed == Some(true))
        .max_by(|a, b| a.1.deliveries_per_s.total_cmp(&b.1.deliveries_per_s))
        .map(|(i, _)| i)
}

/// Where a [`Search`] may step: the rungs it tries and how it moves between them.
pub trait Ladder {
    /// A position on the ladder: a rate, or an index on a grid of rates.
    type Rung: Copy + PartialOrd + Debug;
    /// The first rung to try (none: there is nothing to try).
    fn first(&self) -> Option<Self::Rung>;
    /// The next rung while every step held; `held` is the highest that did.
    fn above(&mut self, held: Self::Rung) -> Option<Self::Rung>;
    /// The next rung while no step held; `failed` is the lowest that failed.
    fn below(&mut self, failed: Self::Rung) -> Option<Self::Rung>;
    /// A rung strictly between the highest that held and the lowest that failed, or none when
    /// the search is done.
    fn between(&mut self, held: Self::Rung, failed: Self::Rung) -> Option<Self::Rung>;
}

/// The capacity search: up while steps hold, down while they fail, then in between.
#[derive(Debug, Clone)]
pub struct Search<L: Ladder> {
    ladder: L,
    held: Option<L::Rung>,
    failed: Option<L::Rung>,
    next: Option<L::Rung>,
    confirm: bool,
    confirming: bool,
}

fn higher<T: PartialOrd>(a: Option<T>, b: T) -> T {
    match a {
        Some(a) if a > b => a,
        _ => b,
    }
}

fn lower<T: PartialOrd>(a: Option<T>, b: T) -> T {
    match a {
        Some(a) if a < b => a,
        _ => b,
    }
}

impl<L: Ladder> Search<L> {
    /// A search that starts at the ladder's first rung.
    pub fn new(ladder: L) -> Self {
        Search {
            next: ladder.first(),
            ladder,
            held: None,
            failed: None,
            confirm: false,
            confirming: false,
        }
    }

    /// With `confirm`, a failing step is repeated once before it counts as failed.
    pub fn confirming(mut self, confirm: bool) -> Self {
        self.confirm = confirm;
        self
    }

    /// The rung to try next, if any.
    pub fn next(&self) -> Option<L::Rung> {
        self.next
    }

    /// Records whether the step at `rung` held, and decides the next one.
    pub fn record(&mut self, rung: L::Rung, passed: bool) {
        if !passed && self.confirm && !self.confirming {
            self.confirming = true;
            self.next = Some(rung);
            return;
        }
        self.confirming = false;
        if passed {
            self.held = Some(higher(self.held, rung));
        } else {
            self.failed = Some(lower(self.failed, rung));
        }
        self.next = match (self.held, self.failed) {
            (Some(h), None) => self.ladder.above(h),
            (None, Some(f)) => self.ladder.below(f),
            (Some(h), Some(f)) => self.ladder.between(h, f),
            (None, None) => None,
        };
    }

    /// The highest rung that held.
    pub fn highest_pass(&self) -> Option<L::Rung> {
        self.held
    }

    /// The lowest rung that failed.
    pub fn lowest_fail(&self) -> Option<L::Rung> {
        self.failed
    }
}

/// The rates `loadgen sweep` tries, in msg/s.
#[derive(Debug, Clone)]
pub enum Rates {
    /// `--rates`: in the order given, up to the first that fails.
    List { rates: Vec<f64>, at: usize },
    /// Doubling from `start` up to `max`, halving (whole msg/s, down to `start` / 64) while
    /// nothing held, then `refine_left` bisections to whole msg/s.
    Doubling {
        start: f64,
        max: f64,
        refine_left: u32,
    },
}

impl Rates {
    /// The sweep's options: an explicit list when given, else doubling from `start`.
    pub fn new(list: Option<Vec<f64>>, start: f64, max: f64, refine: u32) -> Rates {
        match list {
            Some(rates) => Rates::List { rates, at: 0 },
            None => Rates::Doubling {
                start: start.max(1.0),
                max: max.max(start),
                refine_left: refine,
            },
        }
    }
}

impl Ladder for Rates {
    type Rung = f64;

    fn first(&self) -> Option<f64> {
        match self {
            Rates::List { rates, .. } => rates.first().copied(),
            Rates::Doubling { start, .. } => Some(*start),
        }
    }

    fn above(&mut self, held: f64) -> Option<f64> {
        match self {
            Rates::List { rates, at } => {
                *at += 1;
                rates.get(*at).copied()
            }
            Rates::Doubling { max, .. } => {
                let r = held * 2.0;
                (r <= *max * 1.000_001).then_some(r)
            }
        }
    }

    fn below(&mut self, failed: f64) -> Option<f64> {
        match self {
            Rates::List { .. } => None,
            Rates::Doubling { start, .. } => {
                let r = (failed / 2.0).round();
                (r >= (*start / 64.0).max(1.0)).then_some(r)
            }
        }
    }

    fn between(&mut self, held: f64, failed: f64) -> Option<f64> {
        match self {
            Rates::List { .. } => None,
            Rates::Doubling { refine_left, .. } => {
                if *refine_left == 0 {
                    return None;
                }
                *refine_left -= 1;
                let mid = ((held + failed) / 2.0).round();
                (mid > held && mid < failed).then_some(mid)
            }
        }
    }
}

/// Rates of the capacity grid: 2^(i/6) msg/s, ~12.2 % apart, from 1 msg/s.
pub fn grid_rate(i: i32) -> f64 {
    (f64::from(i) / 6.0).exp2()
}

/// Nearest grid index of a rate.
pub fn grid_index(rate: f64) -> i32 {
    (rate.max(1.0).log2() * 6.0).round() as i32
}

/// Largest move on the [`Grid`], in grid steps.
const MAX_STRIDE: i32 = 12;

/// The grid `loadgen compare` searches: indices of [`grid_rate`], from `start` by a stride
/// that doubles with each move (up to 12 grid steps, a factor 4), never below `min` nor
/// above `max`; bisected until the highest that held and the lowest that failed are adjacent.
#[derive(Debug, Clone)]
pub struct Grid {
    start: i32,
    stride: i32,
    min: i32,
    max: i32,
}

impl Grid {
    /// A grid search from `start` with a first move of `stride` grid steps.
    pub fn new(start: i32, stride: i32, min: i32, max: i32) -> Grid {
        Grid {
            start,
            stride: stride.clamp(1, MAX_STRIDE),
            min,
            max,
        }
    }

    /// The stride for the next move, and the one after it.
    fn stride(&mut self) -> i32 {
        let s = self.stride;
        self.stride = (s * 2).min(MAX_STRIDE);
        s
    }
}

impl Ladder for Grid {
    type Rung = i32;

    fn first(&self) -> Option<i32> {
        (self.min <= self.max).then(|| self.start.clamp(self.min, self.max))
    }

    fn above(&mut self, held: i32) -> Option<i32> {
        let stride = self.stride();
        (held < self.max).then(|| (held + stride).min(self.max))
    }

    fn below(&mut self, failed: i32) -> Option<i32> {
        let stride = self.stride();
        (failed > self.min).then(|| (failed - stride).max(self.min))
    }

    fn between(&mut self, held: i32, failed: i32) -> Option<i32> {
        (failed - held > 1).then_some((held + failed) / 2)
    }
}

impl Search<Grid> {
    /// Records an outcome known without a grid step (the fixed-load step): a rate at or
    /// below index `i` held, or one at or above it failed. The search then stays strictly
    /// above (below) it.
    pub fn seed(&mut self, i: i32, passed: bool) {
        if passed {
            self.held = Some(higher(self.held, i));
            self.ladder.min = self.ladder.min.max(i + 1);
        } else {
            self.failed = Some(lower(self.failed, i));
            self.ladder.max = self.ladder.max.min(i - 1);
        }
        let (min, max) = (self.ladder.min, self.ladder.max);
        self.next = self.next.filter(|_| min <= max).map(|n| n.clamp(min, max));
        if let (Some(h), Some(f)) = (self.held, self.failed) {
            if f - h <= 1 {
                self.next = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rungs a search tries when every step up to `capacity` holds.
    fn drive<L: Ladder>(mut s: Search<L>, capacity: L::Rung) -> Vec<L::Rung> {
        let mut tried = Vec::new();
        while let Some(r) = s.next() {
            tried.push(r);
            s.record(r, r <= capacity);
            assert!(tried.len() < 50);
        }
        tried
    }

    fn rates(list: Option<Vec<f64>>, start: f64, max: f64, refine: u32) -> Search<Rates> {
        Search::new(Rates::new(list, start, max, refine))
    }

    #[test]
    fn doubling_then_bisection() {
        let tried = drive(rates(None, 500.0, 64_000.0, 2), 5000.0);
        assert_eq!(
            tried,
            vec![500.0, 1000.0, 2000.0, 4000.0, 8000.0, 6000.0, 5000.0]
        );
    }

    #[test]
    fn stops_at_max_and_on_first_failure_of_a_list() {
        let tried = drive(rates(None, 500.0, 2000.0, 2), 1e9);
        assert_eq!(tried, vec![500.0, 1000.0, 2000.0]);
        let list = Some(vec![100.0, 200.0, 300.0, 400.0]);
        let tried = drive(rates(list.clone(), 0.0, 0.0, 0), 250.0);
        assert_eq!(tried, vec![100.0, 200.0, 300.0]);
        let tried = drive(rates(list, 0.0, 0.0, 0).confirming(true), 250.0);
        assert_eq!(tried, vec![100.0, 200.0, 300.0, 300.0]);
        // Fails at once: halve until a rate holds, then bisect.
        let tried = drive(rates(None, 500.0, 64_000.0, 2), 100.0);
        assert_eq!(tried, vec![500.0, 250.0, 125.0, 63.0, 94.0, 110.0]);
        // Never holds: stops at start / 64.
        let tried = drive(rates(None, 500.0, 64_000.0, 2), 1.0);
        assert_eq!(tried, vec![500.0, 250.0, 125.0, 63.0, 32.0, 16.0, 8.0]);
    }

    #[test]
    fn pass_rule_and_capacity() {
        let mut s = StepResult::default();
        s.latency.count = 10;
        s.latency.p99_ns = 50_000_000;
        assert!(step_passes(&s, 100_000_000));
        s.lost = 1;
        assert!(!step_passes(&s, 100_000_000));
        s.lost = 0;
        s.latency.p99_ns = 100_000_001;
        assert!(!step_passes(&s, 100_000_000));
        let steps: Vec<StepResult> = [(1e6, true), (2e6, true), (3e6, false)]
            .iter()
            .map(|&(d, p)| StepResult {
                deliveries_per_s: d,
                passed: Some(p),
                ..Default::default()
            })
            .collect();
        assert_eq!(capacity_step(&steps), Some(1));
    }

    fn grid(start: i32, stride: i32, min: i32, max: i32) -> Search<Grid> {
        Search::new(Grid::new(start, stride, min, max))
    }

    #[test]
    fn grid_is_twelve_percent_apart() {
        assert_eq!(grid_rate(0), 1.0);
        assert!((grid_rate(6) - 2.0).abs() < 1e-9);
        assert!((grid_rate(1) / grid_rate(0) - 1.1225).abs() < 1e-3);
        for i in [0, 5, 37, 90] {
            assert_eq!(grid_index(grid_rate(i)), i);
        }
    }

    #[test]
    fn grid_search_moves_then_bisects_to_adjacent_steps() {
        let tried = drive(grid(30, 4, 0, 100), 40);
        assert_eq!(tried, vec![30, 34, 42, 38, 40, 41]);
        let tried = drive(grid(30, 4, 0, 100), 20);
        assert_eq!(tried, vec![30, 26, 18, 22, 20, 21]);
        // Never holds: stops at the lowest index.
        let tried = drive(grid(8, 4, 0, 100), -1);
        assert_eq!(tried, vec![8, 4, 0]);
        // Always holds: stops at the highest.
        let tried = drive(grid(90, 4, 0, 100), 1000);
        assert_eq!(tried, vec![90, 94, 100]);
        // Far off: the stride grows to a factor 4.
        let tried = drive(grid(66, 4, 20, 100), 0);
        assert_eq!(tried, vec![66, 62, 54, 42, 30, 20]);
        assert!(grid(5, 4, 0, -1).next().is_none());
    }

    #[test]
    fn seeds_bound_the_grid_search() {
        // The fixed load held at index 19: the search stays above and may end there.
        let mut s = grid(10, 4, 0, 100);
        s.seed(19, true);
        assert_eq!(drive(s.clone(), 19), vec![20]);
        assert_eq!(drive(s, 30), vec![20, 24, 32, 28, 30, 31]);
        // It failed at index 20: the search stays below, and a hold at 19 is not "at least".
        let mut s = grid(28, 4, 0, 100);
        s.seed(20, false);
        assert_eq!(drive(s.clone(), 19), vec![19]);
        s.record(19, true);
        assert_eq!(s.lowest_fail(), Some(20));
        // Failed at the lowest index: nothing to try.
        let mut s = grid(28, 4, 0, 100);
        s.seed(0, false);
        assert_eq!(s.next(), None);
        assert_eq!(s.highest_pass(), None);
    }

    #[test]
    fn grid_ladder_from_a_hint() {
        let tried = drive(grid(40, 1, 0, 100), 40);
        assert_eq!(tried, vec![40, 41]);
        let tried = drive(grid(40, 1, 0, 100), 39);
        assert_eq!(tried, vec![40, 39]);
        let tried = drive(grid(40, 1, 0, 100), 33);
        assert_eq!(tried, vec![40, 39, 37, 33, 35, 34]);
    }
}
