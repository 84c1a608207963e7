"""Generated from _async_pool.py by tools/unasync.py; do not edit. The blocking twin of:

A pool of LMTP connections to one server, for every runtime. Edit this file, not its twin.

How it works. A semaphore of max_connections slots bounds the connections open at once:
a delivery takes a slot (waiting at most wait_timeout, and never past its total
deadline), then the most recently used idle connection that is still fresh (younger
than max_lifetime, idle for less than idle_timeout, and silent while idle: a server
that hung up or spoke is noticed before reuse), or opens a new one. An idle connection
holds no slot, but one is opened only when none is idle, so open connections never
exceed the slots. After the delivery the connection goes back to the idle list only
if the core says it is reusable (a failure, an UNKNOWN outcome, a 421 or a timeout
close it) and it is young enough; otherwise it is closed. Every idle_timeout / 2 the
connections idle for too long are QUIT: by a reaper the runtime runs in the background
(asyncio: a task, blocking: a thread), and at the start of a delivery when a round is
due (trio has no background task without the caller's nursery: this is its reaper).
Closing the pool waits for the deliveries in flight (it takes every slot), then QUITs
the idle connections; cancelled or interrupted, it (and the reaper) closes those left
at once, without QUIT.
A slot can be taken by no delivery: in the blocking runtime a Ctrl-C (Python runs
signal handlers as a call returns) can land just after a slot was taken and before
the code that counts it; so close() takes the slots _CLOSE_POLL seconds at a time and
stops waiting once no connection is busy (being opened, used or closed).

When the server turns connections away. A failure to open a session that may pass
(_errors.try_again_later(): a 421, the server full or stopping; a connection refused,
reset or dropped, a UNIX path gone, a full listen queue, a timeout; a session ended by
anything but a refusal of the server's) does not fail the delivery: it gives its slot
up, sleeps (the backend's sleep()) and queues for a slot again. The pauses double from
_BACKOFF[0] to at most _BACKOFF[1] seconds, each drawn between half and all of that
(jitter: refused together, deliveries do not all come back together). Attempts stop
when the next pause would end past the bound, the total deadline or, without one,
wait_timeout after deliver() began; the last attempt's error is raised (or its result
returned). A 421 as the session opens also tells how many connections the server
takes: the pool's other open connections (at least one). While more slots than that
are in use, the refused delivery withholds its slot (keeps it from every delivery: the
pool is one smaller) instead of giving it back. Withheld slots come back one at a time,
each once _GROW_PAUSE has passed since the last 421 or the last one given back, checked
when a slot is taken or given back (no timer); close() counts them as taken. A message
is sent again (the same pauses and bound) only when the server cannot have stored it
for anyone (_again(): every recipient TEMPORARY, with no reply, which the core gives
only when the connection was lost before the end of data was written, or with a 421 to
MAIL or RCPT) and it can be read again from its start (bytes, a seekable file). Once
the end of data was written the recipients are UNKNOWN: returned as they are, never
sent again.

The bookkeeping (idle list, busy count) is guarded by the backend's mutex: a real
lock in the blocking twin, where deliveries run in threads, and no lock at all in the
async runtimes, where it is only touched between awaits. _sync_pool.py is generated
from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Self, Unpack

from lmtp_core import ClientConnection, MailFrom, RcptTo, Stage, Status, TransactionResult

from ._sync_client import SyncBackend, SyncConnection
from ._config import Deadline, PoolConfig, PoolSettings
from ._errors import LMTPError, PoolTimeout, SessionError, try_again_later
from ._message import Body, Message, prepare

__all__ = ["SyncPool"]

log = logging.getLogger("transports")

#: How long close() waits for a slot before it checks whether any delivery holds one.
_CLOSE_POLL = 0.05
#: Seconds between attempts while the server turns connections away: the first pause,
#: the longest (each twice the one before, then drawn between half and all of it).
_BACKOFF = (0.05, 1.0)
#: Seconds after a 421 as a session opened (or a slot given back) before one withheld
#: slot is given back: the pool grows by one connection a second at most.
_GROW_PAUSE = 1.0


class SyncPool:
    """Up to max_connections connections to one LMTP server, shared by concurrent
    deliveries; see PoolSettings for the settings."""

    #: The runtime's network backend, used when none is passed as `backend`.
    default_backend: ClassVar[SyncBackend]

    def __init__(
        self, *, backend: SyncBackend | None = None, **settings: Unpack[PoolSettings]
    ) -> None:
        name = f"{type(self).__module__}.{type(self).__name__}"
        self.pool_config, self.config = PoolConfig.split(name, settings)
        self._backend = self.default_backend if backend is None else backend
        self._slots = self._backend.semaphore(self.pool_config.max_connections)
        self._mutex = self._backend.mutex()
        self._idle: list[tuple[SyncConnection, float]] = []  # most recently used last
        self._busy = 0  # connections being opened or used
        self._closed = False
        self._reaper: Any = None  # the runtime's background reaper, if it runs one
        self._reaper_asked = False
        self._next_reap = time.monotonic() + self.pool_config.idle_timeout / 2
        self._withheld = 0  # slots kept out of use after a 421 as a session opened
        self._grow_at = 0.0  # when the next withheld slot may be given back

    @property
    def open(self) -> int:
        """Connections open now, idle or busy (being opened, or delivering)."""
        return len(self._idle) + self._busy

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def busy(self) -> int:
        return self._busy

    def __enter__(self) -> Self:
        self._start_reaper()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def deliver(
        self, message: Message, sender: str | MailFrom, recipients: Sequence[str | RcptTo]
    ) -> TransactionResult:
        """Deliver one message on a pooled connection: what Client.deliver() returns.
        While the server turns connections away it waits and tries again, within the
        total deadline or else wait_timeout (see the module comment)."""
        if self._closed:
            raise ValueError("deliver() on a closed Pool")
        ClientConnection.check_envelope(sender, recipients)
        body = prepare(message)
        deadline, started = Deadline(self.config.timeouts.total), time.monotonic()
        self._start_reaper()
        if self._reaper is None:  # no reaper in the background (trio): this is it
            self._reap_due(deadline)
        retry: _Retry | None = None
        while True:
            if not self._take_slot(deadline, retry):
                assert retry is not None
                return retry.outcome()  # no slot came before the bound
            if self._closing():  # close() gave back the slots it took: none is for us
                self._slots.release()
                if retry is not None:
                    return retry.outcome()
                raise PoolTimeout(
                    f"the pool was closed while this delivery waited for a connection "
                    f"to {self.config.endpoint}"
                )
            connection = self._checkout(deadline)
            if isinstance(connection, LMTPError):  # turned away: try again later
                retry = retry or _Retry(deadline, self.pool_config.wait_timeout, started)
                if self._pause(retry, connection):
                    continue
                raise connection
            try:
                result = connection.deliver(body, sender, recipients, deadline)
            finally:
                self._checkin(connection)
            again = _again(body, result)
            if again is None:
                return result
            retry = retry or _Retry(deadline, self.pool_config.wait_timeout, started)
            if not self._pause(retry, result):
                return result
            log.info("[%s] lost before the server could store it: sending again", connection.id)
            body = again

    def _closing(self) -> bool:
        """close() was called (a method: mypy would take an attribute read before an
        for the same value after it)."""
        return self._closed

    def _pause(self, retry: _Retry, outcome: LMTPError | TransactionResult) -> bool:
        """The pause before another attempt; False when there is to be none (past the
        bound, or the pool closed before or during the pause)."""
        return not self._closed and retry.pause(self._backend, outcome) and not self._closed

    def close(self) -> None:
        """Wait for the deliveries in flight, then QUIT every idle connection.
        Deliveries pausing before another attempt make none: they end with what their
        last attempt got."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        taken, idle = 0, []
        try:
            while taken + self._withheld < self.pool_config.max_connections:
                try:
                    self._backend.acquire(self._slots, _CLOSE_POLL)
                except TimeoutError:
                    if self._busy == 0:  # slots taken by no delivery: see the module comment
                        break
                    continue
                taken += 1
            with self._mutex:
                idle, self._idle = self._idle, []
            while idle:
                idle.pop()[0].close()
        finally:  # cancelled or interrupted: what is left is closed at once, without QUIT
            with self._mutex:
                idle, self._idle = idle + self._idle, []
            for _ in range(taken):  # before any await, which may be cancelled again
                self._slots.release()
            _close_at_once(idle)

    # ---- checkout and checkin -----------------------------------------------------

    def _take_slot(self, deadline: Deadline, retry: _Retry | None) -> bool:
        """Take a slot, waiting at most wait_timeout and never past the total deadline
        (else PoolTimeout) nor, when trying again, past the retry's bound (else False)."""
        cfg = self.pool_config
        remaining = deadline.remaining()
        wait = cfg.wait_timeout if remaining is None else min(cfg.wait_timeout, remaining)
        if retry is not None:
            wait = min(wait, retry.left())
        try:
            self._backend.acquire(self._slots, wait)
        except TimeoutError:
            if retry is not None:
                return False
            if remaining is not None and remaining < cfg.wait_timeout:
                waited = deadline.describe(0)  # the total deadline passed
            else:
                waited = f"no connection free within {cfg.wait_timeout:g} s"
            raise PoolTimeout(
                f"{waited} waiting for a connection to {self.config.endpoint} "
                f"({cfg.max_connections} in use)"
            ) from None
        if self._withheld:
            self._grow()
        return True

    def _checkout(self, deadline: Deadline) -> SyncConnection | LMTPError:
        """With a slot taken: a fresh idle connection, or a new one. A failure to open
        one that may pass is returned, its slot given back (or withheld after a 421);
        anything else gives the slot back and is raised."""
        cfg = self.pool_config
        try:
            while True:
                with self._mutex:
                    self._busy += 1
                    connection = self._idle.pop()[0] if self._idle else None
                if connection is None:
                    break
                young = time.monotonic() - connection.opened < cfg.max_lifetime
                clean = connection.idle_clean()
                if young and clean:
                    return connection
                if not clean:
                    log.info(
                        "[%s] the server spoke or hung up while idle: not reused", connection.id
                    )
                try:
                    connection.close(quit=clean)
                finally:
                    with self._mutex:
                        self._busy -= 1
            connection = SyncConnection(self.config, self._backend)
            try:
                connection.open(deadline)
            except BaseException:
                with self._mutex:
                    self._busy -= 1
                raise
            return connection
        except LMTPError as exc:
            later = try_again_later(exc)
            if not (later and self._withhold(exc)):
                self._slots.release()
            if not later:
                raise
            return exc
        except BaseException:
            self._slots.release()
            raise

    def _withhold(self, exc: LMTPError) -> bool:
        """After a 421 as the session opened: True when this delivery's slot is to be
        kept out of use, as more slots are in use than the server takes connections (the
        pool's other open connections, at least one)."""
        if not (isinstance(exc, SessionError) and exc.reply is not None and exc.reply.code == 421):
            return False
        size = self.pool_config.max_connections
        with self._mutex:
            self._grow_at = time.monotonic() + _GROW_PAUSE
            if size - self._withheld <= max(len(self._idle) + self._busy, 1):
                return False
            self._withheld += 1
            size -= self._withheld
        log.info(
            "%s turned a connection away (421): %d at most for now", self.config.endpoint, size
        )
        return True

    def _grow(self) -> None:
        """Give one withheld slot back once _GROW_PAUSE has passed since the last 421 as
        a session opened, or since the last slot given back."""
        now = time.monotonic()
        with self._mutex:
            if not self._withheld or now < self._grow_at:
                return
            self._withheld -= 1
            self._grow_at = now + _GROW_PAUSE
        self._slots.release()

    def _checkin(self, connection: SyncConnection) -> None:
        try:
            now = time.monotonic()
            # Reusable now; whether it stays silent while idle is checked at checkout.
            keep = not self._closed and connection.reusable
            keep = keep and now - connection.opened < self.pool_config.max_lifetime
            if not keep:
                try:
                    connection.close(quit=connection.is_open and not self._closed)
                finally:
                    with self._mutex:
                        self._busy -= 1
            else:
                with self._mutex:
                    self._busy -= 1
                    self._idle.append((connection, now))
        finally:
            if self._withheld:
                self._grow()
            self._slots.release()

    # ---- the reaper ---------------------------------------------------------------

    def _start_reaper(self) -> None:
        if not self._reaper_asked and not self._closed:
            self._reaper_asked = True
            interval = self.pool_config.idle_timeout / 2
            self._reaper = self._backend.every(interval, self._reap)

    def _reap_due(self, deadline: Deadline) -> None:
        """Reap at a delivery's start when a reaper's round is due, within the
        delivery's deadline: where the runtime runs no reaper (trio), this is it."""
        now = time.monotonic()
        if now >= self._next_reap:
            self._next_reap = now + self.pool_config.idle_timeout / 2
            self._reap(deadline)

    def _reap(self, deadline: Deadline | None = None) -> None:
        """QUIT the connections idle for longer than idle_timeout or too old (each QUIT
        bounded by `command` and by `deadline`)."""
        cfg, now = self.pool_config, time.monotonic()
        with self._mutex:
            stale = [
                item
                for item in self._idle
                if now - item[1] >= cfg.idle_timeout or now - item[0].opened >= cfg.max_lifetime
            ]
            self._idle = [item for item in self._idle if item not in stale]
        try:
            while stale:
                connection = stale.pop()[0]
                log.debug("[%s] idle for too long: closing", connection.id)
                connection.close(deadline=deadline)
        finally:  # cancelled (the pool is closing): the rest at once
            _close_at_once(stale)


