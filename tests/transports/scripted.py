"""A scripted in-memory network backend: a peer whose behaviour is a list.

How it works. ``Scripted(connections)`` is a backend (the ``backend=`` of Client and
Pool, in any runtime) whose i-th connect() plays the i-th script. A script is a list of
steps: ``REFUSE`` makes that connect fail (ConnectionRefusedError); bytes are what the
peer says next (one receive returns one step); ``PAUSE`` is a wait that outlasts its
timeout (the receive raises TimeoutError at once: no clock, no sleep); ``RESET`` makes
the receive fail with ConnectionResetError; ``SEND_FAILS`` makes the next send fail
(BrokenPipeError, its bytes known unsent); ``END_MAY_HAVE_LEFT`` makes the send that
carries the end of the data fail with the stream unable to tell whether its bytes left
(unsent() False); ``EOF`` is the peer hanging up. What the client sends is recorded
per connection in ``sent``, and each pause the backend was asked for in ``slept`` (a
Pool's backoff: recorded, not slept). Nothing here waits, starts a thread or opens a
socket, so a test that uses it is exact and instant; the real backends are proven by
the tests on real sockets.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from transports import asyncio as lmtp_asyncio
from transports import blocking
from transports import trio as lmtp_trio

__all__ = [
    "END_MAY_HAVE_LEFT",
    "EOF",
    "PAUSE",
    "REFUSE",
    "RESET",
    "SEND_FAILS",
    "AsyncScripted",
    "SyncScripted",
    "deliver",
    "dialogue",
]

REFUSE, PAUSE, RESET, SEND_FAILS, EOF = "refuse", "pause", "reset", "send fails", "eof"
END_MAY_HAVE_LEFT = "end may have left"

GREETING = b"220 scripted LMTP\r\n"
LHLO = b"250-scripted\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n"


def dialogue(*after_data: Any, recipients: int = 1, quit: bool = True) -> list[Any]:
    """The steps of a plain session that takes one message for `recipients`
    recipients: greeting, LHLO, MAIL, each RCPT, DATA's 354, then `after_data` (the
    replies after the data by default: one 250 per recipient), then QUIT's 221."""
    replies = after_data or tuple(b"250 2.0.0 ok\r\n" for _ in range(recipients))
    return [
        GREETING,
        LHLO,
        b"250 2.1.0 ok\r\n",
        *(b"250 2.1.5 ok\r\n" for _ in range(recipients)),
        b"354 go on\r\n",
        *replies,
        *([b"221 2.0.0 bye\r\n"] if quit else []),
    ]


@dataclass
class _Play:
    """One connection's script, as it is played."""

    steps: list[Any]
    sent: list[bytes] = field(default_factory=list)
    closed: bool = False
    left_unknown: bool = False  # the last failed send may have reached the peer
    tls = False

    def send(self, data: bytes) -> None:
        if self.closed:
            raise OSError("closed")
        if self.steps and self.steps[0] == SEND_FAILS:
            self.steps.pop(0)
            raise BrokenPipeError("scripted: the send failed")
        if (
            self.steps
            and self.steps[0] == END_MAY_HAVE_LEFT
            and (data == b".\r\n" or data.endswith(b"\r\n.\r\n"))
        ):
            self.steps.pop(0)
            self.left_unknown = True
            raise BrokenPipeError("scripted: the send failed, maybe after it left")
        self.sent.append(data)

    def receive(self) -> bytes:
        if self.closed:
            raise OSError("closed")
        if not self.steps:
            raise AssertionError(f"the script ran out; the client sent {self.sent!r}")
        step = self.steps.pop(0)
        if step == PAUSE:
            raise TimeoutError("timed out")
        if step == RESET:
            raise ConnectionResetError("scripted: reset by peer")
        if step == EOF:
            self.steps.insert(0, EOF)  # stays at end of file
            return b""
        assert isinstance(step, bytes), step
        return step

    def idle_clean(self) -> bool:
        # Bytes or an end of file waiting before anything was asked count as "spoke".
        return not self.closed and not (
            self.steps and (isinstance(self.steps[0], bytes) or self.steps[0] == EOF)
        )


