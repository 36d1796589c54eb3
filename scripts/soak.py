"""A soak of ringcast: churn, bursts, slow readers and broker restarts at once, for M minutes.

Started by scripts/soak (which provides the virtualenv and the binaries). Runs, on loopback:

- a nats-server and two ringcast nodes linked through it (A and B, 2 threads each);
- healthy load: `loadgen run` on node A alone (publishers and subscribers on A), which must
  lose nothing, broker restarts or not (local delivery never depends on the broker);
- cross-node load: `loadgen run` with publishers on A and subscribers on B, whose losses may
  only come from the broker's outages (core NATS is at-most-once);
- churn: every second, 100 clients connect to A and B (one in 7 to the loaded channel, the
  others to channels of their own) and leave by closing handshake, FIN, RST, or a message
  then FIN;
- bursts with slow readers: every 60 s, 200 x 64 KiB published back to back on B (started with
  a 2 MiB `--channel-window` and a 1 s `--slow-timeout`, so that a burst overflows the window)
  to 2 readers, which must get every message in order, and to 2 clients that stop reading,
  which the server must close (1008);
- broker restarts: every 5 minutes the nats-server is stopped and started again 2 s later.

Every 10 s it samples each node's RSS, descriptors and connection gauge. At the end it checks:
no loss for the healthy load, every burst complete, RSS and descriptors flat (the last third of
the run against the second third), and it writes samples.csv and summary.txt to OUT_DIR.

Usage: python scripts/soak.py --minutes M --out OUT_DIR --ringcast BIN --loadgen BIN
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from websockets.asyncio.client import connect

OPTS = dict(compression=None, max_size=None, ping_interval=None, open_timeout=5, close_timeout=2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, open descriptors) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


class Soak:
    def __init__(self, args):
        self.args = args
        self.deadline = time.monotonic() + args.minutes * 60
        self.samples: list[dict] = []
        self.bursts_ok = 0
        self.bursts_failed: list[str] = []
        self.slow_closed = 0
        self.churned = 0
        self.churn_failures = 0
        self.restarts: list[tuple[float, float]] = []
        self.started = time.monotonic()
        self.nats_port = free_port()
        self.nats_monitor = free_port()
        self.nats = None
        self.nodes: dict[str, tuple[subprocess.Popen, int]] = {}

    def log(self, text: str) -> None:
        print(f"[soak {time.monotonic() - self.started:7.1f}s] {text}", flush=True)

    def start_nats(self) -> None:
        self.nats = subprocess.Popen(
            [self.args.nats, "-a", "127.0.0.1", "-p", str(self.nats_port), "-m", str(self.nats_monitor)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_node(self, name: str, extra: list[str]) -> None:
        port = free_port()
        proc = subprocess.Popen(
            [
                self.args.ringcast,
                "--listen", f"127.0.0.1:{port}",
                "--threads", "2",
                "--cluster", f"nats://127.0.0.1:{self.nats_port}",
                "--node-name", name,
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.args.out, f"node-{name}.log"), "w"),
        )
        self.nodes[name] = (proc, port)

    def url(self, node: str, path: str) -> str:
        return f"ws://127.0.0.1:{self.nodes[node][1]}{path}"

    def stop_all(self) -> dict[str, object]:
        """SIGTERM to everything; the nodes' exit codes (None: had to be killed)."""
        codes: dict[str, object] = {}
        for proc, _ in self.nodes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        if self.nats and self.nats.poll() is None:
            self.nats.send_signal(signal.SIGTERM)
        for name, (proc, _) in self.nodes.items():
            try:
                codes[name] = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = None
        if self.nats:
            try:
                self.nats.wait(10)
            except subprocess.TimeoutExpired:
                self.nats.kill()
        return codes

    def loadgen(self, name: str, extra: list[str]) -> subprocess.Popen:
        secs = int(self.args.minutes * 60) - 30
        return subprocess.Popen(
            [
                self.args.loadgen, "run",
                "-d", f"{max(secs, 30)}s", "--warmup", "5s", "--drain", "10s",
                "--format", "json", "--no-files", "--no-progress", "--connect-timeout", "10s",
                *extra,
            ],
            stdout=open(os.path.join(self.args.out, f"{name}.json"), "w"),
            stderr=open(os.path.join(self.args.out, f"{name}.err"), "w"),
        )

    # -- the activities ---------------------------------------------------------------------

    async def churn(self) -> None:
        n = 0
        while time.monotonic() < self.deadline - 20:
            async def one(i: int) -> None:
                node = "A" if i % 2 else "B"
                # One in 7 joins the loaded channel (and so leaves in the middle of fan-outs).
                path = "/healthy" if i % 7 == 0 and node == "A" else f"/churn/{i % 5000}"
                try:
                    ws = await connect(self.url(node, path), **OPTS)
                    match i % 4:
                        case 0:
                            await ws.close()  # the closing handshake
                        case 1:
                            ws.transport.close()  # FIN without a close frame
                        case 2:
                            ws.transport.abort()  # RST
                        case _:
                            await ws.send(b"churn")
                            ws.transport.close()
                    self.churned += 1
                except Exception:
                    self.churn_failures += 1
            await asyncio.gather(*(one(n + k) for k in range(100)))
            n += 100
            await asyncio.sleep(1)

    async def stalled_client(self, path: str):
        """A client of node B that reads nothing: a 4 KiB receive buffer, and websockets stops
        reading once one message waits in its queue."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.nodes["B"][1]))
        sock.setblocking(False)
        return await connect(self.url("B", path), sock=sock, max_queue=1, **OPTS)

    async def bursts(self) -> None:
        count, size = 200, 64 << 10
        while time.monotonic() < self.deadline - 40:
            await asyncio.sleep(60)
            k = len(self.samples)
            try:
                pub = await connect(self.url("B", f"/burst/{k}"), **OPTS)
                subs = [await connect(self.url("B", f"/burst/{k}"), **OPTS) for _ in range(2)]
                stalled = [await self.stalled_client(f"/burst/{k}") for _ in range(2)]
                await asyncio.sleep(0.2)

                async def read(ws) -> None:
                    for i in range(count):
                        got = await asyncio.wait_for(ws.recv(), 30)
                        assert int.from_bytes(got[:8], "big") == i and len(got) == size, f"message {i}"

                readers = [asyncio.create_task(read(ws)) for ws in subs]
                for i in range(count):
                    await pub.send(i.to_bytes(8, "big") + bytes(size - 8))
                await asyncio.gather(*readers)
                self.bursts_ok += 1
                for ws in [pub, *subs]:
                    await ws.close()
                for ws in stalled:
                    # Read what it holds now: the server's close must follow.
                    try:
                        while True:
                            await asyncio.wait_for(ws.recv(), 5)
                    except Exception:
                        pass
                    if ws.close_code == 1008:
                        self.slow_closed += 1
                    else:
                        self.bursts_failed.append(
                            f"stalled reader not closed with 1008 (close code {ws.close_code})")
                    ws.transport.abort()
            except Exception as e:
                self.bursts_failed.append(f"burst at {time.monotonic() - self.started:.0f}s: {e!r}")

    async def broker_restarts(self) -> None:
        while time.monotonic() < self.deadline - 60:
            await asyncio.sleep(self.args.restart_every)
            if time.monotonic() >= self.deadline - 60:
                break
            down = time.monotonic() - self.started
            self.nats.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.nats.wait, 10)
            await asyncio.sleep(2)
            self.start_nats()
            self.restarts.append((down, time.monotonic() - self.started))
            self.log(f"broker restarted ({len(self.restarts)})")

    async def sample(self) -> None:
        while time.monotonic() < self.deadline:
            row = {"t_s": round(time.monotonic() - self.started, 1)}
            for name, (proc, port) in self.nodes.items():
                rss, fds = proc_status(proc.pid)
                m = await asyncio.to_thread(metrics, port)
                row[f"{name}_rss_kib"] = rss
                row[f"{name}_fds"] = fds
                row[f"{name}_connections"] = int(m.get("ringcast_connections", 0))
                row[f"{name}_channels"] = int(m.get("ringcast_channels", 0))
            self.samples.append(row)
            await asyncio.sleep(10)

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        os.makedirs(self.args.out, exist_ok=True)
        self.start_nats()
        time.sleep(0.5)
        self.start_node("A", [])
        self.start_node("B", ["--channel-window", str(2 << 20), "--slow-timeout", "1"])
        time.sleep(1)
        healthy = self.loadgen(
            "healthy",
            ["--url", self.url("A", "/healthy"), "-c", "200", "-p", "2", "-R", "200"],
        )
        cross = self.loadgen(
            "cross",
            ["--url", self.url("A", "/cross"), "--url", self.url("B", "/cross"),
             "--publish-on", "0", "-c", "200", "-R", "50"],
        )
        self.log(f"nodes A :{self.nodes['A'][1]}, B :{self.nodes['B'][1]}, broker :{self.nats_port}; "
                 f"{self.args.minutes} min")
        await asyncio.gather(
            self.churn(), self.bursts(), self.broker_restarts(), self.sample()
        )
        for p in (healthy, cross):
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                p.kill()
        alive = {name: proc.poll() is None for name, (proc, _) in self.nodes.items()}
        exits = self.stop_all()
        return self.report(alive, exits)

    def report(self, alive: dict[str, bool], exits: dict[str, object]) -> int:
        def load(name: str) -> dict:
            try:
                with open(os.path.join(self.args.out, f"{name}.json")) as f:
                    return json.load(f)
            except Exception as e:
                return {"error": repr(e)}

        healthy, cross = load("healthy"), load("cross")

        def step(s: dict) -> dict:
            return (s.get("steps") or [{}])[0]

        with open(os.path.join(self.args.out, "samples.csv"), "w") as f:
            keys = list(self.samples[0].keys()) if self.samples else []
            f.write(",".join(keys) + "\n")
            for row in self.samples:
                f.write(",".join(str(row[k]) for k in keys) + "\n")

        failures = []
        h, c = step(healthy), step(cross)
        if "lost" not in h:
            failures.append(f"healthy load gave no result: {healthy.get('error', '')}")
        elif h["lost"] != 0 or h.get("counts", {}).get("out_of_order", 0) != 0:
            failures.append(f"healthy load lost {h['lost']} deliveries")
        if self.bursts_failed:
            failures.append(f"bursts failed: {self.bursts_failed}")
        if not all(alive.values()):
            failures.append(f"a node died: {alive}")
        if any(code != 0 for code in exits.values()):
            failures.append(f"a node did not exit 0 on SIGTERM: {exits}")
        third = len(self.samples) // 3
        flat = []
        if third >= 2:
            for name in self.nodes:
                mid = self.samples[third: 2 * third]
                end = self.samples[2 * third:]
                rss_mid = max(r[f"{name}_rss_kib"] for r in mid)
                rss_end = max(r[f"{name}_rss_kib"] for r in end)
                fds_mid = max(r[f"{name}_fds"] for r in mid)
                fds_end = max(r[f"{name}_fds"] for r in end)
                flat.append(f"node {name}: RSS max {rss_mid} KiB in the second third, {rss_end} KiB "
                            f"in the last; fds max {fds_mid} -> {fds_end}")
                if rss_end > rss_mid * 1.10 + 4096:
                    failures.append(f"node {name} RSS grew: {rss_mid} -> {rss_end} KiB")
                if fds_end > fds_mid + 64:
                    failures.append(f"node {name} descriptors grew: {fds_mid} -> {fds_end}")
        lines = [
            f"soak of {self.args.minutes} min, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
            f"healthy (node A only, 200 subscribers, 2 publishers, 200 msg/s): "
            f"sent {h.get('sent')}, expected {h.get('expected_deliveries')}, received {h.get('received')}, "
            f"lost {h.get('lost')}, p50 {h.get('latency', {}).get('p50_ns', 0) / 1e6:.2f} ms, "
            f"p99 {h.get('latency', {}).get('p99_ns', 0) / 1e6:.2f} ms, "
            f"max {h.get('latency', {}).get('max_ns', 0) / 1e6:.1f} ms",
            f"cross-node (publisher on A, 200 subscribers on B, 50 msg/s): sent {c.get('sent')}, "
            f"expected {c.get('expected_deliveries')}, received {c.get('received')}, lost {c.get('lost')} "
            f"(broker down {len(self.restarts)} x ~2 s: at-most-once across nodes)",
            f"broker restarts at (s): {[round(d) for d, _ in self.restarts]}",
            f"churn: {self.churned} connect/leave cycles (closing handshake, FIN, RST, message + FIN; 1 in 7 on the loaded channel), {self.churn_failures} failed",
            f"bursts: {self.bursts_ok} of 200 x 64 KiB to 2 readers complete, {len(self.bursts_failed)} failed; "
            f"{self.slow_closed} stalled readers closed with 1008",
            *flat,
            f"exit codes on SIGTERM: {exits}",
            "result: " + ("PASS" if not failures else "FAIL: " + "; ".join(failures)),
        ]
        text = "\n".join(lines) + "\n"
        with open(os.path.join(self.args.out, "summary.txt"), "w") as f:
            f.write(text)
        print(text, end="")
        return 0 if not failures else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("--ringcast", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--nats", default="nats-server")
    ap.add_argument("--restart-every", type=float, default=300)
    args = ap.parse_args()
    random.seed(1)
    soak = Soak(args)
    try:
        return asyncio.run(soak.run())
    finally:
        soak.stop_all()


if __name__ == "__main__":
    sys.exit(main())
