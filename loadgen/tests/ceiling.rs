//! `loadgen ceiling` as a user runs it: the minimal source and loadgen's reader agree exactly
//! (every frame counted once, in order, with its stamp) at each number of frames per write, and
//! the figures are a rate over the window with the cores' shares beside it.

mod common;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `loadgen ceiling` on 20 connections at 1 and 16 frames per write with `args`, storing
/// its result in `store` if given; it must succeed.
fn ceiling(args: &[&str], store: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loadgen"));
    cmd.args(["ceiling", "-c", "20", "--frames-per-write", "1,16"])
        .args(args);
    if let Some(file) = store {
        cmd.env("LOADGEN_CEILING_FILE", file);
    }
    let out = cmd.output().expect("run loadgen ceiling");
    assert!(
        out.status.success(),
        "loadgen ceiling failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn ceiling_counts_every_frame_of_the_minimal_source() {
    // A test must not replace the ceiling stored for this machine's user: --no-store.
    let out = ceiling(
        &[
            "-d",
            "500ms",
            "--warmup",
            "200ms",
            "--format",
            "json",
            "--no-store",
        ],
        None,
    );
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), 2);
    for (r, frames) in reports.iter().zip([1, 16]) {
        assert_eq!(r["frames_per_write"], frames);
        assert_eq!(r["errors"], 0, "{r}");
        let deliveries = r["deliveries"].as_u64().unwrap();
        assert!(deliveries > 1_000, "{r}");
        let rate = r["deliveries_per_s"].as_f64().unwrap();
        assert!((rate - deliveries as f64 / 0.5).abs() < 1.0, "{r}");
        for share in ["reader_cpu_share", "source_cpu_share"] {
            let s = r[share].as_f64().unwrap();
            assert!(s > 0.0 && s <= 1.05, "{share}: {r}");
        }
    }
}

/// The ceiling is stored once, then every run's report shows each step's share of it (here a
/// run against ringcast); without a stored ceiling the report says how to get one.
#[test]
fn the_stored_ceiling_is_shown_beside_a_runs_figures() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ceiling.json");
    ceiling(&["-d", "300ms", "--warmup", "100ms"], Some(&file));
    let stored: loadgen::report::ceiling::StoredCeiling =
        serde_json::from_str(&std::fs::read_to_string(&file).expect("stored")).unwrap();
    assert_eq!(stored.rows.len(), 2);
    assert_eq!(stored.connections, 20);
    assert!(
        stored.rows.iter().all(|r| r.deliveries_per_read >= 1.0),
        "{stored:?}"
    );

    let bin = common::ringcast_bin();
    let run = |ceiling_file: &std::path::Path, res: &str| {
        let res = dir.path().join(res);
        let o = Command::new(env!("CARGO_BIN_EXE_loadgen"))
            .env("LOADGEN_CEILING_FILE", ceiling_file)
            .args(["run", "--server-bin", bin.to_str().unwrap()])
            .args(["-c", "20", "-R", "100", "-d", "1s", "--warmup", "200ms"])
            .args([
                "--format",
                "json",
                "--no-progress",
                "-o",
                res.to_str().unwrap(),
            ])
            .output()
            .expect("run loadgen run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: loadgen::report::model::Summary = serde_json::from_slice(&o.stdout).unwrap();
        (s, std::fs::read_to_string(res.join("report.md")).unwrap())
    };
    let (s, md) = run(&file, "with");
    assert_eq!(s.loadgen_ceiling.as_ref(), Some(&stored));
    let per_read = s.steps[0]
        .cpu
        .deliveries_per_read
        .expect("deliveries per read");
    assert!(per_read >= 1.0, "{per_read}");
    assert!(md.contains("## loadgen's own ceiling"), "{md}");
    assert!(
        md.contains("This run's deliveries per read: 100 msg/s: "),
        "the step's batching beside the rows: {md}"
    );

    let (s, md) = run(&dir.path().join("absent.json"), "without");
    assert_eq!(s.loadgen_ceiling, None);
    assert!(md.contains("`loadgen ceiling` measures it once"), "{md}");
}
