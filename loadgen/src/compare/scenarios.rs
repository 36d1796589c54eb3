//! The scenarios of the comparison, identical for every server: four load scenarios (fan-out,
//! message size, many channels), one of idle connections (memory) and one of compressed JSON
//! (permessage-deflate), each with the fixed rate every server is expected to hold and why.
//! On Centrifugo's protocol: three load scenarios of 64-byte JSON data, one of idle
//! connections, each connected and subscribed, and a reconnect storm with recovery.

use thiserror::Error;

use super::model::{Scenario, ScenarioKind};
use crate::load::payload::Payload;
use crate::load::spec::Protocol;

/// The scenarios of `protocol`.
pub fn scenarios(protocol: Protocol) -> Vec<Scenario> {
    match protocol {
        Protocol::Relay => relay_scenarios(),
        Protocol::Centrifugo => centrifugo_scenarios(),
    }
}

/// The idle scenario: 15,000 connections (5,000 with --quick).
fn idle_scenario(title: &str) -> Scenario {
    Scenario {
        id: "idle-15k".into(),
        title: title.into(),
        kind: ScenarioKind::Idle,
        subscribers: 15_000,
        publishers: 0,
        channels: 1,
        size_bytes: 0,
        fixed_rate_per_s: 0.0,
        fixed_rate_reason: String::new(),
        payload: Payload::Zeros,
        compress: false,
    }
}

/// Centrifugo's protocol: the relay comparison's 64 B scenarios at its fixed rates, the data a
/// JSON object of 64 bytes (`{"s":"<stamp>","p":"<padding>"}`), and idle connections that
/// each connect and subscribe.
fn centrifugo_scenarios() -> Vec<Scenario> {
    let load = |id: &str, title: &str, subs, pubs, ch, fixed: f64, why: &str| Scenario {
        id: id.into(),
        title: title.into(),
        kind: ScenarioKind::Load,
        subscribers: subs,
        publishers: pubs,
        channels: ch,
        size_bytes: 64,
        fixed_rate_per_s: fixed,
        fixed_rate_reason: why.into(),
        payload: Payload::Json,
        compress: false,
    };
    vec![
        load(
            "1k-64B",
            "1,000 subscribers x 64 B JSON data",
            1000,
            1,
            1,
            10.0,
            "10 msg/s = 10k deliveries/s, as in the relay comparison: far below either server's capacity, so both hold it",
        ),
        load(
            "10k-64B",
            "10,000 subscribers x 64 B JSON data",
            10_000,
            1,
            1,
            1.0,
            "1 msg/s = 10k deliveries/s, as in the relay comparison",
        ),
        load(
            "100x100",
            "100 channels x 100 subscribers, 64 B JSON data",
            10_000,
            100,
            100,
            100.0,
            "100 msg/s over 100 publishers (1 per channel per second) = 10k deliveries/s, as in the other scenarios",
        ),
        idle_scenario("15,000 idle connections, each connected and subscribed (memory)"),
        Scenario {
            id: "reconnect-1k".into(),
            title: format!(
                "Reconnect storm: 1,000 subscribers recover {STORM_MESSAGES} missed publications"
            ),
            kind: ScenarioKind::Reconnect,
            subscribers: 1000,
            publishers: 1,
            channels: 1,
            size_bytes: 64,
            fixed_rate_per_s: 0.0,
            fixed_rate_reason: String::new(),
            payload: Payload::Json,
            compress: false,
        },
    ]
}

/// Publications the reconnect storm's publisher publishes while the subscribers are away.
pub const STORM_MESSAGES: u32 = 100;

/// The relay scenarios: four of fan-out and size, one of idle connections, and one of
/// compressed JSON (run only on the servers that can negotiate permessage-deflate).
fn relay_scenarios() -> Vec<Scenario> {
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
        idle_scenario("15,000 idle connections (memory)"),
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

/// The scenarios of `protocol` named by `--scenarios` (all when `None`), in that order; with
/// `quick`, the idle scenario holds [`QUICK_IDLE_CONNECTIONS`].
pub fn select(
    ids: Option<&[String]>,
    quick: bool,
    protocol: Protocol,
) -> Result<Vec<Scenario>, UnknownScenario> {
    let all = scenarios(protocol);
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
            sc.title = sc
                .title
                .replace("15,000", &QUICK_IDLE_CONNECTIONS.to_string())
                + " (15,000 without --quick)";
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_match_the_issue() {
        let s = scenarios(Protocol::Relay);
        assert_eq!(s.len(), 6);
        assert_eq!(s[3].fanout(), 100.0);
        assert!(s[5].compress && s[5].payload == Payload::Json);
        assert!(s.iter().all(|s| s.subscribers <= 15_000));
    }

    #[test]
    fn selects_by_name_and_shrinks_the_idle_scenario_when_quick() {
        let ids = vec!["IDLE-15K".to_owned(), " 1k-64B".to_owned()];
        let s = select(Some(&ids), true, Protocol::Relay).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].id.as_str(), s[0].subscribers),
            ("idle-15k", QUICK_IDLE_CONNECTIONS)
        );
        assert_eq!(s[1].id, "1k-64B");
        assert_eq!(select(None, false, Protocol::Relay).unwrap().len(), 6);
        let e = select(Some(&["2k".to_owned()]), false, Protocol::Relay).unwrap_err();
        assert!(e
            .to_string()
            .starts_with("unknown scenario \"2k\" (known: 1k-64B, "));
    }

    #[test]
    fn centrifugo_scenarios_are_64_byte_json_and_idle() {
        let s = select(None, true, Protocol::Centrifugo).unwrap();
        let ids: Vec<&str> = s.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            ["1k-64B", "10k-64B", "100x100", "idle-15k", "reconnect-1k"]
        );
        assert!(s
            .iter()
            .filter(|s| s.kind == ScenarioKind::Load)
            .all(|s| s.size_bytes == 64 && s.payload == Payload::Json && !s.compress));
        assert_eq!(s[3].subscribers, QUICK_IDLE_CONNECTIONS);
        assert!(s[3]
            .title
            .starts_with("5000 idle connections, each connected and subscribed"));
        assert!(select(Some(&["1k-4KiB".to_owned()]), false, Protocol::Centrifugo).is_err());
    }
}
