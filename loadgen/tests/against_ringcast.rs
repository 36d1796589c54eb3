//! Integration tests: loadgen against the real `ringcast` binary (started by loadgen itself,
//! as in the no-`--url` mode), plus failure paths against tiny fake servers. Each test is
//! bounded (a few seconds of load, a hard timeout on every process) and uses port 0.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use loadgen::report::model::Summary;

#[test]
fn low_rate_run_delivers_exactly_messages_times_subscribers() {
    let (o, s) = run_json(
        "run",
        &[
            "-c",
            "20",
            "-R",
            "200",
            "-d",
            "1s",
            "--warmup",
            "200ms",
            "--fail-on-loss",
        ],
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let st = &s.steps[0];
    assert_eq!(st.sent, 240, "0.2 s + 1 s at 200 msg/s");
    assert_eq!(st.sent_in_window, 200);
    assert_eq!(st.expected_deliveries, 240 * 20);
    assert_eq!(st.received, st.expected_deliveries);
    assert_eq!(st.lost, 0);
    assert_eq!(st.counts.duplicated, 0);
    assert_eq!(st.counts.out_of_order, 0);
    assert_eq!(
        st.counts.foreign + st.counts.malformed + st.counts.cross_channel,
        0
    );
    assert_eq!(
        st.latency.count,
        200 * 20,
        "window deliveries in the histogram"
    );
    assert_eq!(st.fanout.count, 200, "every window message reached all 20");
    assert!(st.latency.p50_ns > 0 && st.latency.max_ns >= st.latency.p99_ns);
    // The kernel stamped what loadgen's sockets received: loadgen's own delay covers every
    // delivery read from the window's start on (the window's 4,000 and warm-up stragglers).
    let own = st.cpu.own_delay.as_ref().expect("receive stamps on Linux");
    assert!(
        (4_000..=4_800).contains(&own.count),
        "own delay counted {} deliveries",
        own.count
    );
    assert!(own.max_ns >= own.p99_ns && own.p99_ns >= own.p50_ns);
    // "machine-busy" when other work shared the CPUs (CI, parallel tests).
    assert!(
        s.verdict == "ok" || s.verdict == "machine-busy",
        "{}",
        s.verdict
    );
    assert!(s.server.started_by_loadgen);
    assert_eq!(s.connect.as_ref().unwrap().succeeded, 21);
}

#[test]
fn drop_policy_with_a_stalled_subscriber_counts_the_loss() {
    let (o, s) = run_json(
        "run",
        &[
            "--server-arg=--slow-policy=drop",
            "--server-arg=--channel-window=262144",
            "--server-arg=--slow-timeout=0",
            "-c",
            "3",
            "-R",
            "1000",
            "--size",
            "8192",
            "-d",
            "2s",
            "--warmup",
            "0s",
            "--stall-subscribers",
            "1",
            "--stall-time",
            "1500ms",
            "--drain",
            "2s",
            "--fail-on-loss",
        ],
    );
    assert_eq!(o.code, 2, "--fail-on-loss exits 2; stderr: {}", o.stderr);
    let st = &s.steps[0];
    assert!(st.lost > 0, "loss expected: {st:?}");
    assert!(
        st.lost < st.sent,
        "only the stalled subscriber loses: {st:?}"
    );
    assert_eq!(st.received + st.lost, st.expected_deliveries);
    assert!(st.received >= 2 * st.sent, "the two others get everything");
    assert_eq!(st.counts.disconnects, 0, "drop keeps the subscriber");
    assert_eq!(s.verdict, "loss");
    assert!(s.warnings.iter().any(|w| w.starts_with("LOSS")));
}

#[test]
fn channels_are_kept_apart() {
    let (o, s) = run_json(
        "run",
        &[
            "--channels",
            "3",
            "-p",
            "3",
            "-c",
            "9",
            "-R",
            "300",
            "-d",
            "1s",
            "--warmup",
            "0s",
        ],
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let st = &s.steps[0];
    assert_eq!(st.sent, 300);
    // Each message reaches the 3 subscribers of its channel only.
    assert_eq!(st.expected_deliveries, 900);
    assert_eq!(st.received, 900);
    assert_eq!(st.counts.cross_channel, 0);
    assert_eq!(st.counts.foreign, 0);
    assert_eq!(st.fanout.count, 300);
}

#[test]
fn default_run_without_url_writes_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res");
    let bin = ringcast_bin();
    let o = loadgen(
        &[
            // No command and no --url: the default benchmark's path (a sweep that starts the
            // server), shortened.
            "--server-bin",
            bin.to_str().unwrap(),
            "-c",
            "20",
            "--rates",
            "100,200",
            "--step-duration",
            "1500ms",
            "--step-warmup",
            "200ms",
            // This test is about the files; a busy shared machine must not fail the SLO.
            "--slo-p99",
            "10s",
            "--no-progress",
            "-o",
            out.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    assert!(o.stdout.contains("Capacity:"), "{}", o.stdout);
    for f in [
        "summary.json",
        "report.md",
        "latency.hgrm",
        "latency.svg",
        "sweep.svg",
        "server.log",
        "latency.hlog",
        "latency-over-time.svg",
    ] {
        let p = out.join(f);
        assert!(
            p.is_file() && p.metadata().unwrap().len() > 0,
            "{f} missing"
        );
    }
    let s: Summary =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(s.scenario, "sweep");
    assert_eq!(s.steps.len(), 2);
    assert!(
        s.steps
            .iter()
            .all(|st| st.passed == Some(true) && st.lost == 0),
        "{}",
        o.stdout
    );
    let cap = s.capacity.expect("capacity");
    assert_eq!(cap.step, 1);
    assert!(s.machine.cores >= 1 && !s.machine.kernel.is_empty());
    let hgrm = std::fs::read_to_string(out.join("latency.hgrm")).unwrap();
    let rows = loadgen::report::hgrm::parse(&hgrm);
    assert_eq!(rows.last().unwrap().total_count, s.steps[1].latency.count);
    // The interval log: two seconds per 1.5 s step, tagged by rate, adding up to each step's
    // histogram exactly.
    let hlog = std::fs::read(out.join("latency.hlog")).unwrap();
    let intervals = loadgen::report::timeline::parse_hlog(&hlog).expect("latency.hlog parses");
    for (step, tag) in s.steps.iter().zip(["R100", "R200"]) {
        let mine: Vec<_> = intervals
            .iter()
            .filter(|i| i.tag.as_deref() == Some(tag))
            .collect();
        assert_eq!(
            mine.len(),
            2,
            "{tag}: one interval per second of its window"
        );
        assert!((mine[1].start_s - mine[0].start_s - 1.0).abs() < 0.002);
        let count: u64 = mine.iter().map(|i| i.histogram.len()).sum();
        let max = mine.iter().map(|i| i.histogram.max()).max().unwrap();
        assert_eq!(count, step.latency.count, "{tag}");
        assert_eq!(max, step.latency.max_ns, "{tag}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("sweep") && md.contains("commit") && md.contains("| rate msg/s"));
    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    assert!(svg.starts_with("<svg") || svg.contains("<svg"));
}

#[test]
fn connections_reports_memory_per_connection() {
    let (o, s) = run_json("connections", &["-c", "50", "--hold", "500ms"]);
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let c = s.connections.expect("connections report");
    assert_eq!(c.held, 50);
    assert_eq!(c.still_open, 50);
    assert!(c.server_rss_per_connection_bytes.is_some());
    assert_eq!(s.connect.unwrap().succeeded, 50);
}

#[test]
fn a_rejected_upgrade_is_reported_with_the_server_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten().take(4) {
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let body = "no such channel\n";
            let _ = write!(
                s,
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let url = format!("ws://{addr}/nope");
    let o = loadgen(
        &[
            "run",
            "--url",
            &url,
            "-c",
            "1",
            "-d",
            "1s",
            "--no-files",
            "--no-progress",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(o.code, 1);
    assert!(
        o.stderr.contains("404") && o.stderr.contains("no such channel"),
        "stderr: {}",
        o.stderr
    );
}

#[test]
fn more_connections_than_descriptors_fail_at_once() {
    let t = Instant::now();
    let o = loadgen(
        &[
            "run",
            "--url",
            "ws://127.0.0.1:9/x",
            "-c",
            "50000000",
            "--no-files",
            "--no-progress",
        ],
        Duration::from_secs(20),
    );
    assert_eq!(o.code, 1);
    assert!(o.stderr.contains("RLIMIT_NOFILE"), "stderr: {}", o.stderr);
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The case from the field: ringcast with 256 open files (`--max-connections 0`, so only the
/// descriptors limit it) and 600 clients. loadgen reports promptly, names the cause with its
/// count, and says how many connected; nobody waits for a timeout.
#[test]
fn a_server_out_of_descriptors_gives_a_prompt_report_with_causes() {
    use std::os::unix::process::CommandExt;
    let mut server = std::process::Command::new(ringcast_bin());
    server
        .args([
            "--listen",
            "127.0.0.1:0",
            "--threads",
            "1",
            "--max-connections",
            "0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let limit = libc::rlimit {
        rlim_cur: 256,
        rlim_max: 256,
    };
    // SAFETY: setrlimit is async-signal-safe and touches only the child being started.
    unsafe {
        server.pre_exec(move || {
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut server = server.spawn().expect("start ringcast");
    let mut line = String::new();
    {
        use std::io::BufRead;
        let mut out = std::io::BufReader::new(server.stdout.take().unwrap());
        out.read_line(&mut line).unwrap();
    }
    let addr = loadgen::sys::server_process::parse_listening_line(&line).expect("listening line");
    let url = format!("ws://{addr}/fd");
    let started = Instant::now();
    let o = loadgen(
        &[
            "connections",
            "--url",
            &url,
            "-c",
            "600",
            "--hold",
            "200ms",
            "--connect-timeout",
            "10s",
            "--format",
            "json",
            "--no-files",
            "--no-progress",
        ],
        Duration::from_secs(60),
    );
    let took = started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let s: Summary = summary(&o);
    let connect = s.connect.expect("connect report");
    assert!(
        connect.succeeded > 0 && connect.succeeded < 600,
        "{connect:?}"
    );
    let shed = connect
        .causes
        .iter()
        .find(|c| c.cause == "HTTP 503")
        .map_or(0, |c| c.count);
    assert!(shed > 0, "causes: {:?}", connect.causes);
    assert_eq!(
        connect.causes.iter().map(|c| c.count).sum::<u32>(),
        connect.failed
    );
    assert_eq!(s.verdict, "connect-failures");
    // Well under one 10 s connect timeout: every refused client was answered.
    assert!(took < Duration::from_secs(9), "loadgen took {took:?}");
}

/// With `--token-secret-file` loadgen starts ringcast requiring tokens from that secret and
/// sends a token it minted on every connection: every message arrives. Without a token the
/// same server answers 401, which loadgen reports with the server's reason.
#[test]
fn a_run_with_tokens_minted_from_the_secret_delivers_everything() {
    let mut secret = tempfile::NamedTempFile::new().unwrap();
    secret.write_all(b"loadgen's test secret\n").unwrap();
    let path = secret.path().display().to_string();
    let (o, s) = run_json(
        "run",
        &[
            "-c",
            "20",
            "-R",
            "200",
            "-d",
            "1s",
            "--warmup",
            "200ms",
            "--fail-on-loss",
            "--token-secret-file",
            &path,
        ],
    );
    assert_eq!(o.code, 0, "stderr: {}", o.stderr);
    let st = &s.steps[0];
    assert_eq!(st.received, st.expected_deliveries);
    assert_eq!(st.lost, 0);
    let command = s.server.command.as_deref().unwrap_or_default();
    assert!(
        command.contains("--token-hmac-secret-file"),
        "the server was not started with tokens: {command}"
    );

    let refused = loadgen(
        &[
            "run",
            "-c",
            "2",
            "-R",
            "10",
            "-d",
            "1s",
            "--no-files",
            "--no-progress",
            &format!("--server-arg=--token-hmac-secret-file={path}"),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(refused.code, 1);
    assert!(
        refused.stderr.contains("401") && refused.stderr.contains("token is required"),
        "stderr: {}",
        refused.stderr
    );
}
