"""How faithful loadgen's latency figures are: loadgen against an independent lean reader.

Starts one ringcast pinned to CPU 0, then, at each rate and for each repetition, alternately:
- `loadgen run` with SUBSCRIBERS subscribers (its own readers and pacer pinned to CPU 1);
- the lean reader (loadgen/benches/lean_reader.rs: epoll, one clock read per read, one
  histogram, nothing else) with the same subscribers on CPU 1, fed by `loadgen run -c 0` (the
  same pacer, publishing only, also on CPU 1).
Both measure the same thing, publish (intended time) -> receive, over the same window. It
prints a Markdown table of medians (min-max) of p50 and p99 per rate and tool, and the ratio
loadgen / lean, and writes every run's figures to OUT/fidelity.json.

Usage (after `cargo build --release --workspace` and
`cargo bench -p loadgen --bench lean_reader --no-run`):

    python3 scripts/fidelity.py --rates 2000,12000 --repeat 5 --out results/runs/fidelity
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from yardstick import ROOT, bench_binary, start_server



def loadgen(url: str, subscribers: int, rate: int, warmup: float, duration: float,
            extra: list[str]) -> dict:
    out = subprocess.run(
        [os.path.join(ROOT, "target/release/loadgen"), "run", "--url", url,
         "-c", str(subscribers), "-R", str(rate), "--warmup", f"{warmup}s",
         "-d", f"{duration}s", "--cpus", "1", "--format", "json", "--no-files",
         "--no-progress", *extra],
        capture_output=True, text=True, timeout=duration * 4 + 120,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def lean(url: str, subscribers: int, rate: int, warmup: float, duration: float,
         extra: list[str]) -> dict:
    reader = subprocess.Popen(
        [bench_binary("lean_reader"), url, str(subscribers), str(warmup), str(duration), "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if reader.stdout.readline().strip() != "ready":
        reader.kill()
        raise RuntimeError(f"lean reader did not start: {reader.stderr.read()[-2000:]}")
    publisher = loadgen(url, 0, rate, warmup, duration, extra)
    line = reader.stdout.readline()
    reader.wait(timeout=30)
    result = json.loads(line)
    result["sent"] = publisher["steps"][0]["sent"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="2000,12000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--loadgen-arg", action="append", default=[],
                    help="extra argument for every `loadgen run` (both tools' publishers), "
                         "e.g. --loadgen-arg=--no-realtime-pacer")
    ap.add_argument("--out", default=os.path.join(ROOT, "results/runs/fidelity"))
    a = ap.parse_args()
    rates = [int(r) for r in a.rates.split(",")]
    server, url = start_server()
    runs = []
    try:
        for rep in range(1, a.repeat + 1):
            for rate in rates:
                order = ["loadgen", "lean"] if rep % 2 else ["lean", "loadgen"]
                for tool in order:
                    if tool == "loadgen":
                        s = loadgen(url, a.subscribers, rate, a.warmup, a.duration,
                                    a.loadgen_arg)["steps"][0]
                        lat = s["latency"]
                        row = {"p50_ns": lat["p50_ns"], "p99_ns": lat["p99_ns"],
                               "count": lat["count"], "lost": s["lost"],
                               "loadgen_cores_used": s["cpu"]["loadgen_cores_used"]}
                    else:
                        row = lean(url, a.subscribers, rate, a.warmup, a.duration, a.loadgen_arg)
                    row.update(tool=tool, rate=rate, rep=rep,
                               utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                    runs.append(row)
                    print(f"rep {rep} {rate:>6} msg/s {tool:>8}: p50 {row['p50_ns'] / 1e6:.2f} ms"
                          f"  p99 {row['p99_ns'] / 1e6:.2f} ms  ({row['count']} samples)",
                          flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "fidelity.json"), "w") as f:
        json.dump(runs, f, indent=1)

    def cell(rate: int, tool: str, key: str) -> tuple[float, str]:
        v = [r[key] / 1e6 for r in runs if r["rate"] == rate and r["tool"] == tool]
        med = statistics.median(v)
        return med, f"{med:.2f} ({min(v):.2f}-{max(v):.2f})"

    print(f"\n| load (x {a.subscribers:,} subscribers) | loadgen p50 / p99, ms | lean reader p50 / p99, ms"
          " | loadgen / lean, p50 / p99 |")
    print("|---|---|---|---|")
    for rate in rates:
        lp50, lp50s = cell(rate, "loadgen", "p50_ns")
        lp99, lp99s = cell(rate, "loadgen", "p99_ns")
        rp50, rp50s = cell(rate, "lean", "p50_ns")
        rp99, rp99s = cell(rate, "lean", "p99_ns")
        print(f"| {rate:,} msg/s | {lp50s} / {lp99s} | {rp50s} / {rp99s} | "
              f"{lp50 / rp50:.2f}x / {lp99 / rp99:.2f}x |")


if __name__ == "__main__":
    main()
