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
close it) and it is young enough; otherwise it is closed. A reaper run by the runtime
every idle_timeout / 2 QUITs connections idle for too long. Closing the pool waits
for the deliveries in flight (it takes every slot), then QUITs the idle connections.
A slot can be taken by no delivery: in the blocking runtime a Ctrl-C (Python runs
signal handlers as a call returns) can land just after a slot was taken and before
the code that counts it; so close() takes the slots _CLOSE_POLL seconds at a time and
stops waiting once no connection is busy (being opened, used or closed).

The bookkeeping (idle list, busy count) is guarded by the backend's mutex: a real
lock in the blocking twin, where deliveries run in threads, and no lock at all in the
async runtimes, where it is only touched between awaits. _sync_pool.py is generated
from this file by tools/unasync.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar, Self, Unpack

from lmtp_core import ClientConnection, MailFrom, RcptTo, TransactionResult

from ._sync_client import SyncBackend, SyncConnection
from ._config import Deadline, PoolConfig, PoolSettings
from ._errors import PoolTimeout
from ._message import Message, prepare

__all__ = ["SyncPool"]

log = logging.getLogger("transports")

#: How long close() waits for a slot before it checks whether any delivery holds one.
_CLOSE_POLL = 0.05


class SyncPool:
    """Up to max_connections connections to one LMTP server, shared by concurrent
    deliveries; see PoolSettings for the settings."""

    _backend: ClassVar[SyncBackend]

    def __init__(self, **settings: Unpack[PoolSettings]) -> None:
        name = f"{type(self).__module__}.{type(self).__name__}"
        self.pool_config, self.config = PoolConfig.split(name, settings)
        self._slots = self._backend.semaphore(self.pool_config.max_connections)
        self._mutex = self._backend.mutex()
        self._idle: list[tuple[SyncConnection, float]] = []  # most recently used last
        self._busy = 0  # connections being opened or used
        self._closed = False
        self._reaper: Any = None

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
        """Deliver one message on a pooled connection: what Client.deliver() returns."""
        if self._closed:
            raise ValueError("deliver() on a closed Pool")
        ClientConnection.check_envelope(sender, recipients)
        body = prepare(message)
        deadline = Deadline(self.config.timeouts.total)
        self._start_reaper()
        connection = self._checkout(deadline)
        try:
            return connection.deliver(body, sender, recipients, deadline)
        finally:
            self._checkin(connection)

    def close(self) -> None:
        """Wait for the deliveries in flight, then QUIT every idle connection."""
        if self._closed:
            return
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        taken = 0
        while taken < self.pool_config.max_connections:
            try:
                self._backend.acquire(self._slots, _CLOSE_POLL)
            except TimeoutError:
                if self._busy == 0:  # slots taken by no delivery: see the module comment
                    break
                continue
            taken += 1
        try:
            with self._mutex:
                idle, self._idle = self._idle, []
            for connection, _ in idle:
                connection.close()
        finally:
            for _ in range(taken):
                self._slots.release()

    # ---- checkout and checkin -----------------------------------------------------

    def _checkout(self, deadline: Deadline) -> SyncConnection:
        cfg = self.pool_config
        remaining = deadline.remaining()
        wait = cfg.wait_timeout if remaining is None else min(cfg.wait_timeout, remaining)
        try:
            self._backend.acquire(self._slots, wait)
        except TimeoutError:
            if remaining is not None and remaining < cfg.wait_timeout:
                waited = deadline.describe(0)  # the total deadline passed
            else:
                waited = f"no connection free within {cfg.wait_timeout:g} s"
            raise PoolTimeout(
                f"{waited} waiting for a connection to {self.config.endpoint} "
                f"({cfg.max_connections} in use)"
            ) from None
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
        except BaseException:
            self._slots.release()
            raise

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
            self._slots.release()

    # ---- the reaper ---------------------------------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            interval = self.pool_config.idle_timeout / 2
            self._reaper = self._backend.every(interval, self._reap)

    def _reap(self) -> None:
        """QUIT the connections idle for longer than idle_timeout or too old."""
        cfg, now = self.pool_config, time.monotonic()
        with self._mutex:
            stale = [
                item
                for item in self._idle
                if now - item[1] >= cfg.idle_timeout or now - item[0].opened >= cfg.max_lifetime
            ]
            self._idle = [item for item in self._idle if item not in stale]
        for connection, _ in stale:
            log.debug("[%s] idle for too long: closing", connection.id)
            connection.close()
