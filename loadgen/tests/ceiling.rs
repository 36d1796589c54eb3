//! `loadgen ceiling` as a user runs it: the minimal source and loadgen's reader agree exactly
//! (every frame counted once, in order, with its stamp) at each number of frames per write, and
//! the figures are a rate over the window with the cores' shares beside it.

use std::process::Command;

#[test]
fn ceiling_counts_every_frame_of_the_minimal_source() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "ceiling",
            "-c",
            "20",
            "-d",
            "500ms",
            "--warmup",
            "200ms",
            "--frames-per-write",
            "1,16",
            "--format",
            "json",
        ])
        .output()
        .expect("run loadgen ceiling");
    assert!(
        out.status.success(),
        "loadgen ceiling failed: {}",
        String::from_utf8_lossy(&out.stderr)
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
