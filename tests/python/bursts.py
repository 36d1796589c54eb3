"""Bursts through ringcast with the `websockets` library and the server's default settings:
200 x 64 KiB, then 20 x 16 MiB (the default --max-message), published back to back to two
subscribers reading as fast as they can. Every message arrives, in order, and nobody is closed.

Usage: python bursts.py ws://127.0.0.1:PORT   (prints OK and exits 0 when every check passed)
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import connect

from common import OPTS, metrics, wait_connections


def message(i: int, size: int) -> bytes:
    """Message i: its index (8 bytes, big-endian), then a filler derived from it."""
    return i.to_bytes(8, "big") + bytes([i % 251]) * (size - 8)


BURSTS = [(200, 64 << 10), (20, 16 << 20)]


async def read_all(ws, who: str) -> None:
    i = 0
    for count, size in BURSTS:
        for _ in range(count):
            got = await asyncio.wait_for(ws.recv(), 60)
            assert isinstance(got, bytes), f"{who}: message {i} is not binary"
            assert len(got) == size, f"{who}: message {i} has {len(got)} bytes, want {size}"
            assert int.from_bytes(got[:8], "big") == i, f"{who}: message {i} out of order"
            assert got == message(i, size), f"{who}: message {i} corrupted"
            i += 1


async def main(url: str) -> None:
    publisher = await connect(f"{url}/burst", **OPTS)
    subscribers = [await connect(f"{url}/burst", **OPTS) for _ in range(2)]
    await wait_connections(url, 3)
    readers = [asyncio.create_task(read_all(ws, f"subscriber {n}")) for n, ws in enumerate(subscribers)]
    i = 0
    for count, size in BURSTS:
        for _ in range(count):
            await publisher.send(message(i, size))
            i += 1
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    m = await asyncio.to_thread(lambda: metrics(url))
    assert m["ringcast_slow_closed_total"] == 0, m
    assert m["ringcast_connections"] == 3, m
    for ws in [publisher, *subscribers]:
        await ws.close()
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
