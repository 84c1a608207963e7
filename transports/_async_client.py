"""What the asyncio and trio clients share: the control flow of a delivery.

How it works: AsyncClient holds the settings, the client core and the deadline, and
runs deliver() and close() the same way in both runtimes: check the envelope before
connecting, drop a kept connection the server spoke on or closed while idle, connect
when needed, start the transaction, pump until its result, and drop a connection that
ended. Each runtime's Client supplies only the I/O: _stale(), _connect(), _pump() and
_drop().
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Self

from lmtp_core import ClientConnection, RcptTo, TransactionResult

from ._config import ClientConfig, Deadline
from ._message import Message, prepare

__all__ = ["AsyncClient"]


class AsyncClient:
    """One LMTP connection, opened on the first deliver() and reused after it."""

    def __init__(self, **settings: Any) -> None:
        self.config = ClientConfig.create(**settings)
        self._conn: ClientConnection | None = None
        self._failure: BaseException | None = None
        self._deadline = Deadline()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def deliver(
        self, message: Message, sender: str, recipients: Sequence[str | RcptTo]
    ) -> TransactionResult:
        """Deliver one message; one outcome per recipient, in order."""
        ClientConnection.check_envelope(sender, recipients)
        body = prepare(message, allow_async=True)
        self._deadline = Deadline(self.config.timeouts.total)
        if self._stale():
            await self._drop()  # the server spoke or hung up while we were idle
        if self._conn is None or not self._conn.reusable:
            await self._connect()
        assert self._conn is not None
        self._conn.start_transaction(sender, recipients, size=body.size, eight_bit=body.eight_bit)
        try:
            event = await self._pump(body.pieces)
        finally:
            if not self._conn.reusable:
                await self._drop()
        assert isinstance(event, TransactionResult)
        return event

    async def close(self) -> None:
        """QUIT (if the connection is idle) and close."""
        if self._conn is not None and self._conn.reusable:
            self._conn.quit()
            with contextlib.suppress(Exception):
                await self._pump(None)
        await self._drop()

    # ---- what each runtime supplies ---------------------------------------------

    def _stale(self) -> bool:
        """True when a kept connection got bytes or an end of file while idle."""
        raise NotImplementedError

    async def _connect(self) -> None:
        raise NotImplementedError

    async def _pump(self, body: Iterator[bytes] | AsyncIterator[bytes] | None) -> object:
        raise NotImplementedError

    async def _drop(self) -> None:
        raise NotImplementedError
