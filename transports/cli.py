"""The `lmtp` command: send a message, run a receiver, or demonstrate both.

How it works: argparse parses; `send` calls the blocking driver and prints one line
(or one JSON object) per recipient, exiting 0 when all were delivered, 75 (EX_TEMPFAIL)
when a retry is needed (a temporary or unknown outcome, or no connection), 1 when every
failure is permanent, 2 for usage and configuration errors; failures are explained in
one line on stderr, never a traceback. `serve` runs the asyncio or trio server with a
MaildirHandler through _serve.py (in one process, or in --workers processes), on the
socket systemd passed when started by socket activation (LISTEN_PID, LISTEN_FDS), until
SIGTERM or SIGINT stops it gracefully: one line, exit 0. `demo` starts that receiver
on a temporary UNIX socket and delivers a sample message to it. The protocol
transcript of -v is the drivers' DEBUG log.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib.metadata
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any, BinaryIO

from lmtp_core import Limits, LocalProtocolError, Reply, Status, TransactionResult

from . import blocking
from ._config import endpoint_name, server_context
from ._errors import ConfigurationError, ConnectError, SessionError, TLSError
from ._listen import systemd_socket
from ._serve import run, run_workers
from ._session import Envelope
from .maildir import MaildirHandler

__all__ = ["main"]

EX_OK, EX_PERMANENT, EX_USAGE, EX_TEMPFAIL = 0, 1, 2, 75


class _Parser(argparse.ArgumentParser):
    #: Set by main() when --json was asked for: a usage error is JSON too.
    json = False

    def error(self, message: str) -> Any:  # one line, exit 2
        if _Parser.json:
            print(json.dumps({"recipients": [], "error": message}))
        self.exit(EX_USAGE, f"lmtp: {message}\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help line ends with its default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, False, [], argparse.SUPPRESS):
            return action.help
        return super()._get_help_string(action)


def _version() -> str:
    try:
        return importlib.metadata.version("lmtp")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout, not installed
        return "unknown (not installed)"


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lmtp", description="LMTP client and server (RFC 2033).")
    parser.add_argument("--version", action="version", version=f"lmtp {_version()}")
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=_Parser, metavar="{send,serve,demo}"
    )

    send = commands.add_parser(
        "send",
        help="deliver a message and show each recipient's fate",
        description="Deliver one message over LMTP and print each recipient's outcome. "
        "Exit status: 0 all delivered, 75 retry later (temporary or unknown, or no "
        "connection), 1 every failure permanent, 2 usage or configuration error.",
        formatter_class=_Help,
    )
    send.add_argument("--from", dest="sender", required=True, metavar="ADDR", help="the sender")
    send.add_argument(
        "--to",
        dest="recipients",
        action="append",
        required=True,
        metavar="ADDR",
        help="a recipient (repeat for each one)",
    )
    where = send.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="a UNIX socket (instead of --host)")
    where.add_argument("--host", default="127.0.0.1", help="the server's host")
    send.add_argument("--port", type=int, default=2424, help="the server's TCP port")
    tls = send.add_mutually_exclusive_group()
    tls.add_argument("--ssl", action="store_true", help="implicit TLS from the first byte")
    tls.add_argument("--starttls", action="store_true", help="require STARTTLS")
    send.add_argument("--cafile", help="CA certificates to verify the server with")
    send.add_argument("--server-name", help="name to verify in the server's certificate")
    send.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    send.add_argument("--no-chunking", action="store_true", help="use DATA, never BDAT")
    send.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the limit of every wait (default: RFC 5321's, 2 to 10 minutes a phase)",
    )
    send.add_argument("--json", action="store_true", help="print exactly one JSON object")
    send.add_argument("-v", "--verbose", action="store_true", help="print the transcript")
    send.add_argument("file", nargs="?", default="-", help="the message, or - for standard input")

    serve = commands.add_parser(
        "serve",
        help="run an LMTP receiver that stores into a Maildir",
        description="Run an LMTP server that stores each message into DIR/<recipient>/new/ "
        "and answers each recipient once its copy is on disk. SIGTERM or SIGINT stop it "
        "cleanly (exit 0). Started by systemd socket activation, it serves the socket "
        "systemd passes (and ignores --socket, --host and --port).",
        formatter_class=_Help,
    )
    serve.add_argument("--maildir", required=True, metavar="DIR", help="where to store mail")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help="a UNIX socket (instead of --host)")
    where.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    serve.add_argument("--port", type=int, default=2424, help="the TCP port (0: any free one)")
    serve.add_argument(
        "--tls-cert", metavar="FILE", help="certificate chain: offer STARTTLS (with --tls-key)"
    )
    serve.add_argument("--tls-key", metavar="FILE", help="the certificate's private key")
    serve.add_argument(
        "--implicit-tls", action="store_true", help="TLS from the first byte instead of STARTTLS"
    )
    serve.add_argument(
        "--reject", action="append", default=[], metavar="ADDR", help="refuse this recipient"
    )
    serve.add_argument(
        "--recipients", metavar="FILE", help="the known addresses, one a line; others get 550"
    )
    serve.add_argument(
        "--max-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="the largest message (default: 32 MiB)",
    )
    serve.add_argument(
        "--runtime", choices=["asyncio", "trio"], default="asyncio", help="the event loop"
    )
    serve.add_argument("--require-tls", action="store_true", help="refuse MAIL before STARTTLS")
    serve.add_argument(
        "--max-connections",
        type=int,
        default=1000,
        metavar="N",
        help="sessions at once per process; past it 421",
    )
    serve.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long transactions in flight may finish",
    )
    serve.add_argument(
        "--workers", type=int, default=1, metavar="N", help="processes sharing the socket"
    )
    serve.add_argument(
        "--handler-threads",
        type=int,
        default=4,
        metavar="N",
        help="threads that store messages, per process",
    )

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
        if args.file == "-" and sys.stdin.isatty():
            print(
                "lmtp: reading the message from standard input (end it with Ctrl-D)",
                file=sys.stderr,
            )
        with sys.stdin.buffer if args.file == "-" else open(args.file, "rb") as file:
            message: Any = file
            if sys.stderr.isatty() and not args.json:
                message = _Progress(file)
            try:
                result = blocking.deliver(message, args.sender, args.recipients, **settings)
            finally:
                if isinstance(message, _Progress):
                    message.done()
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


class _Progress:
    """The message file, reporting on stderr (a terminal) how much was read and sent:
    bytes so far, the total when known, and the rate, at most twice a second."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._sent = 0
        self._started = self._shown = time.monotonic()
        self._total: int | None = None
        with contextlib.suppress(OSError, ValueError):
            info = os.fstat(file.fileno())
            if stat.S_ISREG(info.st_mode):
                self._total = info.st_size

    def read(self, size: int = -1) -> bytes:
        piece = self._file.read(size)
        self._sent += len(piece)
        now = time.monotonic()
        if now - self._shown >= 0.5 and self._sent >= 1024 * 1024:
            self._shown = now
            self._show(now)
        return piece

    def _show(self, now: float) -> None:
        mib = self._sent / (1024 * 1024)
        total = f" of {self._total / (1024 * 1024):.1f}" if self._total else ""
        rate = mib / max(now - self._started, 1e-6)
        print(f"\rlmtp: sent {mib:.1f}{total} MiB, {rate:.1f} MiB/s ", end="", file=sys.stderr)

    def done(self) -> None:
        if self._sent >= 1024 * 1024:  # a large message: its total, on a line of its own
            self._show(time.monotonic())
            print(file=sys.stderr)

    # what the drivers ask of a file: its descriptor (for SIZE) and its position
    def fileno(self) -> int:
        return self._file.fileno()

    def seekable(self) -> bool:
        return self._file.seekable()

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._file.seek(offset, whence)


