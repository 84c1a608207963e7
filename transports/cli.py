"""The `lmtp` command: send a message, run a receiver, or demonstrate both.

How it works: argparse parses; `send` calls the blocking driver and prints one line
(or one JSON object) per recipient, exiting 0 when all were delivered, 75 (EX_TEMPFAIL)
when a retry is needed (a temporary or unknown outcome, or no connection), 1 when every
failure is permanent, 2 for usage and configuration errors; failures are explained in
one line on stderr, never a traceback. `serve` runs the asyncio or trio server with a
MaildirHandler. `demo` starts that receiver on a temporary UNIX socket and delivers a
sample message to it. The protocol transcript of -v is the drivers' DEBUG log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from lmtp_core import Limits, LocalProtocolError, Reply, Status, TransactionResult

from . import asyncio as asyncio_driver
from . import blocking
from ._config import server_context
from ._errors import ConfigurationError, ConnectError, SessionError, TLSError
from ._session import Envelope
from .maildir import MaildirHandler

__all__ = ["main"]

EX_OK, EX_PERMANENT, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2
        self.exit(EX_USAGE, f"lmtp: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmtp", description="LMTP client and server (RFC 2033).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    send = commands.add_parser("send", help="deliver a message and show each recipient's fate")
    send.add_argument("--from", dest="sender", required=True, metavar="ADDR")
    send.add_argument("--to", dest="recipients", action="append", required=True, metavar="ADDR")
    where = send.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH")
    where.add_argument("--host", default="127.0.0.1")
    send.add_argument("--port", type=int, default=2424)
    tls = send.add_mutually_exclusive_group()
    tls.add_argument("--ssl", action="store_true", help="implicit TLS")
    tls.add_argument("--starttls", action="store_true", help="require STARTTLS")
    send.add_argument("--cafile", help="CA certificates to verify the server with")
    send.add_argument("--server-name", help="name to verify in the server's certificate")
    send.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    send.add_argument("--no-chunking", action="store_true", help="use DATA, never BDAT")
    send.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    send.add_argument("--json", action="store_true", help="print one JSON object")
    send.add_argument("-v", "--verbose", action="store_true", help="print the transcript")
    send.add_argument("file", nargs="?", default="-", help="the message (default: stdin)")

    serve = commands.add_parser("serve", help="run an LMTP receiver that stores into a Maildir")
    serve.add_argument("--maildir", required=True, metavar="DIR")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH")
    where.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=2424)
    serve.add_argument("--tls-cert", metavar="FILE")
    serve.add_argument("--tls-key", metavar="FILE")
    serve.add_argument("--reject", action="append", default=[], metavar="ADDR")
    serve.add_argument("--max-size", type=int, default=None, metavar="BYTES")
    serve.add_argument("--runtime", choices=["asyncio", "trio"], default="asyncio")

    commands.add_parser("demo", help="deliver a sample message to a temporary receiver")
    return parser


def _exit_status(result: TransactionResult) -> int:
    statuses = {r.status for r in result.recipients}
    if statuses == {Status.DELIVERED}:
        return EX_OK
    if statuses & {Status.TEMPORARY, Status.UNKNOWN}:
        return EX_TEMPFAIL
    return EX_PERMANENT


def _rows(result: TransactionResult) -> list[dict[str, Any]]:
    return [
        {
            "recipient": r.recipient,
            "status": r.status.value,
            "code": r.reply.code if r.reply else None,
            "enhanced": r.reply.enhanced if r.reply else None,
            "text": r.reply.text if r.reply else None,
            "stage": r.stage.value,
            "reason": r.reason,
        }
        for r in result.recipients
    ]


def _print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(row["recipient"]) for row in rows)
    for row in rows:
        code = f"{row['code']} {row['enhanced'] or ''}".strip() if row["code"] else "-"
        text = (row["text"] or row["reason"] or "").replace("\n", " / ")
        print(
            f"{row['recipient']:<{width}}  {row['status']:<9}  {row['stage']:<5}  {code:<9}  {text}"
        )


def _send(args: argparse.Namespace) -> int:
    if args.verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("transports")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    ssl_opts: dict[str, object] = {}
    if args.cafile:
        ssl_opts["cafile"] = args.cafile
    if args.server_name:
        ssl_opts["server_hostname"] = args.server_name
    if args.insecure:
        ssl_opts.update(verify=False, check_hostname=False)
    settings: dict[str, Any] = dict(
        socket_path=args.socket,
        host=args.host,
        port=args.port,
        ssl=args.ssl,
        starttls=args.starttls,
        ssl_opts=ssl_opts or None,
        chunking=not args.no_chunking,
        timeout=args.timeout,
    )
    try:
        with sys.stdin.buffer if args.file == "-" else open(args.file, "rb") as message:
            result = blocking.deliver(message, args.sender, args.recipients, **settings)
    except (ConfigurationError, LocalProtocolError, OSError) as exc:
        if isinstance(exc, ConnectError):
            return _failed(args, f"{_what(exc)}: {exc}", EX_TEMPFAIL)
        return _failed(args, str(exc), EX_USAGE)
    except SessionError as exc:
        code = EX_PERMANENT if exc.reply and exc.reply.is_permanent else EX_TEMPFAIL
        return _failed(args, f"the server refused the session: {exc}", code, exc.reply)
    rows = _rows(result)
    if args.json:
        print(json.dumps({"recipients": rows}))
    else:
        _print_table(rows)
    return _exit_status(result)


def _what(exc: ConnectError) -> str:
    if isinstance(exc, TLSError):
        return "TLS failed (certificate or handshake)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc.__cause__, ConnectionRefusedError):
        return "connection refused"
    return "cannot connect"


def _failed(args: argparse.Namespace, message: str, status: int, reply: Reply | None = None) -> int:
    print(f"lmtp: {message}", file=sys.stderr)
    if getattr(args, "json", False) and status != EX_USAGE:
        rows = [
            {
                "recipient": r,
                "status": "permanent" if status == EX_PERMANENT else "temporary",
                "code": reply.code if reply else None,
                "enhanced": reply.enhanced if reply else None,
                "text": reply.text if reply else None,
                "stage": None,
            }
            for r in args.recipients
        ]
        print(json.dumps({"recipients": rows, "error": message}))
    return status


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("lmtp: --tls-cert and --tls-key go together", file=sys.stderr)
        return EX_USAGE
    try:
        settings: dict[str, Any] = dict(
            socket_path=args.socket,
            host=args.host,
            port=args.port,
            limits=Limits(max_message_size=args.max_size) if args.max_size else None,
            starttls_context=server_context(args.tls_cert, args.tls_key) if args.tls_cert else None,
        )
        handler = MaildirHandler(args.maildir, reject=args.reject)
        if args.runtime == "trio":
            # trio is an optional extra: import it only when asked for.
            import trio  # noqa: PLC0415

            from . import trio as trio_driver  # noqa: PLC0415

            async def run_trio() -> None:
                async with trio.open_nursery() as nursery:
                    server = await nursery.start(trio_driver.Server(handler, **settings).serve)
                    _ready(server.address, args.maildir)

            trio.run(run_trio)
        else:

            async def run_asyncio() -> None:
                async with asyncio_driver.Server(handler, **settings) as server:
                    _ready(server.address, args.maildir)
                    await server.serve_forever()

            asyncio.run(run_asyncio())
    except KeyboardInterrupt:
        print("lmtp: stopped", file=sys.stderr)
    except (ConfigurationError, OSError, ValueError) as exc:
        print(f"lmtp: {exc}", file=sys.stderr)
        return EX_USAGE
    return EX_OK


def _ready(address: str | tuple[object, ...], maildir: str) -> None:
    where = address if isinstance(address, str) else ":".join(str(part) for part in address[:2])
    print(f"lmtp: ready on {where}, storing into {maildir}", file=sys.stderr, flush=True)


SAMPLE = (
    b"From: Demo Sender <demo@example.net>\r\nTo: several recipients\r\n"
    b"Subject: LMTP demo\r\n\r\nHello from lmtp.\r\n.This line starts with a dot.\r\n"
)


class _DemoHandler(MaildirHandler):
    """The receiver of `lmtp demo`: one mailbox is full, to show a failure after data."""

    def deliver(self, envelope: Envelope) -> list[Reply]:
        full = Reply(552, "5.2.2", "Mailbox full (demo)")
        stored = super().deliver(
            Envelope(
                envelope.sender,
                envelope.mail_params,
                [r for r in envelope.recipients if not r.startswith("full@")],
                [],
                envelope.message,
            )
        )
        it = iter(stored)
        return [full if r.startswith("full@") else next(it) for r in envelope.recipients]


def _demo(args: argparse.Namespace) -> int:
    recipients = ["alice@example.org", "nobody@example.org", "full@example.org", "bob@example.org"]
    maildir = tempfile.mkdtemp(prefix="lmtp-demo-maildir-")
    with tempfile.TemporaryDirectory(prefix="lmtp-demo-") as tmp:
        socket_path = os.path.join(tmp, "lmtp.sock")
        handler = _DemoHandler(maildir, reject=["nobody@example.org"])
        print(f"receiver: our LMTP server on {socket_path}")
        with blocking.Server(handler, socket_path=socket_path):
            result = blocking.deliver(
                SAMPLE, "demo@example.net", recipients, socket_path=socket_path, timeout=30
            )
        print(f"client: one message to {len(recipients)} recipients, one outcome each:\n")
        _print_table(_rows(result))
        print(f"\nstored in the Maildir {maildir} (remove it when done):")
        for path in sorted(handler.root.glob("*/new/*")):
            print(f"  {path.relative_to(maildir)} ({path.stat().st_size} octets)")
        expected = [Status.DELIVERED, Status.PERMANENT, Status.PERMANENT, Status.DELIVERED]
        return EX_OK if [r.status for r in result.recipients] == expected else EX_PERMANENT


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    command = {"send": _send, "serve": _serve, "demo": _demo}[args.command]
    return command(args)


if __name__ == "__main__":
    sys.exit(main())
