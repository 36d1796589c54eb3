//! Integration test of `loadgen compare --protocol centrifugo --quick` against ringcast and the
//! real Centrifugo (`peers/centrifugo/bin/centrifugo`, built by `peers/setup centrifugo`):
//! both servers deliver every message at the fixed load, hold every idle connection (each
//! connected and subscribed), and recover every missed publication in the reconnect storm;
//! the report names the protocol, and a relay peer is refused.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use loadgen::compare::model::{CompareReport, ScenarioKind};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen/ has a parent")
        .to_owned()
}

fn loadgen(args: &[&str], out: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .arg("-o")
        .arg(out)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen")
}

#[test]
fn quick_centrifugo_compare_delivers_and_recovers_everything() {
    let bin = repo_root().join("peers/centrifugo/bin/centrifugo");
    assert!(
        bin.exists(),
        "{} is missing: run `peers/setup centrifugo` (scripts/test does)",
        bin.display()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("cmp");
    let o = loadgen(
        &[
            "compare",
            "--protocol",
            "centrifugo",
            "--quick",
            "--scenarios",
            "1k-64B,idle-15k,reconnect-1k",
        ],
        &out,
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "compare failed: {stderr}");
    let report: CompareReport = serde_json::from_str(
        &std::fs::read_to_string(out.join("compare.json")).expect("compare.json"),
    )
    .expect("compare.json parses");
    assert_eq!(report.protocol, "centrifugo");
    assert_eq!(report.publish_via.as_deref(), Some("client"));
    let names: Vec<&str> = report.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ringcast", "centrifugo"]);
    assert!(report.servers[1].command.starts_with("GOMAXPROCS=1 "));
    for sc in &report.scenarios {
        for srv in &names {
            let s = report
                .summary(&sc.id, srv)
                .unwrap_or_else(|| panic!("no summary for {} on {srv}", sc.id));
            assert!(
                s.errors.is_empty(),
                "{} on {srv}: {:?}\n{stderr}",
                sc.id,
                s.errors
            );
            match sc.kind {
                ScenarioKind::Load => assert_eq!(
                    (s.fixed_received, s.fixed_lost),
                    (s.fixed_expected, 0),
                    "{} on {srv}",
                    sc.id
                ),
                ScenarioKind::Idle => {
                    assert_eq!(s.idle_held, Some(sc.subscribers), "{srv}");
                    assert_eq!(s.idle_still_open, Some(sc.subscribers), "{srv}");
                    assert!(s.rss_per_connection_bytes.is_some());
                }
                ScenarioKind::Reconnect => {
                    let cell = report
                        .cells
                        .iter()
                        .find(|c| c.scenario == sc.id && c.server == *srv)
                        .expect("a storm cell");
                    let st = cell.reconnect.as_ref().expect("the storm's figures");
                    assert_eq!(st.expected, 100_000);
                    assert_eq!(st.delivered, st.expected, "{srv}: {st:?}");
                    assert_eq!(st.recovered, 1000, "{srv}: {st:?}");
                    assert!(st.all_complete_ns.is_some(), "{srv}: {st:?}");
                }
            }
        }
    }
    let md = std::fs::read_to_string(out.join("compare.md")).expect("compare.md");
    assert!(md.contains("Centrifugo's client protocol") && md.contains("recovered: true"));

    let refused = loadgen(
        &[
            "compare",
            "--protocol",
            "centrifugo",
            "--quick",
            "--servers",
            "ringcast,node-ws",
        ],
        &dir.path().join("refused"),
    );
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("node-ws does not speak"));
}
