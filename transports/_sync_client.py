"""Generated from _async_client.py by tools/unasync.py; do not edit. The blocking twin of:

The client's one delivery flow, for every runtime. Edit this file, not its twin.

How it works. A runtime supplies an AsyncBackend: connect() opens an AsyncStream (UNIX
or TCP, implicit TLS done) and lock() makes a lock of its kind. The rest is here, once:

- AsyncConnection is one connection: the client core, its stream and the pump between
  them. The pump writes data_to_send(), then acts on next_event(): NEED_DATA reads,
  NEED_BODY feeds the next piece of the message, StartTls upgrades the stream; anything
  else goes back to the caller. Every wait is bounded: a write by data_block, a read by
  the deadline of the reply awaited (restarted only when a reply completes, so a server
  that drips bytes cannot stretch a phase), both by the delivery's total. A failed
  write is reported with send_failed() (its bytes never count as sent) when the stream
  knows its last bytes never left, else with abort(); a failed read with abort(). The
  core then settles every recipient; the first failure is kept to raise if the session
  never opened.
- AsyncClient keeps one AsyncConnection behind a lock, so tasks sharing a Client take
  turns on it. Before reuse a non-blocking check makes sure the server has not spoken
  or hung up while the connection was idle.

_sync_client.py is generated from this file by tools/unasync.py, and a test fails when
the two disagree: the blocking driver runs the same flow, with plain calls.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, Self, Unpack

from lmtp_core import (
    Capabilities,
    ClientConnection,
    ConnectionClosed,
    DeliveryPlan,
    MailFrom,
    Phase,
    RcptTo,
    Ready,
    Signal,
    StartTls,
    TransactionResult,
)

from ._config import ClientConfig, ClientSettings, Deadline
from ._errors import WAITING_FOR, LMTPError, Timeout, session_failed, stream_error
from ._message import Body, Message, prepare
from ._net import escape, new_id

__all__ = ["SyncBackend", "SyncClient", "SyncConnection", "SyncStream"]

log = logging.getLogger("transports")


class SyncStream(Protocol):
    """One connection's bytes, as a runtime moves them. Every failure is an OSError:
    TimeoutError when `timeout` seconds passed, ssl.SSLError for TLS."""

    #: TLS is on.
    tls: bool

    def send_all(self, data: bytes, timeout: float) -> None: ...

    def unsent(self) -> bool:
        """After send_all() failed: True when its last bytes are known never to have
        reached the kernel. A stream that cannot tell says False."""
        ...

    def receive_some(self, timeout: float) -> bytes:
        """Some bytes, or b"" at end of file."""
        ...

    def start_tls(
        self,
        context: ssl.SSLContext,
        server_hostname: str | None,
        timeout: float,
        server_side: bool = False,
    ) -> SyncStream: ...

    def idle_clean(self) -> bool:
        """Nothing arrived (no byte, no end of file) since the last read."""
        ...

    def peer(self, listening: str) -> str: ...

    def close(self, forceful: bool = False) -> None:
        """Close; never raises, never waits long."""
        ...


class SyncBackend(Protocol):
    """What a runtime supplies besides its stream."""

    def connect(self, config: ClientConfig, timeout: float) -> SyncStream: ...

    def lock(self) -> Any:
        """A lock of the runtime's kind (with a release() method)."""
        ...

    def acquire(self, lock: Any, timeout: float | None) -> None:
        """Take the lock (or a semaphore's slot), waiting at most `timeout` seconds
        (None: no limit); raises TimeoutError."""
        ...

    def semaphore(self, value: int) -> Any:
        """A semaphore of the runtime's kind (with a release() method)."""
        ...

    def mutex(self) -> contextlib.AbstractContextManager[Any]:
        """Guards bookkeeping shared between deliveries: a lock where they run in
        threads, nothing where they are tasks of one event loop."""
        ...

    def every(self, interval: float, function: Any) -> Any:
        """Run `function()` every `interval` seconds in the background until the
        returned handle's cancel() is called; or None where the runtime runs nothing
        outside its caller's nursery (trio). Must be called from the runtime."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait `seconds` (a Pool's pause before it tries a refused connection again)."""
        ...


