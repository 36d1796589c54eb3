"""loadgen's headroom: the default benchmark's capacity against an independent reader's.

Per repetition, in alternating order:
- the default benchmark, `target/release/loadgen` (its own ringcast pinned to CPU 0, loadgen
  on CPU 1): its capacity and its verdict;
- the same search with the independent io_uring reader (loadgen/benches/uring_reader.rs) on
  CPU 1 as the only subscriber process, fed by `loadgen run -c 0` (loadgen's pacer,
  publishing only, also on CPU 1), against a ringcast started here on CPU 0. The search is
  the default benchmark's: 1,000 subscribers x 64 B, doubling from 500 msg/s up to
  --max-rate, then --refine bisection steps between the last rate that held and the first
  that did not; a step holds with zero loss and p99 within --slo (1 s warm-up, 4 s measured).

It prints each repetition, then a Markdown table of medians (min-max) and the ratio, and
writes every step to OUT/headroom.json.

Usage (after `cargo build --release --workspace` and
`cargo bench -p loadgen --bench uring_reader --no-run`):

    python3 scripts/headroom.py --repeat 3 --out results/runs/headroom
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time

from yardstick import ROOT, bench_binary, start_server

LOADGEN = os.path.join(ROOT, "target/release/loadgen")
SUBSCRIBERS = 1000


def uring_step(url: str, rate: int, slo_ns: int) -> dict:
    """One step of the independent reader at `rate` msg/s."""
    reader = subprocess.Popen(
        [bench_binary("uring_reader"), url, str(SUBSCRIBERS), "1", "4", str(rate), "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    if reader.stdout.readline().strip() != "ready":
        reader.kill()
        raise RuntimeError(f"uring reader did not start: {reader.stderr.read()[-2000:]}")
    pub = subprocess.run(
        [LOADGEN, "run", "--url", url, "-c", "0", "-R", str(rate), "--warmup", "1s",
         "-d", "4s", "--cpus", "1", "--format", "json", "--no-files", "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    if pub.returncode != 0:
        reader.kill()
        raise RuntimeError(f"publisher failed: {pub.stderr[-2000:]}")
    out = json.loads(reader.stdout.readline())
    reader.wait(timeout=60)
    out["rate"] = rate
    out["lost"] = max(out["expected"] - out["count"], 0)
    out["passed"] = out["lost"] == 0 and out["count"] > 0 and out["p99_ns"] <= slo_ns
    return out


def uring_search(max_rate: int, refine: int, slo_ns: int) -> tuple[float, list[dict]]:
    """The default benchmark's search, run with the independent reader."""
    server, url = start_server()
    steps: list[dict] = []
    try:
        rate, held, failed = 500, None, None
        while rate <= max_rate:
            s = uring_step(url, rate, slo_ns)
            steps.append(s)
            print(f"    uring reader {rate:>7} msg/s: p99 {s['p99_ns'] / 1e6:8.2f} ms, "
                  f"lost {s['lost']}: {'held' if s['passed'] else 'FAILED'}", flush=True)
            if not s["passed"]:
                failed = rate
                break
            held = rate
            rate *= 2
        for _ in range(refine if failed and held else 0):
            mid = (held + failed) // 2
            s = uring_step(url, mid, slo_ns)
            steps.append(s)
            print(f"    uring reader {mid:>7} msg/s: p99 {s['p99_ns'] / 1e6:8.2f} ms, "
                  f"lost {s['lost']}: {'held' if s['passed'] else 'FAILED'}", flush=True)
            if s["passed"]:
                held = mid
            else:
                failed = mid
    finally:
        server.terminate()
        server.wait(timeout=10)
    return float(held or 0) * SUBSCRIBERS, steps


def default_benchmark(max_rate: int, refine: int) -> dict:
    out = subprocess.run(
        [LOADGEN, "--max-rate", str(max_rate), "--refine", str(refine), "--format", "json",
         "--no-files", "--no-progress"],
        capture_output=True, text=True, timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed: {out.stderr[-2000:]}")
    d = json.loads(out.stdout)
    cap = (d.get("capacity") or {}).get("deliveries_per_s", 0.0)
    print(f"    default benchmark: {cap / 1e6:.2f}M deliveries/s, verdict {d['verdict']}",
          flush=True)
    return {"capacity": cap, "verdict": d["verdict"], "steps": d["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--max-rate", type=int, default=256000)
    ap.add_argument("--refine", type=int, default=3)
    ap.add_argument("--slo-ms", type=float, default=100.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "results/runs/headroom"))
    a = ap.parse_args()
    slo_ns = int(a.slo_ms * 1e6)
    runs = []
    for rep in range(1, a.repeat + 1):
        order = ["loadgen", "uring"] if rep % 2 else ["uring", "loadgen"]
        row = {"rep": rep, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        print(f"rep {rep}", flush=True)
        for tool in order:
            if tool == "loadgen":
                row["loadgen"] = default_benchmark(a.max_rate, a.refine)
            else:
                cap, steps = uring_search(a.max_rate, a.refine, slo_ns)
                print(f"    uring reader: {cap / 1e6:.2f}M deliveries/s", flush=True)
                row["uring"] = {"capacity": cap, "steps": steps}
        runs.append(row)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "headroom.json"), "w") as f:
        json.dump(runs, f, indent=1)

    def cell(vals: list[float]) -> str:
        return (f"{statistics.median(vals) / 1e6:.1f}M "
                f"({min(vals) / 1e6:.1f}-{max(vals) / 1e6:.1f}M)")

    lg = [r["loadgen"]["capacity"] for r in runs]
    ur = [r["uring"]["capacity"] for r in runs]
    ratios = [x / y for x, y in zip(lg, ur) if y > 0]
    verdicts = ", ".join(r["loadgen"]["verdict"] for r in runs)
    print("\n| | default benchmark (loadgen) | independent io_uring reader | loadgen / reader |")
    print("|---|---|---|---|")
    print(f"| capacity, 1,000 x 64 B, p99 <= {a.slo_ms:g} ms | {cell(lg)} | {cell(ur)} | "
          f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |"
          if ratios else f"| capacity | {cell(lg)} | {cell(ur)} | - |")
    print(f"\nloadgen's verdicts: {verdicts}")


if __name__ == "__main__":
    main()
