"""Gate.defer(): a worker busier than another leaves a waiting connection to it, for
at most DEFER_MAX however often or seldom it looks again (a fake clock: exact).

With the others' counts read from shared memory (Loads), this worker serves 3 and
another 1: the connection is deferred, then taken once DEFER_MAX has passed since the
first deferral, and not deferred again while the others' counts stay the same (that
worker may be stuck). Checks 12 ms apart once restarted the clock at every look (the
bound never came)."""

from __future__ import annotations

import logging

import pytest

from transports import _listen
from transports._config import ServerConfig
from transports._listen import DEFER_MAX, DEFER_STEP, Gate, Loads


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(_listen.time, "monotonic", fake)
    return fake


def busier_gate(monkeypatch: pytest.MonkeyPatch) -> tuple[Gate, Loads]:
    loads = Loads(2)
    loads.join(0)
    monkeypatch.setattr(Loads, "current", loads)
    loads._counts[1] = 1  # the other worker serves one session
    gate = Gate(ServerConfig(socket_path="/nowhere"), logging.getLogger("test"))
    gate.load(3)
    return gate, loads


@pytest.mark.parametrize("every", [DEFER_STEP, 0.012, 0.05])
def test_the_deferral_ends_after_defer_max_however_often_it_looks(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, every: float
) -> None:
    gate, _ = busier_gate(monkeypatch)
    start = clock.now
    while (wait := gate.defer()) > 0:
        assert wait == DEFER_STEP
        clock.now += every
        assert clock.now - start < DEFER_MAX + every + 1e-9, "deferred past DEFER_MAX"
    assert clock.now - start >= DEFER_MAX
    assert gate.defer() == 0.0  # the others did not move: not deferred again


def test_deferring_starts_again_once_the_others_move(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    gate, loads = busier_gate(monkeypatch)
    while gate.defer() > 0:
        clock.now += DEFER_STEP
    loads._counts[1] = 2  # the other worker took a connection: alive after all
    assert gate.defer() == DEFER_STEP


def test_no_deferral_when_not_busier(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> None:
    gate, loads = busier_gate(monkeypatch)
    loads._counts[1] = 5
    assert gate.defer() == 0.0
