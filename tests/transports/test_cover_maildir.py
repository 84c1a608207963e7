"""transports/maildir.py: a copy that fails while it is written. That recipient alone
gets 451 4.3.0, nothing of its copy is left in tmp/ or new/ (so nothing unacknowledged
is ever delivered), the failure is logged without the message, and the next delivery to
it stores normally; the other recipients of the same message are stored."""

from __future__ import annotations

import errno
import io
import logging
from pathlib import Path

import pytest

from transports import Envelope
from transports.maildir import NOT_STORED, STORED, MaildirHandler

BODY = b"Subject: m\r\n\r\nbody\r\n"


class FailsOnce(io.BytesIO):
    """A spooled message whose first read fails (a disk error), later ones work."""

    failed = False

    def read(self, size: int | None = -1) -> bytes:
        if not self.failed:
            self.failed = True
            raise OSError(errno.EIO, "Input/output error")
        return super().read(size)


def files(folder: Path) -> dict[str, list[str]]:
    return {sub: sorted(p.name for p in (folder / sub).iterdir()) for sub in ("tmp", "new")}


def test_a_copy_that_fails_is_removed_and_only_its_recipient_gets_451(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    handler = MaildirHandler(tmp_path)
    envelope = Envelope(
        sender="s@x.org", recipients=["first@x.org", "second@x.org"], message=FailsOnce(BODY)
    )
    with caplog.at_level(logging.ERROR, logger="transports.maildir"):
        replies = handler.deliver(envelope)
    assert replies == [NOT_STORED, STORED]
    assert files(handler.folder("first@x.org")) == {"tmp": [], "new": []}
    second = files(handler.folder("second@x.org"))
    assert second["tmp"] == [] and len(second["new"]) == 1
    copy = (handler.folder("second@x.org") / "new" / second["new"][0]).read_bytes()
    assert copy == b"Return-Path: <s@x.org>\r\nDelivered-To: second@x.org\r\n" + BODY
    assert "could not store a message for first@x.org" in caplog.text
    assert "body" not in caplog.text

    # The folder is made again (it may be what failed) and the next copy is stored.
    again = Envelope(sender="s@x.org", recipients=["first@x.org"], message=io.BytesIO(BODY))
    assert handler.deliver(again) == [STORED]
    assert len(files(handler.folder("first@x.org"))["new"]) == 1