class _Scripts:
    def __init__(self, scripts: Iterable[list[Any]]) -> None:
        self._scripts = [list(script) for script in scripts]
        self.plays: list[_Play] = []
        self.slept: list[float] = []

    def _connect(self) -> _Play:
        if not self._scripts:
            raise AssertionError("more connections than scripts")
        steps = self._scripts.pop(0)
        if steps and steps[0] == REFUSE:
            raise ConnectionRefusedError(111, "Connection refused")
        play = _Play(steps)
        self.plays.append(play)
        return play

    @property
    def sent(self) -> list[bytes]:
        """Everything sent on every connection, in order."""
        return [data for play in self.plays for data in play.sent]


class AsyncScripted(_Scripts):
    """For the asyncio and trio Client and Pool: `real` supplies the locks."""

    def __init__(self, real: Any, scripts: Iterable[list[Any]]) -> None:
        super().__init__(scripts)
        self._real = real

    def __getattr__(self, name: str) -> Any:  # lock, acquire, semaphore, mutex, ...
        return getattr(self._real, name)

    async def connect(self, config: Any, timeout: float) -> _AsyncStream:
        return _AsyncStream(self._connect())

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class _AsyncStream:
    def __init__(self, play: _Play) -> None:
        self._play, self.tls = play, False

    async def send_all(self, data: bytes, timeout: float) -> None:
        self._play.send(data)

    def unsent(self) -> bool:
        return not self._play.left_unknown

    async def receive_some(self, timeout: float) -> bytes:
        return self._play.receive()

    async def start_tls(self, context: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        raise ssl.SSLError("scripted: no TLS here")

    def idle_clean(self) -> bool:
        return self._play.idle_clean()

    def peer(self, listening: str) -> str:
        return "scripted"

    async def aclose(self, forceful: bool = False) -> None:
        self._play.closed = True


class SyncScripted(_Scripts):
    """For the blocking Client and Pool."""

    def __init__(self, real: Any, scripts: Iterable[list[Any]]) -> None:
        super().__init__(scripts)
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def connect(self, config: Any, timeout: float) -> _SyncStream:
        return _SyncStream(self._connect())

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


class _SyncStream:
    def __init__(self, play: _Play) -> None:
        self._play, self.tls = play, False

    def send_all(self, data: bytes, timeout: float) -> None:
        self._play.send(data)

    def unsent(self) -> bool:
        return not self._play.left_unknown

    def receive_some(self, timeout: float) -> bytes:
        return self._play.receive()

    def start_tls(self, context: ssl.SSLContext, *args: Any, **kwargs: Any) -> Any:
        raise ssl.SSLError("scripted: no TLS here")

    def idle_clean(self) -> bool:
        return self._play.idle_clean()

    def peer(self, listening: str) -> str:
        return "scripted"

    def close(self, forceful: bool = False) -> None:
        self._play.closed = True


MESSAGE = b"Subject: scripted\r\n\r\nbody\r\n"


def deliver(
    runtime: str,
    scripts: Iterable[list[Any]],
    recipients: Sequence[str] = ("b@example.org",),
    deliveries: int = 1,
    pool: bool = False,
    **settings: Any,
) -> tuple[list[Any], _Scripts]:
    """`deliveries` deliveries one after the other on one Client (or Pool) in `runtime`
    against the scripts, then close(); what each returned or raised, and the backend
    (its `sent`, its `plays`)."""
    driver = DRIVERS[runtime]
    settings.setdefault("socket_path", "/scripted")
    outcomes: list[Any] = []
    if runtime == "blocking":
        backend: Any = SyncScripted(driver.Client.default_backend, scripts)
        target = (driver.Pool if pool else driver.Client)(backend=backend, **settings)
        for _ in range(deliveries):
            try:
                outcomes.append(target.deliver(MESSAGE, "a@example.org", list(recipients)))
            except Exception as exc:
                outcomes.append(exc)
        target.close()
        return outcomes, backend

    backend = AsyncScripted(driver.Client.default_backend, scripts)

    async def main() -> None:
        target = (driver.Pool if pool else driver.Client)(backend=backend, **settings)
        for _ in range(deliveries):
            try:
                outcomes.append(await target.deliver(MESSAGE, "a@example.org", list(recipients)))
            except Exception as exc:
                outcomes.append(exc)
        await target.close()

    if runtime == "asyncio":
        asyncio.run(main())
    else:
        trio.run(main)
    return outcomes, backend


DRIVERS: dict[str, Any] = {"blocking": blocking, "asyncio": lmtp_asyncio, "trio": lmtp_trio}
