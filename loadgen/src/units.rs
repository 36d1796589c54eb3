//! Units on the command line and in reports: durations (`30s`, `500ms`), rates (`5k`,
//! `1.5M`), and their display (`1.23ms`, `2.00M`, `3.1 KiB`).
//!
//! A leaf: both the argument parsers ([`crate::cli`], [`crate::compare::args`]) and every
//! report use it, so it depends on nothing else of the crate.

use std::time::Duration;

/// Parses `30s`, `500ms`, `150us`, `2m`, `1.5s` or `10` (seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (e.g. 30s, 500ms)"))?;
    let secs = match unit {
        "" | "s" => x,
        "ms" => x / 1e3,
        "us" | "µs" => x / 1e6,
        "ns" => x / 1e9,
        "m" | "min" => x * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ns, us, ms, s, m)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A list of rates (msg/s), as given to `--rates`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateList(pub Vec<f64>);

/// Parses `1000,2000,5k,1.5M` into rates per second.
pub fn parse_rates(s: &str) -> Result<RateList, String> {
    s.split(',')
        .map(|r| {
            let r = r.trim();
            let (num, mult) = match r.chars().last() {
                Some('k' | 'K') => (&r[..r.len() - 1], 1e3),
                Some('M' | 'm') => (&r[..r.len() - 1], 1e6),
                _ => (r, 1.0),
            };
            num.parse::<f64>()
                .ok()
                .map(|x| x * mult)
                .filter(|x| *x > 0.0 && x.is_finite())
                .ok_or_else(|| format!("bad rate {r:?}"))
        })
        .collect::<Result<Vec<f64>, String>>()
        .map(RateList)
}

/// Formats ns with a unit (ns, us, ms, s), three significant figures.
pub fn fmt_ns(ns: u64) -> String {
    let v = ns as f64;
    let (x, unit) = if v < 1e3 {
        (v, "ns")
    } else if v < 1e6 {
        (v / 1e3, "us")
    } else if v < 1e9 {
        (v / 1e6, "ms")
    } else {
        (v / 1e9, "s")
    };
    if x >= 100.0 {
        format!("{x:.0}{unit}")
    } else if x >= 10.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.2}{unit}")
    }
}

/// Formats a count per second with k/M.
pub fn fmt_rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// Formats bytes as KiB with one decimal.
pub fn fmt_kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("3 parsecs").is_err());
        assert_eq!(
            parse_rates("1000,2k,1.5M").unwrap().0,
            vec![1000.0, 2000.0, 1_500_000.0]
        );
        assert!(parse_rates("0").is_err());
    }

    #[test]
    fn formats_units() {
        assert_eq!(fmt_ns(512), "512ns");
        assert_eq!(fmt_ns(1_234), "1.23us");
        assert_eq!(fmt_ns(12_345_678), "12.3ms");
        assert_eq!(fmt_ns(2_500_000_000), "2.50s");
        assert_eq!(fmt_rate(2_000_000.0), "2.00M");
    }
}
