"""A 200 MB message streams through the blocking client in bounded memory.

How it works: the test writes the message to tmp_path in 1 MiB pieces (hashing it as it
goes), runs our blocking server in this process with a handler that reads the spooled
message back in 1 MiB pieces (counting and hashing, never reading it whole), and runs the
client in a subprocess (``python -c``) that prints its peak RSS (``ru_maxrss``) once its
imports are done and again after the delivery, as JSON. The client's growth must stay under
64 MiB: a client that read the file whole, or gathered the encoded body, would grow by 200
MB or more.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lmtp_core import Limits
from transports import Envelope, Handler

from .runtimes import running_server

MIB = 1024 * 1024
PIECES = 200  # of 1 MiB each
LINE = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"ABCDEF\r\n"  # 80 octets

CLIENT = """
import json, resource, sys
from transports import blocking
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(sys.argv[1], "rb") as message:
    result = blocking.deliver(
        message, "big@example.net", ["a@example.org", "b@example.org"],
        socket_path=sys.argv[2], timeout=60,
    )
end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "start_kib": start,
    "end_kib": end,
    "outcomes": [[r.status.value, r.reply.code if r.reply else None] for r in result.recipients],
}))
"""


class CountingHandler(Handler):
    """Reads each message back in 1 MiB pieces: octets and SHA-256, nothing kept."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.digests: list[str] = []
        self.lock = threading.Lock()

    def deliver(self, envelope: Envelope) -> Any:
        assert envelope.message is not None
        digest = hashlib.sha256()
        size = 0
        while piece := envelope.message.read(MIB):
            size += len(piece)
            digest.update(piece)
        with self.lock:
            self.sizes.append(size)
            self.digests.append(digest.hexdigest())
        return None


def write_message(path: Path) -> tuple[int, str]:
    piece = b"Subject: big\r\n\r\n" + LINE * ((MIB - 16) // len(LINE))
    body_piece = LINE * (MIB // len(LINE))
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as file:
        for index in range(PIECES):
            data = piece if index == 0 else body_piece
            file.write(data)
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


def test_200_mb_message_streams_in_bounded_client_memory(tmp_path: Path, sock_path: str) -> None:
    started = time.monotonic()
    message = tmp_path / "big.eml"
    size, digest = write_message(message)
    assert size > 199 * MIB
    handler = CountingHandler()
    limits = Limits(max_message_size=256 * MIB)
    with running_server("blocking", handler, socket_path=sock_path, limits=limits):
        run = subprocess.run(
            [sys.executable, "-c", CLIENT, str(message), sock_path],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["outcomes"] == [["delivered", 250], ["delivered", 250]]
    assert handler.sizes == [size]  # the whole message, once, with two recipients
    assert handler.digests == [digest]  # byte for byte (it already had CRLF line ends)
    growth_mib = (report["end_kib"] - report["start_kib"]) / 1024  # ru_maxrss is in KiB
    assert growth_mib < 64, f"client peak RSS grew by {growth_mib:.1f} MiB"
    assert time.monotonic() - started < 15
