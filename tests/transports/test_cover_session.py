"""transports/_session.py: a handler method that is a callable object rather than a
method, with no signature inspect can read. It is asked about (inline? session?) each
time, since there is no function to remember it by, taken as neither, and called with
the recipient and its parameters like any method, in every runtime."""

from __future__ import annotations

import threading

import pytest

from lmtp_core import Params, Reply, Stage, Status
from transports import Handler

from .runtimes import RUNTIMES, deliver, endpoint
from .servers import serving

UNKNOWN = Reply(550, "5.1.1", "No such user")


class Lookup:
    """A recipient check as a callable object whose signature cannot be read."""

    __signature__ = "none to read"  # inspect.signature() raises TypeError

    def __init__(self) -> None:
        self.asked: list[tuple[str, Params]] = []
        self.threads: set[int] = set()

    def __call__(self, recipient: str, params: Params) -> Reply | None:
        self.asked.append((recipient, params))
        self.threads.add(threading.get_ident())
        return None if recipient.startswith("known") else UNKNOWN


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_callable_object_without_a_signature_decides_rcpt(runtime: str, sock_path: str) -> None:
    handler = Handler()
    lookup = Lookup()
    handler.rcpt_to = lookup  # type: ignore[method-assign]
    with serving(runtime, handler, socket_path=sock_path) as running:
        result = deliver(
            runtime,
            b"Subject: s\r\n\r\nbody\r\n",
            "a@x.org",
            ["known@x.org", "stranger@x.org"],
            **endpoint(running.address),
        )
    assert [(r.status, r.stage) for r in result.recipients] == [
        (Status.DELIVERED, Stage.DATA),
        (Status.PERMANENT, Stage.RCPT),
    ]
    assert result.recipients[1].reply == UNKNOWN
    assert lookup.asked == [("known@x.org", ()), ("stranger@x.org", ())]
    if runtime != "blocking":  # not known to be quick: run in a handler thread
        assert running.loop_thread is not None
        assert running.loop_thread not in lookup.threads
