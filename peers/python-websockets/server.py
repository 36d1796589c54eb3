"""Relay-protocol peer server on Python `websockets` (asyncio `serve` + `broadcast`).

Why this exists: ringcast is compared against the servers its users run today.
This is the idiomatic broadcast server written with the `websockets` library:
the request path names the channel, and every message a client sends is passed
to `websockets.asyncio.server.broadcast` for every *other* client on that
channel. `broadcast` never waits for a slow receiver and never drops for one
(its write buffer just grows), which is what the relay protocol needs.

Usage: server.py PORT [deflate]   (binds 127.0.0.1:PORT; SIGTERM/SIGINT close it cleanly)

With `deflate`, permessage-deflate is accepted when a client offers it (the library's own
extension, compressing each message per connection); without it, compression is off.
"""

import asyncio
import signal
import sys

from websockets.asyncio.server import ServerConnection, broadcast, serve

# Relay protocol: messages up to at least 16 MiB must relay (default is 1 MiB).
MAX_MESSAGE = 16 * 1024 * 1024

# channel name (request path) -> connections on it
CHANNELS: dict[str, set[ServerConnection]] = {}


async def relay(ws: ServerConnection) -> None:
    """Relay every message from `ws` to the other clients on its channel."""
    channel = ws.request.path if ws.request is not None else "/"
    members = CHANNELS.setdefault(channel, set())
    members.add(ws)
    try:
        async for message in ws:
            # str -> text frame, bytes -> binary frame: the opcode is kept.
            broadcast((c for c in members if c is not ws), message)
    finally:
        members.discard(ws)
        if not members and CHANNELS.get(channel) is members:
            del CHANNELS[channel]


async def main(port: int, deflate: bool) -> None:
    compression = "deflate" if deflate else None
    async with serve(
        relay, "127.0.0.1", port, max_size=MAX_MESSAGE, compression=compression
    ) as server:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.close)
        print(f"listening on 127.0.0.1:{port}", flush=True)
        await server.wait_closed()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[2:] not in ([], ["deflate"]):
        sys.exit("usage: server.py PORT [deflate]")
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:] == ["deflate"]))