class SyncConnection:
    """One LMTP connection: the client core, its stream and the pump between them."""

    def __init__(self, config: ClientConfig, backend: SyncBackend) -> None:
        self.config = config
        self.id = new_id("c")
        self.opened = time.monotonic()
        self._backend = backend
        self._core = config.connection()
        self._stream: SyncStream | None = None
        self._failure: LMTPError | None = None
        self.capabilities: Capabilities | None = None

    @property
    def is_open(self) -> bool:
        return self._stream is not None

    @property
    def reusable(self) -> bool:
        """Open, and the core is ready for another transaction."""
        return self._stream is not None and self._core.reusable

    def idle_clean(self) -> bool:
        """Ready for a transaction, and nothing arrived while the connection was idle."""
        stream = self._stream
        return stream is not None and self._core.reusable and stream.idle_clean()

    def open(self, deadline: Deadline) -> Capabilities:
        """Connect, then greeting, LHLO and any STARTTLS; raises an LMTPError if the
        session could not be opened."""
        cfg = self.config
        limit = cfg.timeouts.connect
        try:
            self._stream = self._backend.connect(cfg, deadline.clip(limit))
        except OSError as exc:
            error = stream_error(exc, "connecting to", cfg.endpoint, deadline.describe(limit))
            log.info("[%s] %s", self.id, error)
            raise error from exc
        log.debug("[%s] connected to %s", self.id, cfg.endpoint)
        try:
            event = self._pump(None, deadline)
        except BaseException:  # cancelled or interrupted: nobody else holds the stream yet
            self.close(quit=False)
            raise
        if isinstance(event, ConnectionClosed):
            self.close()
            raise session_failed(event, self._failure, cfg.endpoint)
        assert isinstance(event, Ready)
        self.capabilities = event.capabilities
        return event.capabilities

    def deliver(
        self,
        body: Body,
        sender: str | MailFrom,
        recipients: Sequence[str | RcptTo],
        deadline: Deadline,
    ) -> TransactionResult:
        """One message on the open connection, in as many transactions as the server's
        recipient limits need (lmtp_core.DeliveryPlan); closed afterwards unless
        reusable. Each recipient's outcome is from its last transaction."""
        core, caps = self._core, self.capabilities
        assert caps is not None
        plan = DeliveryPlan(recipients, self.config.recipients_per_transaction)
        if plan.more or (caps.rcptmax is not None and caps.rcptmax < len(recipients)):
            body.keep()  # it will be sent more than once
        first: Body | None = body
        try:
            while (batch := plan.next_batch(caps.rcptmax)) is not None:
                if first is None and not self.idle_clean():  # a further transaction
                    log.info("[%s] the server spoke or hung up between transactions", self.id)
                    plan.abandon()
                    break
                current = first or body.replay()
                first = None
                if current is None:  # a one-shot message: what is left stays as it is
                    plan.abandon()
                    break
                core.start_transaction(
                    sender, batch, size=current.size, eight_bit=current.eight_bit, nul=current.nul
                )
                event = self._pump(current, deadline)
                assert isinstance(event, TransactionResult)
                plan.record(event)
                if not core.reusable:
                    plan.abandon()
        finally:
            body.close()
            if not core.reusable:
                self.close()
        return plan.result()

    def close(self, quit: bool = True, deadline: Deadline | None = None) -> None:
        """QUIT (when idle and `quit`; its reply awaited within `deadline` too), then
        close."""
        if self._stream is None:
            return
        forceful = True  # unless the QUIT below completes
        try:
            if quit and self._core.reusable:
                self._core.quit()
                self._pump(None, deadline or Deadline())
            forceful = self._failure is not None or not quit
        finally:  # cancelled or interrupted during the QUIT too: closed all the same
            stream, self._stream = self._stream, None
            if stream is not None:
                stream.close(forceful=forceful)

    def _pump(self, body: Body | None, deadline: Deadline) -> object:
        core, timeouts = self._core, self.config.timeouts
        seen, until, phase = -1, 0.0, Phase.GREETING
        while True:
            stream = self._stream
            assert stream is not None
            event = core.next_event()
            for side, line in core.take_trace():  # after next_event(): it parses the replies
                log.debug("[%s] %s: %s", self.id, side, escape(line))
            data = core.data_to_send()
            if data:
                limit, started = timeouts.data_block, False
                try:
                    seconds = deadline.clip(limit)  # raises once the total has passed
                    started = True
                    stream.send_all(data, seconds)
                except OSError as exc:
                    reason = self._failed(exc, "writing to", deadline.describe(limit))
                    unsent = not started or stream.unsent()
                    core.send_failed(reason) if unsent else core.abort(reason)
                    if isinstance(event, Signal | StartTls):  # settled now: ask again
                        continue
            if event is Signal.NEED_DATA:
                if core.replies_received != seen:  # a new reply is awaited: a new deadline
                    seen, phase = core.replies_received, core.phase
                    until = time.monotonic() + timeouts.for_phase(phase)
                try:
                    data = stream.receive_some(deadline.until(until))
                except OSError as exc:
                    waiting = f"waiting for {WAITING_FOR[phase]} from"
                    core.abort(
                        self._failed(exc, waiting, deadline.describe(timeouts.for_phase(phase)))
                    )
                    continue
                core.receive_data(data) if data else core.receive_eof()
            elif event is Signal.NEED_BODY:
                assert body is not None
                piece = body.next_piece()
                core.end_body() if piece is None else core.send_body(piece)
            elif isinstance(event, StartTls):
                cfg, limit = self.config, timeouts.starttls
                assert cfg.ssl_context is not None
                try:
                    self._stream = stream.start_tls(
                        cfg.ssl_context, cfg.server_hostname, deadline.clip(limit)
                    )
                except OSError as exc:
                    core.abort(
                        self._failed(exc, "in the TLS handshake with", deadline.describe(limit))
                    )
                    continue
                core.tls_established()
            else:
                if isinstance(event, ConnectionClosed):
                    log.debug("[%s] closed: %s", self.id, escape(event.reason))
                return event

    def _failed(self, exc: OSError, doing: str, timed: str) -> str:
        """Keep the first failure (raised if the session never opened); its text."""
        error = stream_error(exc, doing, self.config.endpoint, timed)
        error.__cause__ = exc
        if self._failure is None:
            self._failure = error
        log.info("[%s] %s", self.id, error)
        return str(error)


