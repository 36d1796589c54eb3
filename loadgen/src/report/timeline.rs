//! Latency over time: a run's per-second histograms as an HdrHistogram interval log
//! (`latency.hlog`) and as a chart (`latency-over-time.svg`).
//!
//! A percentile over a whole step hides a stall: 200 ms of a 30 s step is 0.7 % of its
//! messages, under p99. Each reader therefore also records every delivery in the histogram of
//! its message's *intended* second (coordinated-omission corrected, like the step's own
//! histogram, which these add up to exactly). The log is the standard format that
//! HistogramLogAnalyzer and HdrLogProcessing read: `#[StartTime]` and `#[BaseTime]` at the first
//! step's window, one line per second of every step (its start in seconds since BaseTime, its
//! length, its max in ms and the histogram, V2 + DEFLATE + base64), tagged with the step's rate
//! (`R2000` for 2,000 msg/s); values are nanoseconds. The chart plots p50, p99, p99.9 and max of
//! each second, and the messages per second achieved, on one time axis for the whole run.

use std::io;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use hdrhistogram::serialization::interval_log::{
    IntervalLogHistogram, IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use super::canvas::{self, legend, Frame, SvgError};
use super::plots::PlotError;

/// One step's seconds.
pub struct StepTimeline<'a> {
    /// Requested rate, msg/s (the log's tag).
    pub rate_per_s: f64,
    /// Wall-clock time of the step's measurement window (Unix seconds).
    pub window_start_unix_s: f64,
    /// Latency of the messages intended in each second of the window.
    pub intervals: &'a [Histogram<u64>],
}

/// The interval log of `steps`, as text.
pub fn hlog(steps: &[StepTimeline], comment: &str) -> io::Result<Vec<u8>> {
    let base_s = steps
        .iter()
        .map(|s| s.window_start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let base_s = if base_s.is_finite() { base_s } else { 0.0 };
    let base = UNIX_EPOCH + Duration::from_secs_f64(base_s.max(0.0));
    let mut out = Vec::new();
    let mut serializer = V2DeflateSerializer::new();
    {
        let mut builder = IntervalLogWriterBuilder::new();
        for line in comment.lines() {
            builder.add_comment(line);
        }
        let mut writer = builder
            .add_comment("values in nanoseconds; max column in milliseconds")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(1e6)
            .begin_log_with(&mut out, &mut serializer)?;
        for step in steps {
            let tag_text = format!("R{}", step.rate_per_s.round() as u64);
            let offset_s = (step.window_start_unix_s - base_s).max(0.0);
            for (k, h) in step.intervals.iter().enumerate() {
                writer
                    .write_histogram(
                        h,
                        Duration::from_secs_f64(offset_s + k as f64),
                        Duration::from_secs(1),
                        Tag::new(&tag_text),
                    )
                    .map_err(|e| io::Error::other(format!("{e:?}")))?;
            }
        }
    }
    Ok(out)
}

/// One interval read back from a log.
pub struct Interval {
    pub start_s: f64,
    pub tag: Option<String>,
    pub histogram: Histogram<u64>,
}

/// Parses an interval log (any that HdrHistogram tools write), histograms decoded.
pub fn parse_hlog(text: &[u8]) -> Result<Vec<Interval>, String> {
    let mut deserializer = Deserializer::new();
    let mut out = Vec::new();
    for entry in IntervalLogIterator::new(text) {
        let entry = entry.map_err(|e| format!("{e:?}"))?;
        let LogEntry::Interval(ilh) = entry else {
            continue;
        };
        out.push(decode_interval(&ilh, &mut deserializer)?);
    }
    Ok(out)
}

fn decode_interval(ilh: &IntervalLogHistogram, d: &mut Deserializer) -> Result<Interval, String> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(ilh.encoded_histogram())
        .map_err(|e| e.to_string())?;
    let histogram: Histogram<u64> = d
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("{e:?}"))?;
    Ok(Interval {
        start_s: ilh.start_timestamp().as_secs_f64(),
        tag: ilh.tag().map(|t| t.as_str().to_owned()),
        histogram,
    })
}

