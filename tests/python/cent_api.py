"""The `cent` SDK (PyPI, Centrifugo's server API client) against ringcast's server API.

Run by tests/centrifugo.rs with API_URL (http://HOST:PORT/api) and API_KEY; exits non-zero
with the reason at the first check that fails: publish gives increasing offsets in one epoch,
broadcast answers each channel, history returns what was published (newest last, and the
position), channels lists a channel only while it has subscribers (none here: empty), info
describes the node, and a wrong key is refused.
"""

import os
import sys

from cent import (
    BroadcastRequest,
    CentUnauthorizedError,
    ChannelsRequest,
    Client,
    HistoryRequest,
    InfoRequest,
    PublishRequest,
    StreamPosition,
)


def check(condition, what):
    if not condition:
        print(f"FAIL {what}")
        sys.exit(1)
    print(f"ok   {what}")


def main():
    url, key = os.environ["API_URL"], os.environ["API_KEY"]
    client = Client(url, key, timeout=10.0)

    first = client.publish(PublishRequest(channel="cent-news", data={"n": 1}))
    second = client.publish(PublishRequest(channel="cent-news", data={"n": 2}))
    check(first.offset >= 1 and second.offset == first.offset + 1, "publish: offsets one apart")
    check(first.epoch and first.epoch == second.epoch, "publish: one epoch")

    broadcast = client.broadcast(BroadcastRequest(channels=["cent-a", "cent-b"], data={"all": True}))
    check(len(broadcast.responses) == 2, "broadcast: an answer per channel")
    check(all(r.error is None and r.result.offset == 1 for r in broadcast.responses),
          "broadcast: each channel's first publication")

    history = client.history(HistoryRequest(channel="cent-news", limit=10))
    check([p.data["n"] for p in history.publications] == [1, 2], "history: both, oldest first")
    check(history.offset == second.offset and history.epoch == first.epoch, "history: the position")
    since = client.history(HistoryRequest(
        channel="cent-news", limit=10, since=StreamPosition(offset=first.offset, epoch=first.epoch)))
    check([p.data["n"] for p in since.publications] == [2], "history: since a position")

    channels = client.channels(ChannelsRequest(pattern="cent-*"))
    check(channels.channels == {}, "channels: none has subscribers")

    info = client.info(InfoRequest())
    check(len(info.nodes) == 1 and info.nodes[0].uid and info.nodes[0].name, "info: this node")

    try:
        Client(url, "wrong key", timeout=10.0).publish(PublishRequest(channel="x", data={}))
        check(False, "a wrong key is refused")
    except CentUnauthorizedError:
        check(True, "a wrong key is refused (401)")


if __name__ == "__main__":
    main()
