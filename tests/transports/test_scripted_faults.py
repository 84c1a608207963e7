"""Faults at exact points of a delivery, from a scripted peer (scripted.py): no sockets,
no threads, no clocks, in every runtime. What each fault must give is the driver's
contract: an error that names what failed when the session never opened; otherwise one
outcome per recipient, UNKNOWN only once the end of the data may have reached the
server, and never DELIVERED without its reply."""

from __future__ import annotations

import pytest

from lmtp_core import Stage, Status
from transports import ConnectError, SessionError, Timeout

from .runtimes import RUNTIMES
from .scripted import (
    END_MAY_HAVE_LEFT,
    EOF,
    GREETING,
    LHLO,
    PAUSE,
    REFUSE,
    RESET,
    SEND_FAILS,
    deliver,
    dialogue,
)

pytestmark = pytest.mark.parametrize("runtime", RUNTIMES)


def statuses(result: object) -> list[Status]:
    return [r.status for r in result.recipients]  # type: ignore[attr-defined]


def test_the_scripted_peer_takes_a_whole_delivery(runtime: str) -> None:
    (result,), backend = deliver(runtime, [dialogue(recipients=2)], ["b@x.org", "c@x.org"])
    assert statuses(result) == [Status.DELIVERED, Status.DELIVERED]
    sent = b"".join(backend.sent)
    assert sent.startswith(b"LHLO ")
    assert b"RCPT TO:<b@x.org>\r\n" in sent
    assert b"RCPT TO:<c@x.org>\r\n" in sent
    assert b"\r\nbody\r\n.\r\n" in sent


def test_a_refused_connection_is_a_connect_error(runtime: str) -> None:
    (error,), _ = deliver(runtime, [[REFUSE]])
    assert isinstance(error, ConnectError)
    assert "refused" in str(error).lower()


@pytest.mark.parametrize("fault", [PAUSE, RESET, EOF])
def test_no_greeting_raises_and_names_it(runtime: str, fault: str) -> None:
    (error,), _ = deliver(runtime, [[fault]])
    expected = Timeout if fault == PAUSE else (ConnectError, SessionError)
    assert isinstance(error, expected), error
    if fault == PAUSE:
        assert "greeting" in str(error)


def test_a_421_greeting_is_a_session_error(runtime: str) -> None:
    (error,), _ = deliver(runtime, [[b"421 4.3.2 too busy\r\n"]])
    assert isinstance(error, SessionError)
    assert "421" in str(error)


@pytest.mark.parametrize("fault", [PAUSE, RESET, EOF])
def test_a_fault_before_the_data_leaves_everyone_temporary(runtime: str, fault: str) -> None:
    script = [GREETING, LHLO, b"250 2.1.0 ok\r\n", fault]
    (result,), _ = deliver(runtime, [script], ["b@x.org", "c@x.org"])
    assert statuses(result) == [Status.TEMPORARY, Status.TEMPORARY]


@pytest.mark.parametrize("fault", [PAUSE, RESET, EOF])
def test_a_fault_after_the_data_is_unknown_for_those_not_answered(runtime: str, fault: str) -> None:
    script = dialogue(b"250 2.0.0 first stored\r\n", fault, recipients=2, quit=False)
    (result,), _ = deliver(runtime, [script], ["b@x.org", "c@x.org"])
    assert statuses(result) == [Status.DELIVERED, Status.UNKNOWN]
    assert result.recipients[1].stage is Stage.DATA


def test_a_send_that_fails_before_the_data_went_out_is_temporary(runtime: str) -> None:
    script = [GREETING, LHLO, SEND_FAILS]
    (result,), backend = deliver(runtime, [script], ["b@x.org"])
    assert statuses(result) == [Status.TEMPORARY]
    assert b"MAIL FROM" not in b"".join(backend.sent)


