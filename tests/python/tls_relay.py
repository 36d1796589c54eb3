"""Relay through a TLS-terminating proxy: two `websockets` clients on wss://, trusting only the
proxy's certificate, with a token when one is given.

Usage: python tls_relay.py wss://127.0.0.1:PORT CERT.pem [TOKEN]
(prints OK and exits 0 when every check passed)
"""

from __future__ import annotations

import asyncio
import ssl
import sys

from websockets.asyncio.client import connect

from common import OPTS


async def main(url: str, cert: str, token: str | None) -> None:
    context = ssl.create_default_context(cafile=cert)
    query = f"?token={token}" if token else ""
    reader = await connect(f"{url}/secure{query}", ssl=context, **OPTS)
    writer = await connect(f"{url}/secure{query}", ssl=context, **OPTS)
    # Both are subscribed once each has its 101; give the server a moment to count them.
    await asyncio.sleep(0.2)
    sent = ["over tls", b"\x00\x01 binary over tls", "x" * 100_000]
    for m in sent:
        await writer.send(m)
    for m in sent:
        got = await asyncio.wait_for(reader.recv(), 5)
        assert got == m, f"got {got[:40]!r}, want {m[:40]!r}"
    # A client that does not trust the certificate never gets through.
    try:
        await connect(f"{url}/secure{query}", ssl=ssl.create_default_context(), **OPTS)
    except ssl.SSLCertVerificationError:
        pass
    else:
        raise AssertionError("a client connected without trusting the certificate")
    await reader.close()
    await writer.close()
    print("OK")


if __name__ == "__main__":
    token = sys.argv[3] if len(sys.argv) > 3 else None
    asyncio.run(asyncio.wait_for(main(sys.argv[1].rstrip("/"), sys.argv[2], token), 30))
