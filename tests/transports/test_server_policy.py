"""Protocol rules and policy options of our servers, over real sockets, in every runtime
(issue 13, items 4, 6 and 7).

A refused DATA ends the session: a client that sends its body before the 354 (in one
write, or byte by byte) gets the refusal and the connection closes, and the commands in
the body (a RCPT to a victim, another DATA) never reach the application; the RFC 2920
happy path (MAIL, RCPTs and DATA in one write, the body after 354, the next MAIL right
after the dot) keeps working. require_tls: MAIL gets 530 5.7.0 before STARTTLS, and a
client that starts TLS delivers. Refused recipients: past the soft limit each refusal is
delayed, the delivery still completes, and the budget is per session. Log lines escape
control and bidi characters from the peer. Bad values of the new server settings are
ConfigurationErrors before anything listens.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from typing import Any

import pytest

from lmtp_core import Reply, Stage, Status
from transports import ConfigurationError, Handler, blocking

from .conftest import PKI
from .runtimes import RUNTIMES, Recorder
from .servers import LogWatch, Raw, code_of, serving

NO_USER = Reply(550, "5.1.1", "No such user")
EARLY_BODY = (
    b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\nRCPT TO:<nobody@example.org>\r\nDATA\r\n"
    b"Subject: sent before the 354\r\n\r\n"
    b"MAIL FROM:<evil@example.net>\r\nRCPT TO:<victim@example.org>\r\nDATA\r\n"
    b"stored in the victim's mailbox\r\n.\r\nQUIT\r\n"
)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("split", ["one-write", "byte-by-byte"])
def test_a_refused_data_ends_the_session_and_what_followed_never_runs(
    runtime: str, split: str, sock_path: str
) -> None:
    handler = Recorder(rcpt={"nobody@example.org": NO_USER})
    with serving(runtime, handler, socket_path=sock_path), Raw(sock_path) as raw:
        raw.reply()
        if split == "one-write":
            raw.send(EARLY_BODY)
        else:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                for byte in EARLY_BODY:  # until the server has closed
                    raw.send(bytes([byte]))
        codes = [code_of(r) for r in raw.replies(4)]
        assert raw.eof()
    assert codes == [b"250", b"250 2.1.0", b"550 5.1.1", b"503 5.5.1"]
    assert raw.unread == b""  # nothing after the refusal
    assert handler.senders == ["s@example.net"]
    assert handler.recipients == ["nobody@example.org"]
    assert handler.messages == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_rfc2920_pipelining_keeps_working(runtime: str, sock_path: str) -> None:
    handler = Recorder()
    envelope = (
        b"MAIL FROM:<s@example.net>\r\nRCPT TO:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n"
        b"DATA\r\n"
    )
    with serving(runtime, handler, socket_path=sock_path), Raw(sock_path) as raw:
        raw.reply()
        raw.send(b"LHLO c.example\r\n" + envelope)
        first = [code_of(r) for r in raw.replies(5)]
        raw.send(b"one\r\n.\r\n" + envelope)  # the next transaction right behind the dot
        second = [code_of(r) for r in raw.replies(6)]
        raw.send(b"two\r\n.\r\nQUIT\r\n")
        third = [code_of(r) for r in raw.replies(3)]
    assert first == [b"250", b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"354"]
    assert second == [b"250 2.0.0"] * 2 + [b"250 2.1.0", b"250 2.1.5", b"250 2.1.5", b"354"]
    assert third == [b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"]
    assert [m.data for m in handler.messages] == [b"one\r\n", b"two\r\n"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_require_tls_refuses_mail_until_starttls(runtime: str, pki: PKI, sock_path: str) -> None:
    handler = Recorder()
    settings = {"starttls_context": pki.server_context(), "require_tls": True}
    with serving(runtime, handler, socket_path=sock_path, **settings), Raw(sock_path) as raw:
        raw.reply()
        raw.send(b"LHLO c.example\r\nMAIL FROM:<s@example.net>\r\n")
        lhlo, mail = raw.replies(2)
        plain = blocking.deliver(
            b"x\r\n", "s@example.net", ["a@example.org"], socket_path=sock_path
        )
        secure = blocking.deliver(
            b"x\r\n",
            "s@example.net",
            ["a@example.org"],
            socket_path=sock_path,
            starttls=True,
            ssl_opts={"cafile": pki.ca_file, "server_hostname": "localhost"},
        )
    assert b"STARTTLS" in lhlo
    assert mail.startswith(b"530 5.7.0 ")
    [refused] = plain.recipients
    assert (refused.status, refused.stage, refused.reply and refused.reply.code) == (
        Status.PERMANENT,
        Stage.RCPT,
        530,
    )
    assert secure.all_delivered
    assert [m.tls for m in handler.messages] == [True]


def test_require_tls_needs_a_tls_setting() -> None:
    with pytest.raises(ConfigurationError, match="require_tls"):
        blocking.Server(Handler(), port=0, require_tls=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_refused_recipients_are_slowed_past_the_soft_limit_never_cut_off(
    runtime: str, sock_path: str
) -> None:
    unknown = [f"x{n}@example.org" for n in range(5)]
    handler = Recorder(rcpt=dict.fromkeys(unknown, NO_USER))
    settings = {"refusal_soft_limit": 2, "refusal_delay": 0.3}

    def timed(recipients: list[str]) -> tuple[float, list[Status]]:
        started = time.monotonic()
        result = blocking.deliver(
            b"x\r\n", "s@example.net", recipients, socket_path=sock_path, timeout=30
        )
        return time.monotonic() - started, [r.status for r in result.recipients]

    with serving(runtime, handler, socket_path=sock_path, **settings):
        slowed, outcomes = timed([*unknown, "ok@example.org"])
        fresh, fresh_outcomes = timed([*unknown[:2], "ok@example.org"])
    assert outcomes == [Status.PERMANENT] * 5 + [Status.DELIVERED]  # slowed, not cut off
    assert slowed >= 3 * 0.3  # three refusals past the soft limit of two
    assert fresh_outcomes == [Status.PERMANENT] * 2 + [Status.DELIVERED]
    assert fresh < 0.3  # a new session has a budget of its own


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_peer_text_in_log_lines_is_escaped(runtime: str, sock_path: str) -> None:
    nasty = "ev\u202eil\u0085x@example.org"
    handler = Recorder(rcpt={nasty: NO_USER})
    with (
        LogWatch("transports.server", logging.INFO) as logs,
        serving(runtime, handler, socket_path=sock_path),
        Raw(sock_path) as raw,
    ):
        raw.reply()
        raw.send(
            b"LHLO c.example\r\nMAIL FROM:<s@example.net> SMTPUTF8\r\n"
            + f"RCPT TO:<{nasty}>\r\nQUIT\r\n".encode()
        )
        assert code_of(raw.replies(4)[2]) == b"550 5.1.1"
        assert logs.wait("550")
    [line] = logs.messages("550")
    assert "ev\\u202eil\\x85x@example.org" in line
    assert line.isprintable()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_connections": 0}, "max_connections"),
        ({"handler_threads": 1.5}, "handler_threads"),
        ({"grace": -1}, "grace"),
        ({"refusal_delay": "1"}, "refusal_delay"),
        ({"refusal_soft_limit": -1}, "refusal_soft_limit"),
        ({"sock": "not a socket"}, "sock"),
    ],
)
def test_bad_server_settings_are_configuration_errors(
    settings: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        blocking.Server(Handler(), port=0, **settings)


def test_sock_and_socket_path_exclude_each_other(sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as listener, pytest.raises(ConfigurationError):
        blocking.Server(Handler(), socket_path=sock_path, sock=listener)
