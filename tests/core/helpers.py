"""Shared test helpers for the core: feeding input three ways, and a scripted server.

How it works: every_split() yields the same bytes whole, byte by byte, and cut at
random points (seeded, so failures reproduce). run_server() feeds chunks into a
ServerConnection, answers each event with a policy, and returns every event (in order)
and every byte the server wrote, so a test can assert that all splits agree.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from lmtp_core import (
    ConnectionClosed,
    EndOfData,
    Limits,
    MailFrom,
    RcptTo,
    Reply,
    ServerConnection,
    Signal,
    StartTls,
)
from lmtp_core._server import ServerEvent

OK_MAIL = Reply(250, "2.1.0", "OK")
OK_RCPT = Reply(250, "2.1.5", "OK")
SAVED = Reply(250, "2.0.0", "Saved")


def every_split(data: bytes, seed: int = 0, random_splits: int = 3) -> Iterator[list[bytes]]:
    """The same input whole, byte by byte, and in `random_splits` random pieces."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    if len(data) < 2:
        return
    rng = random.Random(seed)
    for _ in range(random_splits):
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def default_policy(event: ServerEvent, conn: ServerConnection) -> list[Reply]:
    """Accept every sender and recipient; store every message for everyone."""
    if isinstance(event, MailFrom):
        return [OK_MAIL]
    if isinstance(event, RcptTo):
        return [OK_RCPT]
    if isinstance(event, EndOfData):
        return [SAVED] * conn.owed_replies
    return []


@dataclass
class ServerRun:
    events: list[ServerEvent] = field(default_factory=list)
    output: bytes = b""


def run_server(
    chunks: list[bytes],
    policy: Callable[[ServerEvent, ServerConnection], list[Reply]] = default_policy,
    *,
    eof: bool = False,
    limits: Limits | None = None,
    **kwargs: object,
) -> ServerRun:
    """Feed `chunks` to a fresh ServerConnection (greeting dropped), answering events
    with `policy`. STARTTLS is completed at once (no real TLS). Returns every event
    and all output bytes after the greeting."""
    conn = ServerConnection("mx.example.org", limits=limits, **kwargs)  # type: ignore[arg-type]
    conn.data_to_send()
    run = ServerRun()
    out = bytearray()
    closed = False

    def drain() -> None:
        nonlocal closed
        while not closed:
            event = conn.next_event()
            if event is Signal.NEED_DATA:
                return
            assert event is not Signal.PAUSED, "policy left a reply owed"
            run.events.append(event)
            for reply in policy(event, conn):
                conn.send(reply)
            if isinstance(event, StartTls):
                out.extend(conn.data_to_send())
                conn.tls_established()
            if isinstance(event, ConnectionClosed):
                closed = True

    for chunk in chunks:
        if closed:
            break
        conn.receive_data(chunk)
        drain()
        out.extend(conn.data_to_send())
    if eof and not closed:
        conn.receive_eof()
        drain()
        out.extend(conn.data_to_send())
    run.output = bytes(out)
    return run


def coalesce(events: list[ServerEvent]) -> list[ServerEvent]:
    """Merge adjacent MessageData events: their boundaries follow the input's split,
    everything else must not."""
    from lmtp_core import MessageData

    merged: list[ServerEvent] = []
    for event in events:
        if isinstance(event, MessageData) and merged and isinstance(merged[-1], MessageData):
            merged[-1] = MessageData(merged[-1].data + event.data)
        elif not (isinstance(event, MessageData) and not event.data):
            merged.append(event)
    return merged
