"""transports/_errors.py, try_again_later(), as a Pool meets it: a failure to connect
that will not pass by waiting (a TLS failure, a socket error such as EACCES) fails the
delivery at once, with the runtime-independent message, and is not tried again; one
that may pass (a refusal) is. The peer is the scripted backend, whose connect raises
what the script says."""

from __future__ import annotations

import asyncio
import errno
import os
import ssl
from typing import Any

import pytest
import trio

from lmtp_core import Status
from transports import ConnectError, TLSError

from .runtimes import RUNTIMES
from .scripted import DRIVERS, PAUSE, REFUSE, AsyncScripted, SyncScripted, dialogue

MESSAGE = b"Subject: errors\r\n\r\nbody\r\n"


class _Raising:
    """A script whose first step is an exception makes that connect raise it."""

    pauses: list[float]

    def _connect(self) -> Any:
        steps = self._scripts[0]  # type: ignore[attr-defined]
        if steps and isinstance(steps[0], BaseException):
            self._scripts.pop(0)  # type: ignore[attr-defined]
            raise steps[0]
        return super()._connect()  # type: ignore[misc]


class SyncRaising(_Raising, SyncScripted):
    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


class AsyncRaising(_Raising, AsyncScripted):
    async def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)


def pool_deliver(runtime: str, scripts: list[list[Any]]) -> tuple[Any, Any]:
    driver = DRIVERS[runtime]
    outcome: Any = None
    if runtime == "blocking":
        backend: Any = SyncRaising(driver.Pool.default_backend, scripts)
        backend.pauses = []
        with driver.Pool(backend=backend, socket_path="/scripted") as pool:
            try:
                outcome = pool.deliver(MESSAGE, "a@x.org", ["b@x.org"])
            except Exception as exc:
                outcome = exc
        return outcome, backend
    backend = AsyncRaising(driver.Pool.default_backend, scripts)
    backend.pauses = []

    async def main() -> None:
        nonlocal outcome
        async with driver.Pool(backend=backend, socket_path="/scripted") as pool:
            try:
                outcome = await pool.deliver(MESSAGE, "a@x.org", ["b@x.org"])
            except Exception as exc:
                outcome = exc

    asyncio.run(main()) if runtime == "asyncio" else trio.run(main)
    return outcome, backend


def handshake_failure() -> ssl.SSLError:
    """A real TLS failure, made by the ssl module: a handshake answered in plain text."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(incoming, outgoing, server_hostname="mx")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    incoming.write(b"220 mx ESMTP not TLS at all\r\n" * 4)
    with pytest.raises(ssl.SSLError) as caught:
        tls.do_handshake()
    return caught.value


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tls_failure_is_not_tried_again(runtime: str) -> None:
    failure = handshake_failure()
    error, backend = pool_deliver(runtime, [[failure], dialogue()])
    assert isinstance(error, TLSError)
    assert str(error) == f"TLS failed connecting to unix:/scripted: {failure.reason}"
    assert error.__cause__ is failure
    assert backend.pauses == [] and backend.plays == []  # never tried again


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_tls_error_made_in_python_is_a_tls_error(runtime: str) -> None:
    # Only the ssl C module's errors have .reason: one made in Python (a backend's)
    # escaped deliver() as AttributeError.
    failure = ssl.SSLError("scripted: the handshake failed")
    error, _ = pool_deliver(runtime, [[failure], dialogue()])
    assert isinstance(error, TLSError)
    assert "scripted: the handshake failed" in str(error)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("code", [errno.EACCES, errno.ENOTSOCK])
def test_a_socket_error_that_will_not_pass_is_not_tried_again(runtime: str, code: int) -> None:
    failure = OSError(code, "scripted")
    error, backend = pool_deliver(runtime, [[failure], dialogue()])
    assert isinstance(error, ConnectError) and not isinstance(error, TLSError)
    assert str(error) == f"cannot connect to unix:/scripted: {os.strerror(code)}"
    assert backend.pauses == [] and backend.plays == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_refusal_is_tried_again(runtime: str) -> None:
    result, backend = pool_deliver(runtime, [[REFUSE], dialogue()])
    assert [r.status for r in result.recipients] == [Status.DELIVERED]
    assert len(backend.pauses) == 1 and len(backend.plays) == 1


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_greeting_that_does_not_come_in_time_is_tried_again(runtime: str) -> None:
    result, backend = pool_deliver(runtime, [[PAUSE], dialogue()])
    assert [r.status for r in result.recipients] == [Status.DELIVERED]
    assert len(backend.pauses) == 1
    assert len(backend.plays) == 2 and backend.plays[0].closed
