"""Ctrl-C in the blocking Client and Pool. Python runs a signal handler when a call returns, so
a KeyboardInterrupt can land just after deliver() took its turn on the connection
(the lock) and before the try that gives the turn back. Leaving the `with` block then
calls close(), in the same thread, which takes the turn again: with a plain lock it
waited forever (seen once as a 30 s hang of `lmtp send` after Ctrl-C under load)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from transports import blocking


def test_an_interrupt_just_after_the_turn_was_taken_does_not_hang_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = blocking.Client.default_backend
    real_acquire = backend.acquire

    def acquire_then_interrupted(lock: Any, timeout: float | None) -> None:
        real_acquire(lock, timeout)
        raise KeyboardInterrupt  # as if SIGINT came the moment acquire() returned

    client = blocking.Client(socket_path=str(tmp_path / "nobody.sock"))
    monkeypatch.setattr(backend, "acquire", acquire_then_interrupted)
    seen: list[BaseException] = []

    def deliver_then_leave() -> None:  # what `with Client(...) as client:` does
        try:
            client.deliver(b"Subject: x\r\n\r\nx\r\n", "a@example.org", ["b@example.org"])
        except KeyboardInterrupt as exc:
            seen.append(exc)
            monkeypatch.setattr(backend, "acquire", real_acquire)
            client.close()  # in the same thread, on the way out

    worker = threading.Thread(target=deliver_then_leave, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "close() waited for a turn its own thread still held"
    assert len(seen) == 1


def test_an_interrupt_just_after_a_pool_slot_was_taken_does_not_hang_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Pool's twin of the above: the slot taken just before the interrupt is held
    by no delivery, and close() (which waits for the deliveries in flight by taking
    every slot) used to wait for it forever."""
    backend = blocking.Pool.default_backend
    real_acquire = backend.acquire

    def acquire_then_interrupted(lock: Any, timeout: float | None) -> None:
        real_acquire(lock, timeout)
        raise KeyboardInterrupt

    pool = blocking.Pool(socket_path=str(tmp_path / "nobody.sock"), max_connections=2)
    monkeypatch.setattr(backend, "acquire", acquire_then_interrupted)
    seen: list[BaseException] = []

    def deliver_then_leave() -> None:  # what `with Pool(...) as pool:` does
        try:
            pool.deliver(b"Subject: x\r\n\r\nx\r\n", "a@example.org", ["b@example.org"])
        except KeyboardInterrupt as exc:
            seen.append(exc)
            monkeypatch.setattr(backend, "acquire", real_acquire)
            pool.close()

    worker = threading.Thread(target=deliver_then_leave, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "close() waited for a slot that no delivery held"
    assert len(seen) == 1
    assert pool.open == 0
