# Calls mypy must reject, each at its own line; tests/typing/test_rejections.py runs
# mypy --strict on this file and compares its errors with the `# E:` marks. Not run.
from __future__ import annotations

import trio

from lmtp_core import MailFrom, Reply
from transports import Handler, Timeouts, blocking, serve_workers
from transports import asyncio as aio
from transports import trio as tr
from transports.pytest_plugin import LMTPServerFactory, LMTPUnixTestServer


def client_settings() -> None:
    blocking.deliver(b"x", "a@example.org", ["b@example.org"], sockt_path="/s")  # E: call-arg
    blocking.deliver(b"x", "a@example.org", ["b@example.org"], port="2424")  # E: arg-type
    blocking.deliver(b"x", "a@example.org", ["b@example.org"], timeout="5")  # E: arg-type
    blocking.Client(sockt_path="/s")  # E: call-arg
    blocking.Client(ssl="yes")  # E: arg-type
    blocking.Client(timeout=Timeouts(total="5"))  # E: arg-type
    blocking.deliver(b"x", MailFrom("a@example.org", (("RET", 1),)), ["b@e.org"])  # E: arg-type
    blocking.deliver(b"x", 42, ["b@example.org"])  # E: arg-type


async def async_client_settings() -> None:
    await aio.deliver(b"x", "a@example.org", ["b@example.org"], sockt_path="/s")  # E: call-arg
    await tr.deliver(b"x", "a@example.org", ["b@example.org"], port="2424")  # E: arg-type
    aio.Client(sockt_path="/s")  # E: call-arg
    tr.Client(chunking="no")  # E: arg-type
    aio.Pool(max_conections=8)  # E: call-arg
    tr.Pool(max_connections="8")  # E: arg-type
    blocking.Pool(idle_timeout=None)  # E: arg-type
    blocking.Client(max_connections=8)  # E: call-arg


class Picky(Handler):
    def rcpt_to(self, recipient: str, params: object) -> int:  # E: override
        return 550


async def server_settings(handler: Handler) -> None:
    blocking.Server(handler, sockt_path="/s")  # E: call-arg
    blocking.Server(handler, idle_timeout="5")  # E: arg-type
    aio.Server(handler, port="2424")  # E: arg-type
    tr.Server(handler, backlog=None)  # E: arg-type
    await aio.serve(handler, hostname=1)  # E: arg-type
    blocking.Server(handler, max_conections=10)  # E: call-arg
    aio.Server(handler, require_tls="yes")  # E: arg-type
    tr.Server(handler, sock="/s")  # E: arg-type
    blocking.serve(handler, handle_signals="no")  # E: arg-type
    serve_workers(handler, 2, runtime="gevent")  # E: arg-type
    serve_workers(handler, 2, max_conections=10)  # E: call-arg
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tr.Server(handler).serve)
    Reply(250, "2.0.0", "OK")


def plugin(factory: LMTPServerFactory, server: LMTPUnixTestServer) -> None:
    factory(Handler(), hots="127.0.0.1")  # E: call-overload
    factory(Handler(), port="2424")  # E: call-overload
    server.port + 1  # E: operator
