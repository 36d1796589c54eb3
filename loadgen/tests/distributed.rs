//! loadgen across processes against a cluster: `loadgen cluster` starts a real nats-server and
//! two ringcast nodes, and two loadgen worker processes run the load with the publisher on node
//! 0; the coordinator's merged counts are exact, every worker and node is reported, and the
//! latency splits into same-node and cross-node deliveries.
//!
//! Needs nats-server (Debian's package; scripts/test installs it when missing).

mod common;

use common::*;
use std::time::Duration;

#[test]
fn two_workers_against_two_nodes_merge_to_exact_counts() {
    let bin = ringcast_bin();
    let o = loadgen(
        &[
            "cluster",
            "--nodes",
            "2",
            "--workers",
            "2",
            "--server-bin",
            bin.to_str().unwrap(),
            "-c",
            "40",
            "-p",
            "2",
            "--channels",
            "2",
            "-R",
            "400",
            "-d",
            "1s",
            "--warmup",
            "300ms",
            "--format",
            "json",
            "--no-files",
            "--no-progress",
            "--fail-on-loss",
        ],
        Duration::from_secs(90),
    );
    assert_eq!(o.code, 0, "stderr: {}\nstdout: {}", o.stderr, o.stdout);
    let s = summary(&o);
    assert_eq!(s.scenario, "cluster");
    assert_eq!(s.nodes.len(), 2);
    assert!(s.broker.is_some());
    assert_eq!(s.workers.len(), 2);
    assert_eq!(s.workers[0].subscribers, 0..20);
    assert_eq!(s.workers[1].publishers, 1..2);
    let st = &s.steps[0];
    // 1.3 s at 400 msg/s over 2 publishers, each message to the 20 subscribers of its channel.
    assert_eq!(st.sent, 520);
    assert_eq!(st.expected_deliveries, 520 * 20);
    assert_eq!(st.received, st.expected_deliveries);
    assert_eq!(st.lost, 0);
    assert_eq!(st.counts.duplicated + st.counts.out_of_order, 0);
    assert_eq!(st.counts.cross_channel + st.counts.foreign, 0);
    // Every window delivery is timed (one machine), half on the publishers' node.
    assert_eq!(st.latency.count, 400 * 20);
    let same = st.latency_same_server.as_ref().expect("same-node latency");
    let cross = st
        .latency_cross_server
        .as_ref()
        .expect("cross-node latency");
    assert_eq!(same.count + cross.count, st.latency.count);
    assert_eq!(same.count, cross.count);
    assert_eq!(st.workers.len(), 2);
    assert_eq!(
        st.workers.iter().map(|w| w.received).sum::<u64>(),
        st.received
    );
    assert_eq!(st.workers.iter().map(|w| w.sent).sum::<u64>(), st.sent);
    assert_eq!(st.cpu.server_cores_by_node.len(), 2);
    assert!(st.cpu.broker_cores_used.is_some());
}
