"""Relay through ringcast with the `websockets` library: opcodes, order, no echo, channels,
a 1 MiB and a fragmented message, ping.

Usage: python relay.py ws://127.0.0.1:PORT   (prints OK and exits 0 when every check passed)
"""

from __future__ import annotations

import asyncio
import os
import sys

from websockets.asyncio.client import connect

from common import OPTS, silent, wait_connections


async def main(url: str) -> None:
    a1 = await connect(f"{url}/room", **OPTS)
    a2 = await connect(f"{url}/room", **OPTS)
    a3 = await connect(f"{url}/room", **OPTS)
    b1 = await connect(f"{url}/other", **OPTS)
    await wait_connections(url, 4)

    sent = []
    for i in range(50):
        m = f"a1:{i}:héllo" if i % 2 == 0 else f"a1:{i}:".encode() + bytes(range(i))
        sent.append(m)
        await a1.send(m)
    big = os.urandom(1 << 20)
    sent.append(big)
    await a1.send(big)
    # A fragmented text message, sent as three frames by websockets.
    await a1.send(["frag", "mented ", "wörld"])
    sent.append("fragmented wörld")

    for who, ws in (("a2", a2), ("a3", a3)):
        for i, want in enumerate(sent):
            got = await asyncio.wait_for(ws.recv(), 10)
            assert type(got) is type(want), f"{who}: message {i} changed type ({type(got)})"
            assert got == want, f"{who}: message {i} differs or is out of order"
    await silent(a1, 0.3, "sender a1 (no echo)")
    await silent(b1, 0.1, "b1 on another channel")

    # The other direction, and ping/pong.
    await a2.send("to a1 and a3")
    assert await asyncio.wait_for(a1.recv(), 10) == "to a1 and a3"
    assert await asyncio.wait_for(a3.recv(), 10) == "to a1 and a3"
    latency = await asyncio.wait_for(await b1.ping(b"py-ping"), 10)
    assert latency >= 0

    m = await asyncio.to_thread(metrics_of, url)
    assert m["ringcast_messages_in_total"] == len(sent) + 1, m
    assert m["ringcast_deliveries_out_total"] == 2 * len(sent) + 2, m
    for ws in (a1, a2, a3, b1):
        await ws.close()
        assert ws.close_code == 1000, ws.close_code
    print("OK")


def metrics_of(url: str) -> dict[str, int]:
    from common import metrics

    return metrics(url)


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1].rstrip("/")), 30))
