//! Integration test of `loadgen compare --quick` against ringcast and the tokio-tungstenite
//! peer (a workspace member, built here with cargo if `peers/setup tokio-tungstenite` has not
//! built it yet): the report's files exist and every server received every message at the low
//! fixed load of every scenario; in the compressed scenario ringcast's deliveries arrived
//! compressed and smaller, and tokio-tungstenite (no permessage-deflate) is reported not run.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use loadgen::compare::model::CompareReport;
use loadgen::compare::model::ScenarioKind;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadgen/ has a parent")
        .to_owned()
}

/// The release binary `peers/tokio-tungstenite/run` executes; built when missing.
fn ensure_tokio_tungstenite_peer() {
    let root = repo_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("release/peer-tokio-tungstenite");
    if bin.is_file() {
        return;
    }
    eprintln!(
        "{} missing: building it (cargo build --release -p peer-tokio-tungstenite)",
        bin.display()
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "peer-tokio-tungstenite"])
        .current_dir(&root)
        .status()
        .expect("run cargo build");
    assert!(
        status.success() && bin.is_file(),
        "could not build {} (run `peers/setup tokio-tungstenite`)",
        bin.display()
    );
}

#[test]
fn quick_compare_writes_the_report_and_loses_nothing_at_the_fixed_load() {
    ensure_tokio_tungstenite_peer();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("cmp");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "compare",
            "--quick",
            "--servers",
            "ringcast,tokio-tungstenite",
            "-o",
        ])
        .arg(&out)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let mut so = child.stdout.take().expect("stdout");
    let mut se = child.stderr.take().expect("stderr");
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = so.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = se.read_to_string(&mut s);
        s
    });
    let timeout = Duration::from_secs(240);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "loadgen compare --quick did not finish within {timeout:?}; stderr:\n{}",
                t_err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = t_err.join().unwrap_or_default();
    eprintln!("{stderr}");
    assert!(
        status.success(),
        "compare failed ({status}):\n{stdout}\n{stderr}"
    );
    eprintln!(
        "compare --quick took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let report: CompareReport = serde_json::from_str(
        &std::fs::read_to_string(out.join("compare.json")).expect("compare.json"),
    )
    .expect("compare.json parses");
    let mut files = vec![
        "compare.md".to_owned(),
        "compare.json".to_owned(),
        "compare.svg".to_owned(),
        "runs.json".to_owned(),
    ];
    for sc in &report.scenarios {
        if sc.kind == ScenarioKind::Load {
            files.push(format!("latency-{}.svg", sc.id));
            files.push(format!("over-time-{}.svg", sc.id));
        }
    }
    for f in &files {
        let len = std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{f} missing or empty");
    }
    let md = std::fs::read_to_string(out.join("compare.md")).expect("compare.md");
    assert!(md.contains("tokio-tungstenite") && md.contains("× ringcast"));

    let names: Vec<&str> = report.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["ringcast", "tokio-tungstenite"]);
    assert_eq!(report.mode, "quick");
    assert_eq!(report.scenarios.len(), 6, "all six scenarios");
    for sc in &report.scenarios {
        for srv in &names {
            let s = report
                .summaries
                .iter()
                .find(|s| s.scenario == sc.id && s.server == *srv)
                .unwrap_or_else(|| panic!("no summary for {} on {srv}", sc.id));
            if sc.compress && *srv == "tokio-tungstenite" {
                assert!(
                    s.errors
                        .iter()
                        .any(|e| e.contains("cannot negotiate permessage-deflate")),
                    "{:?}",
                    s.errors
                );
                continue;
            }
            assert!(s.errors.is_empty(), "{} on {srv}: {:?}", sc.id, s.errors);
            assert_eq!(s.runs, 1);
            match sc.kind {
                ScenarioKind::Load => {
                    assert!(s.fixed_expected > 0, "{} on {srv}: nothing expected", sc.id);
                    assert_eq!(
                        (s.fixed_received, s.fixed_lost),
                        (s.fixed_expected, 0),
                        "{} on {srv}: every message must reach every subscriber at the fixed load",
                        sc.id
                    );
                }
                ScenarioKind::Idle => {
                    assert_eq!(s.idle_held, Some(sc.subscribers), "{} on {srv}", sc.id);
                    assert!(s.rss_per_connection_bytes.is_some());
                }
                ScenarioKind::Reconnect => panic!("no reconnect storm on the relay protocol"),
            }
        }
    }
    // Compressed JSON through ringcast: every delivery compressed, well under its 1 KiB.
    let sc = report
        .scenarios
        .iter()
        .find(|s| s.compress)
        .expect("a compressed scenario");
    let cell = report
        .cells
        .iter()
        .find(|c| c.scenario == sc.id && c.server == "ringcast")
        .expect("ringcast ran the compressed scenario");
    let fixed = cell.fixed.as_ref().expect("its fixed step");
    assert_eq!(fixed.compressed_share, Some(1.0), "{fixed:?}");
    let bytes = fixed.wire_bytes_per_delivery.expect("bytes on the wire");
    assert!(
        bytes < sc.size_bytes as f64 * 0.7,
        "{bytes} bytes per delivery"
    );
    assert!(md.contains("bytes per delivery"));
    // Every fixed step's interval log adds up to that step's latency histogram.
    let details: Vec<loadgen::compare::model::CellDetail> =
        serde_json::from_str(&std::fs::read_to_string(out.join("runs.json")).expect("runs.json"))
            .expect("runs.json parses");
    for d in &details {
        let Some(fixed) = &d.fixed else { continue };
        let name = format!("hlog/{}-{}-r{}.hlog", d.scenario, d.server, d.rep);
        let text = std::fs::read(out.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let intervals = loadgen::report::timeline::parse_hlog(&text).expect("hlog parses");
        assert!(!intervals.is_empty(), "{name}");
        let count: u64 = intervals.iter().map(|i| i.histogram.len()).sum();
        assert_eq!(count, fixed.latency.count, "{name}");
    }
    // Every cell's fixed step: exact counts.
    for c in report.cells.iter().filter(|c| c.fixed.is_some()) {
        let f = c.fixed.as_ref().expect("fixed");
        assert_eq!(f.lost, 0, "{} on {}", c.scenario, c.server);
        assert!(f.received > 0 && f.received == f.expected_deliveries);
        assert!(f.server_cpu_s.is_some(), "server CPU read from /proc");
    }
}
