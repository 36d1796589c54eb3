//! How one figure of the comparison is written, the same in `compare.md` and on the terminal:
//! ratios to ringcast, capacities with their marks, missing values as `–`.

use std::fmt::Write as _;

use crate::compare::model::CellSummary;
use crate::units::{fmt_ns, fmt_rate};

/// A ratio to ringcast: `12×`, `0.25×`, `0.013×`, `–` when unknown.
pub fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r >= 10.0 => format!("{r:.0}×"),
        Some(r) if r >= 0.1 => format!("{r:.2}×"),
        Some(r) if r > 0.0 => format!("{r:.3}×"),
        Some(_) => "0×".into(),
        None => "–".into(),
    }
}

/// A capacity with its marks: `≥` (every step held), the spread over repetitions, `†`
/// (loadgen-bound), `0 (< 1 msg/s)` when nothing held.
pub fn capacity_cell(s: &CellSummary) -> String {
    let Some(c) = s.capacity else {
        return "–".into();
    };
    let mut out = if s.capacity_below_lowest {
        "0 (< 1 msg/s)".to_owned()
    } else {
        format!(
            "{}{}",
            if s.capacity_at_least { "≥ " } else { "" },
            fmt_rate(c)
        )
    };
    if let (Some(lo), Some(hi)) = (s.capacity_min, s.capacity_max) {
        if s.runs > 1 && !s.capacity_below_lowest {
            let _ = write!(out, " ({}–{})", fmt_rate(lo), fmt_rate(hi));
        }
    }
    if s.capacity_loadgen_bound {
        out.push_str(" †");
    }
    out
}

/// A latency, or `–`.
pub fn opt_ns(x: Option<u64>) -> String {
    x.map(fmt_ns).unwrap_or_else(|| "–".into())
}

/// A number with `digits` decimals, or `–`.
pub fn opt_f(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}"))
        .unwrap_or_else(|| "–".into())
}
