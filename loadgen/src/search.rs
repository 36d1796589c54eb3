//! Finding capacity: which rates a sweep tries, and what counts as holding.
//!
//! A step *holds* when nothing was lost (after the drain), nothing failed to send, no
//! connection dropped, and p99 stayed within the SLO. The search either walks an explicit list
//! (`--rates`) or doubles from `--start-rate` until a step fails (halving instead while no
//! step has held yet, down to 1/64 of the start), then bisects `--refine` times between the
//! last rate that held and the first that did not. It stops after the first
//! failure of a list, optionally repeating a failing step once (`--confirm`). Capacity is the
//! highest achieved deliveries/s among the steps that held.

use crate::load::session::StepResult;

/// Whether a step held: zero loss, all sent, no disconnects, measured, p99 within the SLO.
pub fn step_passes(s: &StepResult, slo_p99_ns: u64) -> bool {
    s.lost == 0
        && s.unsent == 0
        && s.counts.disconnects == 0
        && s.latency.count > 0
        && s.latency.p99_ns <= slo_p99_ns
}

/// The rates a sweep tries, decided one step at a time.
#[derive(Debug, Clone)]
pub struct RateSearch {
    list: Option<Vec<f64>>,
    next_index: usize,
    start: f64,
    max: f64,
    refine_left: u32,
    confirm: bool,
    last_pass: Option<f64>,
    first_fail: Option<f64>,
    current: Option<f64>,
    retried_current: bool,
    done: bool,
}

impl RateSearch {
    pub fn new(list: Option<Vec<f64>>, start: f64, max: f64, refine: u32, confirm: bool) -> Self {
        RateSearch {
            list,
            next_index: 0,
            start: start.max(1.0),
            max: max.max(start),
            refine_left: refine,
            confirm,
            last_pass: None,
            first_fail: None,
            current: None,
            retried_current: false,
            done: false,
        }
    }

    /// The next rate to try, given whether the previous one held (`None` before the first).
    pub fn next(&mut self, previous_passed: Option<bool>) -> Option<f64> {
        if self.done {
            return None;
        }
        if let (Some(rate), Some(passed)) = (self.current, previous_passed) {
            if !passed && self.confirm && !self.retried_current {
                self.retried_current = true;
                return Some(rate);
            }
            self.retried_current = false;
            if passed {
                self.last_pass = Some(self.last_pass.map_or(rate, |r| r.max(rate)));
            } else {
                self.first_fail = Some(self.first_fail.map_or(rate, |r| r.min(rate)));
            }
        }
        let next = match &self.list {
            Some(list) => {
                if self.first_fail.is_some() {
                    None
                } else {
                    let r = list.get(self.next_index).copied();
                    self.next_index += 1;
                    r
                }
            }
            None => match (self.current, self.first_fail) {
                (None, _) => Some(self.start),
                (Some(cur), None) => {
                    let r = cur * 2.0;
                    (r <= self.max * 1.000_001).then_some(r)
                }
                (Some(cur), Some(fail)) => {
                    let Some(lo) = self.last_pass else {
                        // Nothing held yet: halve, down to start / 64.
                        let r = (cur / 2.0).round();
                        return self.finish((r >= (self.start / 64.0).max(1.0)).then_some(r));
                    };
                    if self.refine_left == 0 {
                        None
                    } else {
                        self.refine_left -= 1;
                        let mid = ((lo + fail) / 2.0).round();
                        (mid > lo && mid < fail).then_some(mid)
                    }
                }
            },
        };
        self.finish(next)
    }

    fn finish(&mut self, next: Option<f64>) -> Option<f64> {
        match next {
            Some(r) => {
                self.current = Some(r);
                Some(r)
            }
            None => {
                self.done = true;
                None
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn drive(mut s: RateSearch, capacity: f64) -> Vec<f64> {
        let mut tried = Vec::new();
        let mut prev = None;
        while let Some(r) = s.next(prev) {
            tried.push(r);
            prev = Some(r <= capacity);
            assert!(tried.len() < 50);
        }
        tried
    }

    #[test]
    fn doubling_then_bisection() {
        let tried = drive(RateSearch::new(None, 500.0, 64_000.0, 2, false), 5000.0);
        assert_eq!(
            tried,
            vec![500.0, 1000.0, 2000.0, 4000.0, 8000.0, 6000.0, 5000.0]
        );
    }

    #[test]
    fn stops_at_max_and_on_first_failure_of_a_list() {
        let tried = drive(RateSearch::new(None, 500.0, 2000.0, 2, false), 1e9);
        assert_eq!(tried, vec![500.0, 1000.0, 2000.0]);
        let list = Some(vec![100.0, 200.0, 300.0, 400.0]);
        let tried = drive(RateSearch::new(list.clone(), 0.0, 0.0, 0, false), 250.0);
        assert_eq!(tried, vec![100.0, 200.0, 300.0]);
        let tried = drive(RateSearch::new(list, 0.0, 0.0, 0, true), 250.0);
        assert_eq!(tried, vec![100.0, 200.0, 300.0, 300.0]);
        // Fails at once: halve until a rate holds, then bisect.
        let tried = drive(RateSearch::new(None, 500.0, 64_000.0, 2, false), 100.0);
        assert_eq!(tried, vec![500.0, 250.0, 125.0, 63.0, 94.0, 110.0]);
        // Never holds: stops at start / 64.
        let tried = drive(RateSearch::new(None, 500.0, 64_000.0, 2, false), 1.0);
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
}
