//! The live progress line on stderr while a command connects and measures.
//!
//! Why it exists: every command shows where it stands (a ramp's connections, a step's phase,
//! rate and p99) the same way, on a terminal or, plainly, in a log.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::load::ramp::RampProgress;
use crate::load::session::LiveStatus;
use crate::units::{fmt_ns, fmt_rate};

/// The live progress line (indicatif, on stderr). When stderr is not a terminal, connection
/// ramps still print a plain line once a second (a log shows where a slow ramp stands).
pub(super) struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
}

impl Progress {
    pub(super) fn new(enabled: bool) -> Progress {
        let bar = enabled.then(|| {
            let b = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} [{elapsed}] {msg}") {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        });
        let plain = enabled && !std::io::stderr().is_terminal();
        Progress { bar, plain }
    }
    /// Where a connection ramp stands (called about once a second).
    pub(super) fn ramp(&self, r: RampProgress) {
        if self.plain {
            eprintln!("  {}", r.line());
        }
        self.message(r.line());
    }
    pub(super) fn message(&self, m: String) {
        if let Some(b) = &self.bar {
            b.set_message(m);
        }
    }
    pub(super) fn live(&self, prefix: &str, s: LiveStatus) {
        let p99 = if s.p99_ns == 0 {
            "-".to_owned()
        } else {
            fmt_ns(s.p99_ns)
        };
        self.message(format!(
            "{prefix}{} {:.1}s | {} msg/s, sent {} | {} deliveries/s | p99 {p99}",
            s.phase,
            s.elapsed_s,
            fmt_rate(s.rate_per_s),
            s.sent,
            fmt_rate(s.deliveries_per_s),
        ));
    }
    /// Prints `line` above the progress line (nothing without one).
    pub(super) fn println(&self, line: String) {
        if let Some(b) = &self.bar {
            b.println(line);
        }
    }
    pub(super) fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
