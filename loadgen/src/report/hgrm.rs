//! HdrHistogram percentile-distribution text (`.hgrm`), the format of wrk2 and of
//! HdrHistogram's `outputPercentileDistribution`, loadable by the HdrHistogram plotter.
//!
//! Values are written in milliseconds (the histogram holds nanoseconds), five ticks per half
//! distance to 100 %, with the usual mean/max/count footer.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

/// Scale from recorded ns to the printed unit (ms).
pub const NS_PER_UNIT: f64 = 1e6;

/// Renders `h` (ns) as percentile-distribution text in milliseconds.
pub fn render(h: &Histogram<u64>) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / NS_PER_UNIT;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{:>12.3} {:>14.12} {:>10} {:>14.2}",
                    value,
                    q,
                    total,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.3} {q:>14.12} {total:>10}");
            }
        }
    }
    let mean = if h.is_empty() {
        0.0
    } else {
        h.mean() / NS_PER_UNIT
    };
    let stdev = if h.is_empty() {
        0.0
    } else {
        h.stdev() / NS_PER_UNIT
    };
    let max = h.max() as f64 / NS_PER_UNIT;
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.3}, StdDeviation   = {stdev:>12.3}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.3}, Total count    = {:>12}]",
        h.len()
    );
    let buckets = h.buckets();
    let _ = writeln!(
        out,
        "#[Buckets = {buckets:>12}, SubBuckets     = {:>12}]",
        (2 * 10u32.pow(u32::from(h.sigfig()))).next_power_of_two()
    );
    out
}

/// One row of a percentile distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    /// Milliseconds.
    pub value: f64,
    pub percentile: f64,
    pub total_count: u64,
}

/// Parses percentile-distribution text back into rows (the header and footer are skipped).
pub fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let value = f.next()?.parse().ok()?;
            let percentile = f.next()?.parse().ok()?;
            let total_count = f.next()?.parse().ok()?;
            Some(Row {
                value,
                percentile,
                total_count,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::recorder::new_histogram;

    #[test]
    fn round_trips_through_text() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            h.record(i * 1_000).unwrap(); // 1 µs .. 10 ms
        }
        let text = render(&h);
        assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
        assert!(text.contains("#[Max     =       10.002, Total count    =        10000]"));
        let rows = parse(&text);
        assert!(rows.len() > 50);
        let last = rows.last().unwrap();
        assert_eq!(last.percentile, 1.0);
        assert_eq!(last.total_count, 10_000);
        // The median row is within 3 significant digits of 5 ms.
        let median = rows.iter().find(|r| r.percentile >= 0.5).unwrap();
        assert!((median.value - 5.0).abs() < 0.01, "{median:?}");
        // Counts and percentiles never go backwards.
        assert!(rows
            .windows(2)
            .all(|w| w[0].total_count <= w[1].total_count && w[0].percentile <= w[1].percentile));
    }
}
