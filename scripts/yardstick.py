"""What scripts/fidelity.py and scripts/headroom.py share: finding an independent reader's
built binary (a `cargo bench --no-run` target of the loadgen crate) and starting the ringcast
they measure, pinned to CPU 0."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench_binary(name: str) -> str:
    """The newest build of loadgen's bench program `name` (e.g. lean_reader)."""
    found = sorted(
        glob.glob(os.path.join(ROOT, f"target/release/deps/{name}-*")),
        key=os.path.getmtime,
    )
    found = [f for f in found if os.access(f, os.X_OK) and not f.endswith(".d")]
    if not found:
        sys.exit(f"build it first: cargo bench -p loadgen --bench {name} --no-run")
    return found[-1]


def start_server() -> tuple[subprocess.Popen, str]:
    """ringcast on CPU 0, one thread, a free loopback port; returns it and its /bench URL."""
    server = subprocess.Popen(
        ["taskset", "-c", "0", os.path.join(ROOT, "target/release/ringcast"),
         "--listen", "127.0.0.1:0", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    line = server.stdout.readline()
    m = re.search(r"127\.0\.0\.1:(\d+)", line)
    if not m:
        server.kill()
        sys.exit(f"ringcast did not start: {line!r}")
    return server, f"ws://127.0.0.1:{m.group(1)}/bench"
