"""transports/pytest_plugin.py: what tests/plugin leaves out. reject() and fail() refuse
a reply that would not refuse (a 2xx or 3xx: a test would silently deliver), and the
factory serves a listening socket it is handed as it is, choosing no endpoint of its
own."""

from __future__ import annotations

import socket

import pytest

from lmtp_core import Reply, Status
from transports import blocking
from transports.pytest_plugin import LMTPServerFactory, LMTPUnixTestServer


@pytest.mark.parametrize("reply", [Reply(250, "2.0.0", "ok"), Reply(354, None, "go on")])
def test_reject_and_fail_need_a_refusal(lmtp_server: LMTPUnixTestServer, reply: Reply) -> None:
    with pytest.raises(ValueError, match="reject\\(\\) needs a 4xx or 5xx reply"):
        lmtp_server.reject("a@x.org", reply=reply)
    with pytest.raises(ValueError, match="fail\\(\\) needs a 4xx or 5xx reply"):
        lmtp_server.fail("a@x.org", reply=reply)
    # nothing was recorded: the address is still accepted and delivered
    result = blocking.deliver(
        b"Subject: p\r\n\r\nbody\r\n", "s@x.org", ["a@x.org"], socket_path=lmtp_server.socket_path
    )
    assert [r.status for r in result.recipients] == [Status.DELIVERED]


def test_the_factory_serves_a_socket_it_is_given(lmtp_server_factory: LMTPServerFactory) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = lmtp_server_factory(sock=listener)
    result = blocking.deliver(
        b"Subject: p\r\n\r\nbody\r\n", "s@x.org", ["a@x.org"], host="127.0.0.1", port=port
    )
    assert [r.status for r in result.recipients] == [Status.DELIVERED]
    (message,) = server.messages
    assert message.recipients == ["a@x.org"]
