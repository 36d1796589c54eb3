"""permessage-deflate through ringcast with the `websockets` library (which offers it by
default, with a 12-bit server window): negotiation as the client sees it, compressed and plain
subscribers on one channel getting the same messages byte for byte, messages the client itself
compresses, small messages sent uncompressed, and the server's compression counters.

Usage: python compression.py ws://127.0.0.1:PORT   (prints OK and exits 0 when every check passed)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from websockets.asyncio.client import connect

from common import OPTS, metrics, wait_connections

COMPRESSED = dict(OPTS, compression="deflate")


def extension(ws) -> str:
    return ws.response.headers.get("Sec-WebSocket-Extensions", "")


async def main(url: str) -> None:
    publisher = await connect(f"{url}/json", **COMPRESSED)
    deflate = [await connect(f"{url}/json", **COMPRESSED) for _ in range(2)]
    plain = await connect(f"{url}/json", **OPTS)
    await wait_connections(url, 4)
    for ws in (publisher, *deflate):
        ext = extension(ws)
        assert ext.startswith("permessage-deflate"), f"not negotiated: {ext!r}"
        assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext, ext
    assert extension(plain) == "", extension(plain)

    sent = []
    for i in range(200):
        quote = {"seq": i, "symbol": f"SYM{i % 20:03}", "bid": 100 + i / 100, "ask": 100.02 + i / 100,
                 "venue": "XNAS", "flags": ["regular", "open"], "note": "é" * (i % 5)}
        m = json.dumps([quote] * 12)  # about 1 KiB of JSON
        sent.append(m)
        await publisher.send(m)
    sent.append(b"tiny")  # under --compress-min: goes out plain to everyone
    await publisher.send(b"tiny")
    noise = os.urandom(70_000)  # does not compress: goes out plain
    sent.append(noise)
    await publisher.send(noise)
    await publisher.send(["a ", "fragmented ", "message " * 100])
    sent.append("a fragmented " + "message " * 100)

    for who, ws in (("deflate 0", deflate[0]), ("deflate 1", deflate[1]), ("plain", plain)):
        for i, want in enumerate(sent):
            got = await asyncio.wait_for(ws.recv(), 10)
            assert type(got) is type(want), f"{who}: message {i} changed type"
            assert got == want, f"{who}: message {i} differs or is out of order"

    m = await asyncio.to_thread(metrics, url)
    assert m["ringcast_compressed_messages_total"] >= 200, m
    ratio = m["ringcast_compression_bytes_out_total"] / m["ringcast_compression_bytes_in_total"]
    assert ratio < 0.5, f"compression ratio {ratio:.2f}"
    for ws in (publisher, *deflate, plain):
        await ws.close()
        assert ws.close_code == 1000, ws.close_code
    print(f"compressed {m['ringcast_compressed_messages_total']} messages, "
          f"{m['ringcast_compression_bytes_in_total']} -> {m['ringcast_compression_bytes_out_total']} bytes")
    print("OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
