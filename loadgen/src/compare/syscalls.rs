//! Syscalls per delivery: `strace -c -f` attached to a server during one fixed-load step.
//!
//! strace slows the server down, so only the counts mean anything; it runs apart from the
//! measured cells, for ringcast and the best peer only.

use crate::sys::child::{tie_to_loadgen, Pinning};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::model::{Scenario, SyscallFinding};
use super::peers::ServerDef;
use super::plan::Plan;
use super::runner::{measured_step, open_live};

/// Whether `strace` runs here.
pub fn strace_installed() -> bool {
    Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The totals of a `strace -c` summary: calls, errors, and the most frequent (name, calls).
pub type StraceTotals = (u64, u64, Vec<(String, u64)>);

/// Parses strace -c output.
pub fn parse_strace_summary(text: &str) -> Option<StraceTotals> {
    let mut rows = Vec::new();
    let mut total = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[0].parse::<f64>().is_err() {
            continue;
        }
        let name = f[f.len() - 1].to_owned();
        let calls: u64 = match f[3].parse() {
            Ok(c) => c,
            Err(_) => continue,
        };
        let errors: u64 = if f.len() >= 6 {
            f[4].parse().unwrap_or(0)
        } else {
            0
        };
        if name == "total" {
            total = Some((calls, errors));
        } else {
            rows.push((name, calls));
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    rows.truncate(6);
    total.map(|(c, e)| (c, e, rows))
}

/// Counts the server's syscalls with strace during one fixed-load step.
pub fn measure_syscalls(
    plan: &Plan,
    sc: &Scenario,
    def: &ServerDef,
    out_dir: Option<&Path>,
) -> SyscallFinding {
    let mut f = SyscallFinding {
        server: def.name.clone(),
        scenario: sc.id.clone(),
        rate_per_s: sc.fixed_rate_per_s,
        ..Default::default()
    };
    let log = plan.log_path(&format!("strace-{}", sc.id), &def.name, 1, 0);
    let mut live = match open_live(def, sc, plan, log.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            f.error = Some(e.to_string());
            return f;
        }
    };
    let tmp_dir = out_dir
        .map(Path::to_path_buf)
        .unwrap_or_else(std::env::temp_dir);
    let out = tmp_dir.join(format!("strace-{}-{}.txt", sc.id, def.name));
    let pid = live.server.pid.to_string();
    let cpu = plan.server_cpu;
    let mut cmd = Command::new("strace");
    cmd.args(["-c", "-f", "-q", "-p", &pid, "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    f.command = format!("strace -c -f -q -p PID -o {}", out.display());
    tie_to_loadgen(&mut cmd, Some(vec![cpu]), Pinning::BestEffort);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            f.error = Some(format!("cannot start strace: {e}"));
            live.stop();
            return f;
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    let r = measured_step(
        &mut live,
        sc.fixed_rate_per_s,
        Duration::from_millis(500),
        Duration::from_secs(3),
        plan.drain,
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
    live.stop();
    match r {
        Ok((o, _)) => {
            f.deliveries = o.result.received;
            f.messages = o.result.sent;
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            match parse_strace_summary(&text) {
                Some((calls, errors, top)) => {
                    f.syscalls = calls;
                    f.errors = errors;
                    f.top = top;
                    f.per_delivery = calls as f64 / f.deliveries.max(1) as f64;
                    f.per_message = calls as f64 / f.messages.max(1) as f64;
                }
                None => f.error = Some(format!("no strace summary in {}", out.display())),
            }
        }
        Err(e) => f.error = Some(e.to_string()),
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strace_summary_parses() {
        let text = "% time     seconds  usecs/call     calls    errors syscall\n\
------ ----------- ----------- --------- --------- ----------------\n\
 60.00    0.030000           3     10000           writev\n\
 40.00    0.020000           2      9000       120 epoll_wait\n\
------ ----------- ----------- --------- --------- ----------------\n\
100.00    0.050000           2     19000       120 total\n";
        let (calls, errors, top) = parse_strace_summary(text).unwrap();
        assert_eq!((calls, errors), (19000, 120));
        assert_eq!(top[0], ("writev".to_owned(), 10000));
        let no_err = "100.00    0.050000           2     19000           total\n";
        assert_eq!(parse_strace_summary(no_err).unwrap().0, 19000);
    }
}