class SyncClient:
    """One LMTP connection, opened on the first deliver() and reused after it.

    Safe to share between tasks: concurrent deliver() calls take turns on the one
    connection, and each gets its own result."""

    #: The runtime's network backend, used when none is passed as `backend`.
    default_backend: ClassVar[SyncBackend]

    def __init__(
        self, *, backend: SyncBackend | None = None, **settings: Unpack[ClientSettings]
    ) -> None:
        name = f"{type(self).__module__}.{type(self).__name__}"
        self.config = ClientConfig.from_settings(name, settings)
        self._backend = self.default_backend if backend is None else backend
        self._lock = self._backend.lock()
        self._connection: SyncConnection | None = None
        self._deadline = Deadline()  # the last delivery's, which bounds the QUIT too

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def deliver(
        self, message: Message, sender: str | MailFrom, recipients: Sequence[str | RcptTo]
    ) -> TransactionResult:
        """Deliver one message; one outcome per recipient, in order."""
        ClientConnection.check_envelope(sender, recipients)
        body = prepare(message)
        deadline = self._deadline = Deadline(self.config.timeouts.total)
        self._take_turn(deadline)
        try:
            connection = self._connection
            if connection is not None and not connection.idle_clean():
                log.info("[%s] the server spoke or hung up while idle: not reused", connection.id)
                connection.close(quit=False)
                connection = self._connection = None
            if connection is None:
                connection = SyncConnection(self.config, self._backend)
                connection.open(deadline)
                self._connection = connection
            try:
                return connection.deliver(body, sender, recipients, deadline)
            finally:
                if not connection.is_open:
                    self._connection = None
        finally:
            self._lock.release()

    def close(self) -> None:
        """QUIT (if the connection is idle) and close. The wait for QUIT's reply is
        bounded by the last delivery's total deadline as well as by `command`, so
        deliver() (connect, deliver, QUIT) never outlasts `total`."""
        self._backend.acquire(self._lock, None)
        try:
            connection, self._connection = self._connection, None
            if connection is not None:
                connection.close(deadline=self._deadline)
        finally:
            self._lock.release()

    def _take_turn(self, deadline: Deadline) -> None:
        """Wait for the connection, within the delivery's total deadline."""
        try:
            self._backend.acquire(self._lock, deadline.remaining())
        except TimeoutError:
            raise Timeout(
                f"{deadline.describe(0)} waiting for a turn on the connection to "
                f"{self.config.endpoint}"
            ) from None
