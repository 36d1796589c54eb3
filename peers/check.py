#!/usr/bin/env python3
"""Conformance checker for the relay protocol, run against the peer servers.

Why this exists: every comparison peer (and ringcast itself) must speak exactly
the same relay protocol, or the benchmark compares different things. This
starts a peer (or uses a server already listening), connects 3 clients on
channel /a and 1 on /b, and asserts that:
  - every other client on /a gets each text and binary message, same opcode,
    unchanged, in the sender's order;
  - the sender never gets its own message back;
  - nothing crosses channels (/b gets nothing from /a, /a nothing from /b);
  - a 1 MiB and a 16 MiB message relay;
  - the peer prints `listening on 127.0.0.1:PORT` and exits 0 on SIGTERM.

Usage (with the repo's .venv, which has `websockets`):
  .venv/bin/python peers/check.py                  # every peer under peers/
  .venv/bin/python peers/check.py node-ws uwebsockets
  .venv/bin/python peers/check.py --url ws://127.0.0.1:9000   # a running server
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from websockets.asyncio.client import ClientConnection, connect

PEERS_DIR = Path(__file__).resolve().parent
SMALL_PER_SENDER = 60
BIG_SIZES = (1 << 20, 16 << 20)
# After the last expected message, how long to wait for anything unexpected.
QUIET_SECONDS = 0.5
START_TIMEOUT = 30.0
SLOW_TOTAL = 48 << 20
SLOW_SIZE = 64 << 10
CHECK_TIMEOUT = 120.0
STOP_TIMEOUT = 10.0

Msg = tuple[type, object]  # (str or bytes, payload)


class CheckFailed(Exception):
    pass


def all_peers() -> list[str]:
    return sorted(p.parent.name for p in PEERS_DIR.glob("*/run") if os.access(p, os.X_OK))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sender_of(message: str | bytes) -> str:
    head = message[:16]
    if isinstance(head, bytes):
        head = head.decode("ascii", "replace")
    return head.split(":", 1)[0]


def script_for(name: str) -> list[str | bytes]:
    """The messages client `name` sends, text and binary interleaved, with 2 big ones."""
    out: list[str | bytes] = []
    for i in range(SMALL_PER_SENDER):
        body = f"{name}:{i}:" + "x" * (i * 7 % 200)
        out.append(body if i % 2 == 0 else body.encode() + bytes(range(i % 256)))
        if i == SMALL_PER_SENDER // 3 and name == "a1":
            head = f"{name}:big1:".encode()
            out.append(head + os.urandom(BIG_SIZES[0] - len(head)))  # exactly 1 MiB
        if i == SMALL_PER_SENDER // 2 and name == "a2":
            head = f"{name}:big16:x"  # 10 bytes, then 2-byte characters: exactly 16 MiB
            out.append(head + "é" * ((BIG_SIZES[1] - len(head)) // 2))
    return out


async def collect(ws: ClientConnection, expected: int, into: list[str | bytes]) -> None:
    """Read until `expected` messages arrived, then keep reading for QUIET_SECONDS."""
    while len(into) < expected:
        into.append(await ws.recv())
    try:
        while True:
            into.append(await asyncio.wait_for(ws.recv(), QUIET_SECONDS))
    except TimeoutError:
        pass


async def check_url(url: str) -> None:
    opts = dict(compression=None, max_size=None, ping_interval=None, open_timeout=10)
    names_a = ["a1", "a2", "a3"]
    clients = {n: await connect(f"{url}/a", **opts) for n in names_a}
    clients["b1"] = await connect(f"{url}/b", **opts)
    try:
        # Let every server register its connections with the channel.
        await asyncio.sleep(0.3)
        scripts = {n: script_for(n) for n in names_a}
        scripts["b1"] = ["b1:0:only on b", b"b1:1:binary on b"]
        received: dict[str, list[str | bytes]] = {n: [] for n in clients}
        expected = {n: sum(len(scripts[s]) for s in names_a if s != n) for n in names_a}
        expected["b1"] = 0

        async def send_all(name: str) -> None:
            for m in scripts[name]:
                await clients[name].send(m)

        readers = [collect(clients[n], expected[n], received[n]) for n in clients]
        try:
            await asyncio.wait_for(asyncio.gather(*(send_all(n) for n in clients), *readers), 60)
        except TimeoutError:
            counts = {n: f"{len(received[n])}/{expected[n]}" for n in clients}
            raise CheckFailed(f"messages missing after 60 s (received/expected: {counts})") from None

        for n, got in received.items():
            by_sender: dict[str, list[str | bytes]] = {}
            for m in got:
                by_sender.setdefault(sender_of(m), []).append(m)
            if n in by_sender:
                raise CheckFailed(f"{n} got {len(by_sender[n])} of its own messages back")
            if n == "b1":
                if got:
                    raise CheckFailed(f"b1 (on /b) got {len(got)} messages from {sorted(by_sender)}")
                continue
            if "b1" in by_sender:
                raise CheckFailed(f"{n} (on /a) got messages sent on /b")
            for s in names_a:
                if s == n:
                    continue
                want, have = scripts[s], by_sender.get(s, [])
                if len(have) != len(want):
                    raise CheckFailed(f"{n} got {len(have)} of {len(want)} messages from {s}")
                for i, (w, h) in enumerate(zip(want, have)):
                    if type(w) is not type(h):
                        kind = "text" if isinstance(w, str) else "binary"
                        raise CheckFailed(f"{n}: message {i} from {s} was sent {kind}, opcode changed")
                    if w != h:
                        raise CheckFailed(f"{n}: message {i} from {s} differs or is out of order")
        sizes = sorted({len(m.encode() if isinstance(m, str) else m)
                        for m in scripts["a1"] + scripts["a2"] if len(m) > 1000})
        print(f"  relay ok: 3 clients on /a x {SMALL_PER_SENDER} text+binary msgs, "
              f"big messages of {sizes} bytes, no echo, /b isolated")
    finally:
        for ws in clients.values():
            await ws.close()
    await check_slow_receiver(url, opts)


async def check_slow_receiver(url: str, opts: dict) -> None:
    """A receiver that stops reading must still get everything once it resumes.

    SLOW_TOTAL is far above what socket buffers absorb, so the server has to
    queue most of it; a server that skips slow receivers (uWebSockets' default
    64 KiB maxBackpressure) fails here.
    """
    count = SLOW_TOTAL // SLOW_SIZE
    # max_queue=1: the client stops reading from its socket almost at once.
    slow = await connect(f"{url}/slow", **{**opts, "max_queue": 1})
    sender = await connect(f"{url}/slow", **opts)
    try:
        await asyncio.sleep(0.3)
        for i in range(count):
            head = f"s:{i}:".encode()
            await sender.send(head + bytes(SLOW_SIZE - len(head)))
        await asyncio.sleep(1.0)  # the server now holds most of it for `slow`
        for i in range(count):
            try:
                m = await asyncio.wait_for(slow.recv(), 10)
            except TimeoutError:
                raise CheckFailed(f"slow receiver got {i} of {count} messages") from None
            if not (isinstance(m, bytes) and m.startswith(f"s:{i}:".encode())):
                raise CheckFailed(f"slow receiver: message {i} missing or out of order")
        print(f"  slow receiver ok: paused through {SLOW_TOTAL >> 20} MiB, then got all {count}")
    finally:
        await slow.close()
        await sender.close()


def check_peer(name: str) -> bool:
    run = PEERS_DIR / name / "run"
    port = free_port()
    print(f"== {name}: {run} {port}")
    proc = subprocess.Popen([str(run), str(port)], stdout=subprocess.PIPE)
    ok = False
    try:
        deadline = time.monotonic() + START_TIMEOUT
        fd = proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf and time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break  # stdout closed: the peer exited
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace")
        want = f"listening on 127.0.0.1:{port}"
        if line != want:
            raise CheckFailed(f"expected {want!r} on stdout, got {line!r} (exit {proc.poll()})")
        print(f"  started: {line!r} (pid {proc.pid})")

        asyncio.run(asyncio.wait_for(check_url(f"ws://127.0.0.1:{port}"), CHECK_TIMEOUT))

        # Clean stop on SIGTERM, with a client still connected.
        async def hold_and_stop() -> None:
            ws = await connect(f"ws://127.0.0.1:{port}/a", compression=None)
            await asyncio.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(ws.wait_closed(), STOP_TIMEOUT)
            finally:
                await ws.close()

        t0 = time.monotonic()
        asyncio.run(hold_and_stop())
        rc = proc.wait(timeout=STOP_TIMEOUT)
        if rc != 0:
            raise CheckFailed(f"exit status {rc} after SIGTERM, want 0")
        print(f"  SIGTERM with a client connected: exit 0 in {time.monotonic() - t0:.2f}s")
        ok = True
    except (CheckFailed, OSError, TimeoutError, subprocess.TimeoutExpired) as e:
        print(f"  FAIL: {type(e).__name__}: {e}")
    except Exception as e:  # a websockets error from a misbehaving server
        print(f"  FAIL: {type(e).__name__}: {e}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"  {'PASS' if ok else 'FAIL'} {name}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("peers", nargs="*", help="peer names (default: all under peers/)")
    ap.add_argument("--url", help="check a server already listening at this ws:// URL")
    args = ap.parse_args()
    if args.url:
        try:
            asyncio.run(asyncio.wait_for(check_url(args.url.rstrip("/")), CHECK_TIMEOUT))
        except Exception as e:
            print(f"FAIL: {type(e).__name__}: {e}")
            return 1
        print("PASS")
        return 0
    names = args.peers or all_peers()
    results = {n: check_peer(n) for n in names}
    passed = sum(results.values())
    print(f"{passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
