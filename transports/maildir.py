"""A Handler that stores each message once per accepted recipient in a Maildir.

How it works: DIR/<recipient>/ is a Maildir (created with the stdlib mailbox module).
For each recipient the message, with Return-Path and Delivered-To prepended as
Dovecot's LMTP does, is written to tmp/, flushed and fsynced, renamed into new/, and
the new/ directory is fsynced; only then does that recipient get its 250. If anything
fails the temporary file is removed and that recipient alone gets 451 4.3.0, so a
recipient is acknowledged exactly when its copy is safely on disk. Recipient names are
percent-encoded ("/" included) so an address cannot climb out of DIR.
"""

from __future__ import annotations

import itertools
import logging
import mailbox
import os
import shutil
import socket
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from lmtp_core import Params, Reply

from ._session import Envelope, Handler

__all__ = ["MaildirHandler"]

log = logging.getLogger("transports.maildir")

REFUSED = Reply(550, "5.1.1", "No such user here")
STORED = Reply(250, "2.0.0", "Saved")
NOT_STORED = Reply(451, "4.3.0", "Could not store the message, try again later")
_counter = itertools.count()


class MaildirHandler(Handler):
    def __init__(self, root: str | os.PathLike[str], *, reject: Iterable[str] = ()) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.reject = {address.lower() for address in reject}

    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        return REFUSED if recipient.lower() in self.reject else None

    def folder(self, recipient: str) -> Path:
        return self.root / urllib.parse.quote(recipient.lower(), safe="@+-_")

    def deliver(self, envelope: Envelope) -> list[Reply]:
        assert envelope.message is not None
        replies = []
        for recipient in envelope.recipients:
            try:
                self.store(envelope, recipient)
            except OSError:
                log.exception("could not store a message for %s", recipient)
                replies.append(NOT_STORED)
            else:
                replies.append(STORED)
        return replies

    def store(self, envelope: Envelope, recipient: str) -> Path:
        """Write one copy safely; return its path in new/."""
        folder = self.folder(recipient)
        mailbox.Maildir(folder, create=True)  # creates cur/, new/ and tmp/
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(_counter)}.{socket.gethostname()}"
        tmp, new = folder / "tmp" / name, folder / "new" / name
        header = f"Return-Path: <{envelope.sender}>\r\nDelivered-To: {recipient}\r\n"
        assert envelope.message is not None
        try:
            with open(tmp, "xb") as out:
                out.write(header.encode("utf-8"))
                envelope.message.seek(0)
                shutil.copyfileobj(envelope.message, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, new)
            directory = os.open(folder / "new", os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            # Not acknowledged, so not kept: neither the partial nor the renamed copy.
            tmp.unlink(missing_ok=True)
            new.unlink(missing_ok=True)
            raise
        return new
