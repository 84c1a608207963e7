"""An LMTP delivery adapter for a mail framework, as a worked example.

A web or mail framework hands its delivery adapter ("email backend", "transport")
a batch of messages and wants to know how many went out. This adapter takes the
options such adapters use, delivers each message over LMTP through a connection pool,
and logs every recipient that did not get its copy, with the outcome, the stage and
the server's reply, so that partial failure is never silent.

Options (keyword-only, as the framework's settings would pass them):

    socket_path  a UNIX socket; when given it takes precedence over host and port
    host         "127.0.0.1" by default
    port         2424 by default
    ssl          implicit TLS from the first byte (False by default)
    starttls     require STARTTLS on a plain connection (False by default)
    ssl_opts     passed to the TLS layer: cafile, capath, cadata, verify,
                 check_hostname, server_hostname, certfile, keyfile,
                 minimum_version, ciphers
    timeout      seconds for every wait, or a transports.Timeouts
    fail_silently  log errors instead of raising them

Run `python adapter.py --help` for a command line that sends one message with it, and
`python adapter.py --self-test` to try it against a server started in-process.
"""

from __future__ import annotations

import argparse
import email.message
import logging
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from lmtp_core import (
    LocalProtocolError,
    Params,
    RecipientResult,
    Reply,
    Status,
    TransactionResult,
)
from transports import Envelope, Handler, LMTPError, PoolSettings, Timeouts, blocking

log = logging.getLogger("lmtp_adapter")


@dataclass(frozen=True)
class OutgoingMessage:
    """What the framework hands over: the envelope and the message itself."""

    sender: str  # "" is the null sender <>, for bounces
    recipients: Sequence[str]
    content: bytes | email.message.Message


class LMTPBackend:
    """Delivers a framework's messages over LMTP; reusable, thread-safe."""

    def __init__(
        self,
        *,
        socket_path: str | None = None,
        host: str = "127.0.0.1",
        port: int = 2424,
        ssl: bool = False,
        starttls: bool = False,
        ssl_opts: Mapping[str, object] | None = None,
        timeout: float | Timeouts | None = None,
        max_connections: int = 4,
        fail_silently: bool = False,
    ) -> None:
        settings: PoolSettings = {
            "socket_path": socket_path,  # takes precedence over host and port
            "host": host,
            "port": port,
            "ssl": ssl,
            "starttls": starttls,
            "ssl_opts": ssl_opts,  # checked here: a bad key raises ConfigurationError
            "timeout": timeout,
            "max_connections": max_connections,
        }
        self.fail_silently = fail_silently
        # Nothing connects yet: the pool opens connections as deliveries need them.
        self._pool = blocking.Pool(**settings)

    def send_messages(self, messages: Iterable[OutgoingMessage]) -> int:
        """Deliver each message; return how many reached every recipient."""
        sent = 0
        for message in messages:
            result = self.send(message)
            if result is not None and result.all_delivered:
                sent += 1
        return sent

    def send(self, message: OutgoingMessage) -> TransactionResult | None:
        """Deliver one message; its result, or None when no recipient could be tried
        (and fail_silently is on)."""
        try:
            result = self._pool.deliver(message.content, message.sender, message.recipients)
        except (LMTPError, LocalProtocolError) as exc:
            # LMTPError: no connection, TLS failed, the server refused the session, or
            # a deadline passed before anyone was tried. LocalProtocolError: an
            # envelope no server can take (an invalid address). Nobody got it.
            for recipient in message.recipients:
                log.error("LMTP delivery to %s failed: %s", recipient, exc)
            if not self.fail_silently:
                raise
            return None
        for outcome in result.recipients:
            if outcome.status is not Status.DELIVERED:
                log_failure(outcome)
        return result

    def close(self) -> None:
        """Wait for deliveries in flight, then QUIT every pooled connection."""
        self._pool.close()

    def __enter__(self) -> LMTPBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def log_failure(outcome: RecipientResult) -> None:
    """One log line per recipient that did not get the message."""
    why = str(outcome.reply) if outcome.reply is not None else outcome.reason
    level = logging.ERROR if outcome.status is Status.PERMANENT else logging.WARNING
    # TEMPORARY: try again later. UNKNOWN: the message may have been stored; retrying
    # may deliver a duplicate. PERMANENT: do not retry (bounce it).
    log.log(
        level,
        "LMTP delivery to %s: %s at %s: %s",
        outcome.recipient,
        outcome.status,
        outcome.stage,
        why,
    )


