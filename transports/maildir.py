"""A Handler that stores each message once per accepted recipient in a Maildir.

How it works: each recipient has a Maildir (tmp/, new/, cur/) under DIR, named after
the address in its canonical form: quotes that change nothing dropped (`"bob"@x` is
`bob@x`), NFC, case-folded; that is also the form in which addresses are compared
with the known recipients and the reject list, so no spelling gets past them. The
folder is that form percent-encoded ("/" included, so an address cannot climb out of
DIR); when that is longer than FOLDER_NAME octets it is cut, and "=" and 32 hex digits
of the form's SHA-256 are added ("=" is always percent-encoded otherwise, so such a
name cannot be any other address's). An address that could not be written into a
header safely (control, format or separator characters: C0, C1, bidi overrides, line
separators) is refused at MAIL or RCPT.

For each recipient the message, with Return-Path and Delivered-To prepended as
Dovecot's LMTP does, is written to tmp/, flushed and fsynced, renamed into new/, and
the new/ directory is fsynced; only then does that recipient get its 250. If anything
fails the temporary file is removed and that recipient alone gets 451 4.3.0, so a
recipient is acknowledged exactly when its copy is safely on disk. The asyncio and
trio servers call deliver() in worker threads, several at once (mail_from and rcpt_to
only look at memory: they are marked @inline and run on the event loop): nothing here
shares state between calls but the (thread-safe) file name counter, and folders are
created with exist_ok.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import re
import shutil
import socket
import time
import unicodedata
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from lmtp_core import Params, Reply

from ._net import escape
from ._session import Envelope, Handler, inline

__all__ = ["FOLDER_NAME", "MaildirHandler", "canonical"]

log = logging.getLogger("transports.maildir")

REFUSED = Reply(550, "5.1.1", "No such user here")
BAD_SENDER = Reply(553, "5.1.7", "Sender address not accepted here")
BAD_RECIPIENT = Reply(553, "5.1.3", "Recipient address not accepted here")
STORED = Reply(250, "2.0.0", "Saved")
NOT_STORED = Reply(451, "4.3.0", "Could not store the message, try again later")
#: The longest folder name kept whole (octets; NAME_MAX is 255).
FOLDER_NAME = 200
_counter = itertools.count()
_HOST = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff"
_DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
_QUOTED_PAIR = re.compile(r"\\(.)")


def canonical(address: str) -> str:
    """The form MaildirHandler compares and names addresses in: a quoted local part
    that needs no quotes unquoted (minimally quoted otherwise), NFC, case-folded."""
    local, at, domain = address.rpartition("@")
    if at and len(local) >= 2 and local[0] == local[-1] == '"':
        inner = _QUOTED_PAIR.sub(r"\1", local[1:-1])
        if _DOT_ATOM.fullmatch(inner):
            local = inner
        else:
            local = '"' + inner.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return unicodedata.normalize("NFC", f"{local}{at}{domain}").casefold()


def _header_safe(address: str) -> bool:
    """Printable all through: no C0/C1 control, bidi override or line separator."""
    return address.isprintable()


class MaildirHandler(Handler):
    """Stores into DIR/<folder>/new/ (see the module comment for the folder names).

    `recipients`: the known addresses; others get 550 5.1.1 at RCPT (None: accept
    any address). `reject`: addresses refused even so."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        reject: Iterable[str] = (),
        recipients: Iterable[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.reject = {canonical(address) for address in reject}
        self.recipients = None if recipients is None else {canonical(a) for a in recipients}
        self._made: set[str] = set()  # folders whose tmp/, new/ and cur/ exist

    @inline  # checks in memory: not worth a thread
    def mail_from(self, sender: str, params: Params) -> Reply | None:
        return None if _header_safe(sender) else BAD_SENDER

    @inline
    def rcpt_to(self, recipient: str, params: Params) -> Reply | None:
        if not _header_safe(recipient):
            return BAD_RECIPIENT
        key = canonical(recipient)
        if key in self.reject or (self.recipients is not None and key not in self.recipients):
            return REFUSED
        return None

    def folder(self, recipient: str) -> Path:
        key = canonical(recipient)
        name = urllib.parse.quote(key, safe="@+-_")
        if len(name) > FOLDER_NAME:
            head = name[: FOLDER_NAME - 40]
            head = head[: head.rfind("%")] if "%" in head[-2:] else head  # no half escape
            name = f"{head}={hashlib.sha256(key.encode()).hexdigest()[:32]}"
        return self.root / name

    def deliver(self, envelope: Envelope) -> list[Reply]:
        assert envelope.message is not None
        replies = []
        for recipient in envelope.recipients:
            try:
                self.store(envelope, recipient)
            except OSError:
                log.exception("could not store a message for %s", escape(recipient))
                replies.append(NOT_STORED)
            else:
                replies.append(STORED)
        return replies

    def store(self, envelope: Envelope, recipient: str) -> Path:
        """Write one copy safely; return its path in new/."""
        folder = str(self.folder(recipient))
        if folder not in self._made:  # made once per process (again after a failure)
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(folder, sub), mode=0o700, exist_ok=True)
            self._made.add(folder)
        name = f"{time.time():.6f}.P{os.getpid()}Q{next(_counter)}.{_HOST}"
        tmp, new = os.path.join(folder, "tmp", name), os.path.join(folder, "new", name)
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
            directory = os.open(os.path.join(folder, "new"), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            # Not acknowledged, so not kept: neither the partial nor the renamed copy.
            self._made.discard(folder)
            for path in (tmp, new):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        return Path(new)