/// Draws p50, p99, p99.9 and max (ms, log axis) of every second of `steps`, and the messages
/// per second achieved (deliveries of the second ÷ `fanout`), against seconds since the first
/// step's window.
pub fn over_time_chart(
    steps: &[StepTimeline],
    fanout: f64,
    title: &str,
    path: &Path,
) -> Result<(), PlotError> {
    let base_s = steps
        .iter()
        .map(|s| s.window_start_unix_s)
        .fold(f64::INFINITY, f64::min);
    let quantiles = [
        ("p50", 0.5, BLUE),
        ("p99", 0.99, RED),
        ("p99.9", 0.999, MAGENTA),
        ("max", 1.0, BLACK),
    ];
    let mut lines: Vec<Vec<(f64, f64)>> = vec![Vec::new(); quantiles.len()];
    let mut rate = Vec::new();
    for step in steps {
        let offset = step.window_start_unix_s - base_s;
        for (k, h) in step.intervals.iter().enumerate() {
            let t = offset + k as f64 + 0.5;
            rate.push((t, h.len() as f64 / fanout.max(1.0)));
            if h.is_empty() {
                continue;
            }
            for (line, (_, q, _)) in lines.iter_mut().zip(quantiles) {
                let v = if q >= 1.0 {
                    h.max()
                } else {
                    h.value_at_quantile(q)
                };
                line.push((t, v as f64 / 1e6));
            }
        }
    }
    let x_max = rate.iter().map(|p| p.0).fold(1.0, f64::max) + 0.5;
    let y_max = lines[3].iter().map(|p| p.1).fold(0.01, f64::max) * 4.0;
    let y_min = lines[0]
        .iter()
        .map(|p| p.1)
        .filter(|v| *v > 0.0)
        .fold(y_max, f64::min)
        / 2.0;
    let rate_max = rate.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let draw = || -> Result<(), SvgError> {
        let root = canvas::svg(path, (1000, 560))?;
        let mut chart = canvas::chart(&root, title, Frame::STANDARD.right_labels(80))
            .build_cartesian_2d(0f64..x_max, (y_min.max(1e-4)..y_max).log_scale())?
            .set_secondary_coord(0f64..x_max, 0f64..rate_max);
        chart
            .configure_mesh()
            .x_desc("seconds since the first step's measurement window")
            .y_desc("latency (ms, log), per second")
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("messages/s achieved")
            .draw()?;
        chart
            .draw_secondary_series(rate.iter().map(|&(t, r)| {
                Rectangle::new([(t - 0.45, 0.0), (t + 0.45, r)], GREEN.mix(0.25).filled())
            }))?
            .label("messages/s achieved (right axis)")
            .legend(|(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], GREEN.mix(0.25).filled())
            });
        for (line, (name, _, color)) in lines.iter().zip(quantiles) {
            chart
                .draw_series(LineSeries::new(line.iter().copied(), color.stroke_width(2)))?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| PlotError::at(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::recorder::new_histogram;

    fn second(values: &[u64]) -> Histogram<u64> {
        let mut h = new_histogram();
        for &v in values {
            h.record(v).unwrap();
        }
        h
    }

    /// The log parses back interval by interval, tagged and timed, and its intervals add up to
    /// the steps' histograms exactly.
    #[test]
    fn the_log_parses_back_and_adds_up() {
        let a = [
            second(&[1_000_000, 2_000_000, 3_000_000]),
            second(&[]),
            second(&[200_000_000, 5_000]),
        ];
        let b = [second(&[7_000, 8_000_000, 9_000_000_000])];
        let steps = [
            StepTimeline {
                rate_per_s: 2000.0,
                window_start_unix_s: 1_764_400_000.25,
                intervals: &a,
            },
            StepTimeline {
                rate_per_s: 4000.0,
                window_start_unix_s: 1_764_400_010.25,
                intervals: &b,
            },
        ];
        let text = hlog(&steps, "loadgen run, a test").unwrap();
        let s = String::from_utf8(text.clone()).unwrap();
        assert!(s.starts_with("#loadgen run, a test\n"), "{s}");
        assert!(s.contains("#[StartTime: 1764400000.250 "), "{s}");
        assert!(s.contains("#[BaseTime: 1764400000.250 "), "{s}");
        assert!(s.contains("Tag=R2000,0.000,1.000,"), "{s}");
        assert!(s.contains("Tag=R4000,10.000,1.000,9000."), "{s}");
        let parsed = parse_hlog(&text).unwrap();
        assert_eq!(parsed.len(), 4);
        let starts: Vec<f64> = parsed.iter().map(|i| i.start_s).collect();
        assert_eq!(starts, [0.0, 1.0, 2.0, 10.0]);
        let mut total = new_histogram();
        let mut expected = new_histogram();
        for i in &parsed {
            total.add(&i.histogram).unwrap();
        }
        for h in a.iter().chain(&b) {
            expected.add(h).unwrap();
        }
        assert_eq!(total, expected);
        assert_eq!(parsed[2].histogram, a[2]);
        assert_eq!(parsed[3].tag.as_deref(), Some("R4000"));
    }

    #[test]
    fn the_chart_draws() {
        let a = [second(&[1_000_000, 2_000_000]), second(&[300_000_000])];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.svg");
        over_time_chart(
            &[StepTimeline {
                rate_per_s: 10.0,
                window_start_unix_s: 100.0,
                intervals: &a,
            }],
            1.0,
            "test",
            &path,
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("p99.9") && svg.contains("messages/s achieved"));
    }
}