# ---- a command line, to try the adapter ------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adapter.py",
        description="Send one message with the example LMTP adapter, logging each "
        "failed recipient.",
    )
    parser.add_argument("--from", dest="sender", metavar="ADDR", help="the envelope sender")
    parser.add_argument(
        "--to", dest="recipients", action="append", metavar="ADDR", help="a recipient (repeat)"
    )
    parser.add_argument("--socket", metavar="PATH", help="UNIX socket (precedes host/port)")
    parser.add_argument("--host", default="127.0.0.1", help="TCP host (default: %(default)s)")
    parser.add_argument("--port", type=int, default=2424, help="TCP port (default: %(default)s)")
    parser.add_argument("--ssl", action="store_true", help="implicit TLS")
    parser.add_argument("--cafile", help="CA certificates for TLS (ssl_opts cafile)")
    parser.add_argument("--self-test", action="store_true", help="run against a test server")
    parser.add_argument("file", nargs="?", help="the message file (default: stdin)")
    return parser


class _TestPolicy(Handler):
    """The self-test's server: refuses nobody@ at RCPT and full@ after the data."""

    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        return Reply(550, "5.1.1", "No such user") if recipient.startswith("nobody@") else None

    def deliver(self, envelope: Envelope) -> list[Reply | None]:
        full = Reply(452, "4.2.2", "Mailbox full")
        return [full if r.startswith("full@") else None for r in envelope.recipients]


class _Records(logging.Handler):
    """Keeps the log records, for the self-test to check."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def self_test() -> int:
    """Deliver to a server started here; 0 if the outcomes and the log are right."""
    records = _Records()
    log.addHandler(records)
    with tempfile.TemporaryDirectory(prefix="lmtp-adapter-") as directory:
        path = str(Path(directory) / "lmtp.sock")
        with (
            blocking.Server(_TestPolicy(), socket_path=path),
            LMTPBackend(socket_path=path, port=1) as backend,  # socket_path wins
        ):
            good = OutgoingMessage("app@example.net", ["a@example.org"], b"Subject: 1\r\n\r\n1\r\n")
            partial = OutgoingMessage(
                "app@example.net",
                ["a@example.org", "nobody@example.org", "full@example.org"],
                b"Subject: 2\r\n\r\n2\r\n",
            )
            sent = backend.send_messages([good, partial])
    log.removeHandler(records)
    logged = [record.getMessage() for record in records.records]
    for line in logged:
        print(line)
    expected = [
        "LMTP delivery to nobody@example.org: permanent at rcpt: 550 5.1.1 No such user",
        "LMTP delivery to full@example.org: temporary at data: 452 4.2.2 Mailbox full",
    ]
    ok = sent == 1 and logged == expected
    print("self-test", "passed" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    if args.self_test:
        return self_test()
    if not args.sender or not args.recipients:
        _parser().error("--from and --to are required (or --self-test)")
    content = Path(args.file).read_bytes() if args.file else sys.stdin.buffer.read()
    ssl_opts = {"cafile": args.cafile} if args.cafile else None
    with LMTPBackend(
        socket_path=args.socket,
        host=args.host,
        port=args.port,
        ssl=args.ssl,
        ssl_opts=ssl_opts,
        fail_silently=True,  # logged, not raised
    ) as backend:
        sent = backend.send_messages([OutgoingMessage(args.sender, args.recipients, content)])
    return 0 if sent else 1


if __name__ == "__main__":
    sys.exit(main())
