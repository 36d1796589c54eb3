"""Close codes seen by the `websockets` library (server run with --max-message 1000).

- a message over --max-message: the server closes with 1009;
- the client's close code (4000, with a reason) is echoed back;
- invalid UTF-8 in a text frame (sent as a raw frame): 1007;
- a new text message inside a fragmented one (raw frames): 1002.

Usage: python close_codes.py ws://127.0.0.1:PORT   (prints OK and exits 0 when every check passed)
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError
from websockets.frames import Frame, Opcode

from common import OPTS


async def closed_with(ws, what: str) -> int:
    try:
        m = await asyncio.wait_for(ws.recv(), 10)
    except ConnectionClosedError as e:
        assert e.rcvd is not None, f"{what}: closed without a close frame"
        return e.rcvd.code
    raise AssertionError(f"{what}: expected a close, got {m!r:.80}")


async def raw_frame(ws, frame: Frame) -> None:
    """Sends a frame as is, bypassing the library's checks on what it sends."""
    ws.protocol.send_frame(frame)
    ws.send_data()


async def main(url: str) -> None:
    ws = await connect(f"{url}/codes", **OPTS)
    await ws.send(b"x" * 1000)  # exactly the limit: fine
    await ws.send(b"x" * 1001)
    code = await closed_with(ws, "over --max-message")
    assert code == 1009, f"over --max-message: close {code}, want 1009"

    ws = await connect(f"{url}/codes", **OPTS)
    await ws.close(4000, "done here")
    assert ws.close_code == 4000, f"echoed close code {ws.close_code}, want 4000"

    ws = await connect(f"{url}/codes", **OPTS)
    await raw_frame(ws, Frame(Opcode.TEXT, b"bad \xff utf-8"))
    code = await closed_with(ws, "invalid UTF-8")
    assert code == 1007, f"invalid UTF-8: close {code}, want 1007"

    ws = await connect(f"{url}/codes", **OPTS)
    await raw_frame(ws, Frame(Opcode.TEXT, b"half", fin=False))
    await raw_frame(ws, Frame(Opcode.TEXT, b"new message"))
    code = await closed_with(ws, "new message inside a fragmented one")
    assert code == 1002, f"new message inside a fragmented one: close {code}, want 1002"
    print("OK")


if __name__ == "__main__":
    asyncio.run(asyncio.wait_for(main(sys.argv[1].rstrip("/")), 30))
