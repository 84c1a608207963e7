"""The asyncio Server's handler threads (transports.asyncio._HandlerThreads): up to
`limit` calls run at once, each in its own thread, and never more threads than that.

The calls wait on a barrier of `limit` parties: they all pass only if `limit` threads
run them at once (with the idle count off by one per thread, half of them did, and the
rest queued behind: a Maildir's fsync at half speed)."""

from __future__ import annotations

import threading

from transports.asyncio import _HandlerThreads

WAIT = 10.0


def test_as_many_calls_run_at_once_as_the_limit() -> None:
    limit = 4
    threads = _HandlerThreads(limit)
    barrier = threading.Barrier(limit, timeout=WAIT)
    try:
        futures = [threads.submit(barrier.wait) for _ in range(limit)]
        assert sorted(f.result(WAIT) for f in futures) == list(range(limit))
    finally:
        threads.shutdown()


def test_never_more_threads_than_the_limit() -> None:
    threads = _HandlerThreads(2)
    try:
        futures = [threads.submit(threading.get_ident) for _ in range(50)]
        assert len({f.result(WAIT) for f in futures}) <= 2
    finally:
        threads.shutdown()


def test_a_call_past_the_limit_waits_for_a_free_thread() -> None:
    threads = _HandlerThreads(1)
    gate = threading.Event()
    try:
        first = threads.submit(gate.wait, WAIT)
        second = threads.submit(lambda: "second")
        assert not second.done()
        gate.set()
        assert first.result(WAIT) is True
        assert second.result(WAIT) == "second"
    finally:
        threads.shutdown()