def _failed(args: argparse.Namespace, message: str, status: int, reply: Reply | None = None) -> int:
    print(f"lmtp: {message}", file=sys.stderr)
    if getattr(args, "json", False) and status == EX_USAGE:
        print(json.dumps({"recipients": [], "error": message}))
    elif getattr(args, "json", False):
        rows = [
            {
                "recipient": r,
                "status": "permanent" if status == EX_PERMANENT else "temporary",
                "code": reply.code if reply else None,
                "enhanced": reply.enhanced if reply else None,
                "text": reply.text if reply else None,
                "stage": None,
                "reason": message,
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
    if (args.require_tls or args.implicit_tls) and not args.tls_cert:
        print(
            "lmtp: --require-tls and --implicit-tls need --tls-cert and --tls-key", file=sys.stderr
        )
        return EX_USAGE
    if args.workers < 1:
        print("lmtp: --workers must be 1 or more", file=sys.stderr)
        return EX_USAGE
    try:
        tls = server_context(args.tls_cert, args.tls_key) if args.tls_cert else None
        activated = systemd_socket()
        settings: dict[str, Any] = dict(
            sock=activated,
            socket_path=args.socket if activated is None else None,
            host=args.host,
            port=args.port,
            limits=Limits(max_message_size=args.max_size) if args.max_size else None,
            starttls_context=tls if not args.implicit_tls else None,
            ssl_context=tls if args.implicit_tls else None,
            require_tls=args.require_tls,
            max_connections=args.max_connections,
            grace=args.grace,
            handler_threads=args.handler_threads,
        )
        known = _addresses(args.recipients) if args.recipients else None
        handler = MaildirHandler(args.maildir, reject=args.reject, recipients=known)

        def ready(address: Any) -> None:
            workers = f" ({args.workers} workers)" if args.workers > 1 else ""
            systemd = " (from systemd)" if activated is not None else ""
            _ready(address, systemd, args.maildir + workers)

        signal_name: str | None
        if args.workers > 1:
            signal_name = run_workers(
                args.workers, args.runtime, handler, settings, ready=ready, say=_say
            )
        else:
            signal_name = run(args.runtime, handler, settings, ready)
    except KeyboardInterrupt:  # before the signal handlers were in place
        signal_name = "SIGINT"
    except ModuleNotFoundError as exc:
        if exc.name != "trio":
            raise
        print(
            "lmtp: --runtime trio needs trio: python3 -m pip install 'lmtp[trio]' "
            "(from a checkout: python3 -m pip install '.[trio]')",
            file=sys.stderr,
        )
        return EX_USAGE
    except (ConfigurationError, OSError, ValueError) as exc:
        print(f"lmtp: {_listen_error(exc, args)}", file=sys.stderr)
        return EX_USAGE
    print(f"lmtp: stopped ({signal_name or 'closed'})", file=sys.stderr)
    return EX_OK


def _addresses(path: str) -> list[str]:
    """One address a line; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") as lines:
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _listen_error(exc: Exception, args: argparse.Namespace) -> str:
    if isinstance(exc, OSError) and exc.filename:  # the socket path rules
        return f"cannot listen on {exc.filename}: {exc.strerror}"
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {args.socket or f'{args.host}:{args.port}'}: {exc.strerror}"
    return str(exc)


def _say(level: int, text: str) -> None:
    print(f"lmtp: {text}", file=sys.stderr, flush=True)


def _ready(address: str | tuple[Any, ...], how: str, maildir: str) -> None:
    where = address if isinstance(address, str) else endpoint_name(None, address[0], address[1])
    print(f"lmtp: ready on {where}{how}, storing into {maildir}", file=sys.stderr, flush=True)


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
    arguments = sys.argv[1:] if argv is None else list(argv)
    _Parser.json = "--json" in arguments
    try:
        args = _parser().parse_args(arguments)
        command = {"send": _send, "serve": _serve, "demo": _demo}[args.command]
        return command(args)
    except KeyboardInterrupt:  # Ctrl-C: one line, never a traceback
        print("\nlmtp: interrupted", file=sys.stderr)
        if _Parser.json:
            print(json.dumps({"recipients": [], "error": "interrupted"}))
        return 130


if __name__ == "__main__":
    sys.exit(main())
