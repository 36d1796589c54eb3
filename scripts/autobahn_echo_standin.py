#!/usr/bin/env python3
# A stand-in WebSocket echo server (Python `websockets`), used to prove the
# Autobahn harness (scripts/autobahn) independently of ringcast, and as an
# example of `--server-cmd`. It prints the same readiness line as ringcast:
#   standin listening on 127.0.0.1:PORT
# Usage (needs `pip install websockets` in some python3 venv, not part of the
# project's dependencies):
#   scripts/autobahn --agent standin --out /tmp/ab-standin --no-check \
#     --server-cmd "/tmp/venv/bin/python scripts/autobahn_echo_standin.py"
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    async for msg in ws:
        await ws.send(msg)


async def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    async with serve(echo, "127.0.0.1", port, max_size=16 * 1024 * 1024 + 64,
                     compression=None, ping_interval=None) as server:
        bound = server.sockets[0].getsockname()[1]
        print(f"standin listening on 127.0.0.1:{bound}", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
