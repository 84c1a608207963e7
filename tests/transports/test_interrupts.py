"""Ctrl-C in the blocking client. Python runs a signal handler when a call returns, so
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
    backend = blocking.Client._backend
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
