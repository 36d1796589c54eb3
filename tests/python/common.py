"""Helpers shared by the Python `websockets` tests (run by tests/python_websockets.rs)."""

from __future__ import annotations

import asyncio
import time
import urllib.request

OPTS = dict(compression=None, max_size=None, ping_interval=None, open_timeout=5, close_timeout=5)


def metrics(url: str) -> dict[str, int]:
    """GET /metrics over plain HTTP, parsed into {name: value}."""
    http = url.replace("ws://", "http://", 1).rstrip("/") + "/metrics"
    with urllib.request.urlopen(http, timeout=5) as r:
        body = r.read().decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = int(value)
    return out


async def wait_connections(url: str, n: int) -> None:
    """Wait until the server has n WebSocket connections subscribed."""
    deadline = time.monotonic() + 10
    while True:
        got = await asyncio.to_thread(lambda: metrics(url)["ringcast_connections"])
        if got == n:
            return
        assert time.monotonic() < deadline, f"ringcast_connections stayed {got}, want {n}"
        await asyncio.sleep(0.02)


async def silent(ws, seconds: float, who: str) -> None:
    try:
        m = await asyncio.wait_for(ws.recv(), seconds)
    except TimeoutError:
        return
    raise AssertionError(f"{who} got an unexpected message: {m!r:.80}")
