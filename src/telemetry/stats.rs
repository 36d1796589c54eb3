//! The `--stats-interval` reporter: a thread that prints one line of counters per interval.
//!
//! It runs outside the worker threads and only reads their counters, so it never delays I/O.

use super::metrics::Metrics;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stops the reporter when dropped.
#[derive(Debug)]
pub struct Reporter {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts printing every `interval` (nothing when it is zero).
pub fn spawn_reporter(interval: Duration, metrics: Arc<Metrics>) -> Reporter {
    if interval.is_zero() {
        return Reporter {
            stop: None,
            thread: None,
        };
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("ringcast-stats".into())
        .spawn(move || {
            let mut prev = metrics.snapshot();
            let mut prev_at = Instant::now();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let now = metrics.snapshot();
                let secs = prev_at.elapsed().as_secs_f64();
                prev_at = Instant::now();
                tracing::info!("{}", now.stats_line(&prev, secs));
                prev = now;
            }
        })
        .ok();
    Reporter {
        stop: Some(stop),
        thread,
    }
}