def _close_at_once(connections: list[tuple[SyncConnection, float]]) -> None:
    """Close each without QUIT, every one even if closing one raises: under trio a
    close inside a cancelled scope closes and then raises Cancelled again. The first
    such exception is raised once all are closed."""
    error: BaseException | None = None
    for connection, _ in connections:
        try:
            connection.close(quit=False)
        except BaseException as exc:
            error = error or exc
    if error is not None:
        raise error


class _Retry:
    """One delivery's further attempts: the pause before the next one, the bound no
    pause may end past, and the last attempt's outcome, which stands when they stop."""

    __slots__ = ("_broken", "_pause", "end", "last")

    def __init__(self, deadline: Deadline, wait_timeout: float, started: float) -> None:
        remaining = deadline.remaining()
        self.end = started + wait_timeout if remaining is None else time.monotonic() + remaining
        self._pause = _BACKOFF[0]
        self._broken = False  # a protocol error was tried again already
        self.last: LMTPError | TransactionResult | None = None

    def left(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def pause(self, backend: SyncBackend, outcome: LMTPError | TransactionResult) -> bool:
        """Sleep before the next attempt; False at once when it would end past the bound,
        or on a second protocol error (a server that breaks the protocol twice is
        broken, not busy: once may be a 421 the core took for a reply too many)."""
        self.last = outcome
        if isinstance(outcome, SessionError) and outcome.error is not None:
            if self._broken:
                return False
            self._broken = True
        pause = random.uniform(self._pause / 2, self._pause)
        if time.monotonic() + pause >= self.end:
            return False
        self._pause = min(self._pause * 2, _BACKOFF[1])
        backend.sleep(pause)
        return True

    def outcome(self) -> TransactionResult:
        """The last attempt's result, or its error raised."""
        last = self.last
        if isinstance(last, LMTPError):
            raise last
        assert last is not None
        return last


def _again(body: Body, result: TransactionResult) -> Body | None:
    """The message once more, for another connection, when the server cannot have
    stored it for anyone: every recipient TEMPORARY with no reply (the core says UNKNOWN
    once the end of data was written) or with a 421 to MAIL or RCPT (the transaction
    refused for now). None for a one-shot source, which may be partly read (its spool,
    if any, is closed by now)."""
    for outcome in result.recipients:
        reply = outcome.reply
        if outcome.status is not Status.TEMPORARY or (
            reply is not None and (reply.code != 421 or outcome.stage is not Stage.RCPT)
        ):
            return None
    if body.spool is not None or body.again is None:
        return None
    return body.replay()
