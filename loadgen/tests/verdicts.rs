//! loadgen's self-report: a run whose load generator shares its core with a busy loop of
//! another process is flagged "machine-busy" and says how much CPU the other process took; the
//! same run without the busy loop is not flagged. One test, run alone in its own binary, so
//! that no other test's load counts as "another process".

mod common;

use common::*;
use std::process::{Child, Command};

/// A busy loop in another process, pinned to `cpu`, killed by PID when dropped.
struct BusyLoop(Child);

impl BusyLoop {
    fn start(cpu: usize) -> BusyLoop {
        BusyLoop(
            Command::new("taskset")
                .args(["-c", &cpu.to_string(), "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("spawn a busy loop"),
        )
    }
}

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_starved_loadgen_is_flagged_and_a_quiet_one_is_not() {
    let cpus = ringcast_os::affinity::allowed_cpus();
    let cpu = *cpus.last().expect("a CPU");
    let run = || {
        run_json(
            "run",
            &[
                "-c",
                "50",
                "-R",
                "200",
                "-d",
                "3s",
                "--warmup",
                "500ms",
                "--cpus",
                &cpu.to_string(),
            ],
        )
    };

    // The quiet run: the machine's own background (kernel threads, processes of earlier tests
    // still exiting) can pass the 5 % mark for a moment on a shared CI machine, so it gets up
    // to three tries a second apart; a detector that counted loadgen's or the server's own
    // work as foreign would flag all three.
    let mut flagged = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let (o, quiet) = run();
        let step = &quiet.steps[0];
        let foreign = step
            .cpu
            .foreign_cpu_share
            .expect("foreign CPU share measured");
        assert_eq!(step.lost, 0, "{}", o.stderr);
        if foreign < 0.05 && quiet.verdict != "machine-busy" {
            flagged.clear();
            break;
        }
        flagged.push(format!(
            "verdict {}, other processes {:.1}% ({:?})",
            quiet.verdict,
            foreign * 100.0,
            quiet.warnings
        ));
    }
    assert!(flagged.is_empty(), "every quiet run flagged: {flagged:?}");

    let busy = BusyLoop::start(cpu);
    let (o, starved) = run();
    drop(busy);
    let step = &starved.steps[0];
    let foreign = step
        .cpu
        .foreign_cpu_share
        .expect("foreign CPU share measured");
    assert!(
        foreign > 0.2,
        "the busy loop went unseen: other processes {:.1}%; {}",
        foreign * 100.0,
        o.stderr
    );
    assert_eq!(starved.verdict, "machine-busy", "{:?}", starved.warnings);
    assert!(
        starved
            .warnings
            .iter()
            .any(|w| w.contains("the machine was busy: other processes used")),
        "{:?}",
        starved.warnings
    );
}
