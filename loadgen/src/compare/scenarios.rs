//! The scenarios of the comparison, identical for every server: four load scenarios (fan-out,
//! message size, many channels), one of idle connections (memory) and one of compressed JSON
//! (permessage-deflate), each with the fixed rate every server is expected to hold and why.

use thiserror::Error;

use super::model::{Scenario, ScenarioKind};
use crate::load::payload::Payload;

/// The scenarios: four of fan-out and size, one of idle connections, and one of compressed
/// JSON (run only on the servers that can negotiate permessage-deflate).
pub fn scenarios() -> Vec<Scenario> {
    let load = |id: &str, title: &str, subs, pubs, ch, size, fixed: f64, why: &str| Scenario {
        id: id.into(),
        title: title.into(),
        kind: ScenarioKind::Load,
        subscribers: subs,
        publishers: pubs,
        channels: ch,
        size_bytes: size,
        fixed_rate_per_s: fixed,
        fixed_rate_reason: why.into(),
        payload: Payload::Zeros,
        compress: false,
    };
    vec![
        load(
            "1k-64B",
            "1,000 subscribers x 64 B",
            1000,
            1,
            1,
            64,
            10.0,
            "10 msg/s = 10k deliveries/s: half of python-websockets' capacity here (~20k/s), so every server holds it",
        ),
        load(
            "10k-64B",
            "10,000 subscribers x 64 B",
            10_000,
            1,
            1,
            64,
            1.0,
            "1 msg/s = 10k deliveries/s: one broadcast to 10,000 costs python-websockets ~50-80 ms, so it still holds",
        ),
        load(
            "1k-4KiB",
            "1,000 subscribers x 4 KiB",
            1000,
            1,
            1,
            4096,
            5.0,
            "5 msg/s = 5k deliveries/s (20 MB/s): well inside the slowest server's capacity for 4 KiB",
        ),
        load(
            "100x100",
            "100 channels x 100 subscribers",
            10_000,
            100,
            100,
            64,
            100.0,
            "100 msg/s over 100 publishers (1 per channel per second) = 10k deliveries/s, as in the other 64 B scenarios",
        ),
        Scenario {
            id: "idle-15k".into(),
            title: "15,000 idle connections (memory)".into(),
            kind: ScenarioKind::Idle,
            subscribers: 15_000,
            publishers: 0,
            channels: 1,
            size_bytes: 0,
            fixed_rate_per_s: 0.0,
            fixed_rate_reason: String::new(),
            payload: Payload::Zeros,
            compress: false,
        },
        Scenario {
            payload: Payload::Json,
            compress: true,
            ..load(
                "1k-1KiB-json-deflate",
                "1,000 subscribers x 1 KiB JSON, permessage-deflate",
                1000,
                1,
                1,
                1024,
                5.0,
                "5 msg/s = 5k deliveries/s: compressing per subscriber (python-websockets, node-ws) costs about a deflate of 1 KiB per delivery",
            )
        },
    ]
}

/// Idle connections of the memory scenario in --quick mode (15,000 in full mode).
pub const QUICK_IDLE_CONNECTIONS: u32 = 5000;

/// A `--scenarios` entry that names no scenario.
#[derive(Debug, Error)]
#[error("unknown scenario {id:?} (known: {known})")]
pub struct UnknownScenario {
    pub id: String,
    pub known: String,
}

/// The scenarios named by `--scenarios` (all when `None`), in that order; with `quick`, the
/// idle scenario holds [`QUICK_IDLE_CONNECTIONS`].
pub fn select(ids: Option<&[String]>, quick: bool) -> Result<Vec<Scenario>, UnknownScenario> {
    let all = scenarios();
    let mut chosen: Vec<Scenario> = match ids {
        None => all,
        Some(ids) => {
            let mut v = Vec::new();
            for id in ids {
                match all.iter().find(|s| s.id.eq_ignore_ascii_case(id.trim())) {
                    Some(s) => v.push(s.clone()),
                    None => {
                        return Err(UnknownScenario {
                            id: id.clone(),
                            known: all
                                .iter()
                                .map(|s| s.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", "),
                        })
                    }
                }
            }
            v
        }
    };
    if quick {
        for sc in chosen.iter_mut().filter(|s| s.kind == ScenarioKind::Idle) {
            sc.subscribers = QUICK_IDLE_CONNECTIONS;
            sc.title = format!(
                "{QUICK_IDLE_CONNECTIONS} idle connections (memory; 15,000 without --quick)"
            );
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_match_the_issue() {
        let s = scenarios();
        assert_eq!(s.len(), 6);
        assert_eq!(s[3].fanout(), 100.0);
        assert!(s[5].compress && s[5].payload == Payload::Json);
        assert!(s.iter().all(|s| s.subscribers <= 15_000));
    }

    #[test]
    fn selects_by_name_and_shrinks_the_idle_scenario_when_quick() {
        let ids = vec!["IDLE-15K".to_owned(), " 1k-64B".to_owned()];
        let s = select(Some(&ids), true).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].id.as_str(), s[0].subscribers),
            ("idle-15k", QUICK_IDLE_CONNECTIONS)
        );
        assert_eq!(s[1].id, "1k-64B");
        assert_eq!(select(None, false).unwrap().len(), 6);
        let e = select(Some(&["2k".to_owned()]), false).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("unknown scenario \"2k\" (known: 1k-64B, "));
    }
}
