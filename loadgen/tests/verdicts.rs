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

    let (o, quiet) = run();
    let step = &quiet.steps[0];
    let foreign = step
        .cpu
        .foreign_cpu_share
        .expect("foreign CPU share measured");
    assert_eq!(step.lost, 0, "{}", o.stderr);
    assert!(
        foreign < 0.05 && quiet.verdict != "machine-busy",
        "a quiet run flagged: verdict {}, other processes {:.1}% ({:?})",
        quiet.verdict,
        foreign * 100.0,
        quiet.warnings
    );

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