def test_a_connection_that_failed_is_not_reused(runtime: str) -> None:
    first = dialogue(b"250 2.0.0 stored\r\n", RESET, recipients=2, quit=False)
    (one, two), backend = deliver(
        runtime, [first, dialogue(recipients=2)], ["b@x.org", "c@x.org"], deliveries=2
    )
    assert statuses(one) == [Status.DELIVERED, Status.UNKNOWN]
    assert statuses(two) == [Status.DELIVERED, Status.DELIVERED]
    assert len(backend.plays) == 2
    assert backend.plays[0].closed


def test_a_pooled_connection_the_server_closed_while_idle_is_replaced(runtime: str) -> None:
    # The first connection hangs up after its delivery (EOF waits at the front of its
    # script when it comes back to the pool): the pool must notice and open another.
    first = [*dialogue(quit=False), EOF]
    (one, two), backend = deliver(runtime, [first, dialogue()], deliveries=2, pool=True)
    assert statuses(one) == [Status.DELIVERED]
    assert statuses(two) == [Status.DELIVERED]
    assert len(backend.plays) == 2


# ---- the Pool trying again (a server full, stopping or restarting) ---------------------


def test_a_refused_connection_is_tried_again_after_a_pause(runtime: str) -> None:
    (result,), backend = deliver(runtime, [[REFUSE], [REFUSE], dialogue()], pool=True)
    assert statuses(result) == [Status.DELIVERED]
    assert len(backend.slept) == 2
    assert 0 < backend.slept[0] <= backend.slept[1] * 2  # backing off, with jitter


def test_a_421_greeting_is_tried_again(runtime: str) -> None:
    busy = [b"421 4.3.2 too many connections\r\n"]
    (result,), backend = deliver(runtime, [busy, dialogue()], pool=True)
    assert statuses(result) == [Status.DELIVERED]
    assert len(backend.slept) == 1


def test_a_refusal_that_does_not_pass_is_not_tried_again(runtime: str) -> None:
    (error,), backend = deliver(runtime, [[b"554 5.3.2 go away\r\n"]], pool=True)
    assert isinstance(error, SessionError)
    assert backend.slept == []


def test_a_server_that_breaks_the_protocol_twice_is_not_tried_a_third_time(
    runtime: str,
) -> None:
    nonsense = [b"HELLO THERE\r\n"]
    (error,), backend = deliver(runtime, [nonsense, nonsense, dialogue()], pool=True)
    assert isinstance(error, SessionError)
    assert len(backend.plays) == 2
    assert len(backend.slept) == 1


def test_lost_before_the_data_went_out_is_sent_again_on_a_new_connection(
    runtime: str,
) -> None:
    cut = [GREETING, LHLO, b"250 2.1.0 ok\r\n", RESET]
    (result,), backend = deliver(runtime, [cut, dialogue()], pool=True)
    assert statuses(result) == [Status.DELIVERED]
    assert sum(b"".join(p.sent).count(b"MAIL FROM") for p in backend.plays) == 2


def test_an_end_of_data_that_may_have_left_is_never_sent_again(runtime: str) -> None:
    # The write carrying the end of the data fails and the stream cannot tell whether
    # it left: the server may have the message, so it is UNKNOWN and not sent again.
    maybe = [GREETING, LHLO, b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go\r\n"]
    maybe.append(END_MAY_HAVE_LEFT)
    (result,), backend = deliver(runtime, [maybe, dialogue()], pool=True)
    assert statuses(result) == [Status.UNKNOWN]
    assert len(backend.plays) == 1
    assert backend.slept == []


def test_an_end_of_data_known_unsent_is_sent_again(runtime: str) -> None:
    # The same write fails before the kernel took it (SEND_FAILS: unsent): nothing can
    # have been stored, so the message goes again on a new connection.
    unsent = [GREETING, LHLO, b"250 2.1.0 ok\r\n", b"250 2.1.5 ok\r\n", b"354 go\r\n"]
    (result,), backend = deliver(runtime, [[*unsent, SEND_FAILS], dialogue()], pool=True)
    assert statuses(result) == [Status.DELIVERED]
    assert len(backend.plays) == 2
