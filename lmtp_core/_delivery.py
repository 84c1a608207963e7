"""One transaction's bookkeeping on the client: who is accepted, and each outcome.

How it works: a Transaction holds one slot per recipient given, in order (duplicates
are separate slots: LMTP pairs replies by position, never by address). Replies are
applied as they arrive: MAIL, then one per RCPT, then the DATA or BDAT replies, then
one per accepted recipient after the end of data, in RCPT order. When the connection
ends early, lost() fills the empty slots: UNKNOWN once the end of data was written
(the server may have stored the message), otherwise TEMPORARY (it cannot have been
stored); the stage is DATA for a recipient accepted at RCPT and RCPT for one whose RCPT
reply never came. DELIVERED only ever comes from a 2xx reply after the data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ._events import MailFrom, RcptTo, Reply

__all__ = ["RecipientResult", "Stage", "Status", "TransactionResult"]


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


class Stage(enum.StrEnum):
    """Where the outcome was decided: the envelope (MAIL or RCPT) or the data."""

    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    status: Status
    #: The server's reply, or None when the connection ended before it came.
    reply: Reply | None
    #: Where it was decided: RCPT (the envelope) or DATA. When the connection ended
    #: before the reply came, the stage the recipient had reached: DATA once it was
    #: accepted at RCPT, else RCPT.
    stage: Stage


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """One outcome per recipient given, in the order given."""

    recipients: tuple[RecipientResult, ...]

    @property
    def all_delivered(self) -> bool:
        return all(r.status is Status.DELIVERED for r in self.recipients)

    @property
    def delivered(self) -> tuple[RecipientResult, ...]:
        return self._with(Status.DELIVERED)

    @property
    def retry(self) -> tuple[RecipientResult, ...]:
        """Recipients worth another attempt: temporary failures and unknowns."""
        return self._with(Status.TEMPORARY, Status.UNKNOWN)

    @property
    def failed(self) -> tuple[RecipientResult, ...]:
        return self._with(Status.PERMANENT)

    def _with(self, *statuses: Status) -> tuple[RecipientResult, ...]:
        return tuple(r for r in self.recipients if r.status in statuses)


def _status(reply: Reply) -> Status:
    # The client never hands a 3xx here: it is a protocol error everywhere but DATA.
    if reply.code < 300:
        return Status.DELIVERED
    return Status.TEMPORARY if reply.is_transient else Status.PERMANENT


class Transaction:
    __slots__ = (
        "mail",
        "rcpts",
        "slots",
        "accepted",
        "mail_ok",
        "rcpt_replies",
        "end_sent",
        "finals",
    )

    def __init__(self, mail: MailFrom, rcpts: tuple[RcptTo, ...]) -> None:
        self.mail = mail
        self.rcpts = rcpts
        self.slots: list[RecipientResult | None] = [None] * len(rcpts)
        #: Indices of recipients accepted at RCPT, in RCPT order.
        self.accepted: list[int] = []
        self.mail_ok: bool | None = None
        self.rcpt_replies = 0
        #: The end of data (final dot or BDAT LAST) was handed to the driver, and the
        #: driver did not report the write that carried it as failed.
        self.end_sent = False
        #: Replies received after the end of data so far.
        self.finals = 0

    def _set(self, index: int, status: Status, reply: Reply | None, stage: Stage) -> None:
        if self.slots[index] is None:
            self.slots[index] = RecipientResult(self.rcpts[index].address, status, reply, stage)

    def on_mail(self, reply: Reply) -> None:
        self.mail_ok = reply.code < 300
        if not self.mail_ok:
            for index in range(len(self.rcpts)):
                self._set(index, _status(reply), reply, Stage.RCPT)

    def on_rcpt(self, reply: Reply) -> None:
        index = self.rcpt_replies
        self.rcpt_replies += 1
        if not self.mail_ok:
            return  # every slot already holds the MAIL reply
        if reply.code < 300:
            self.accepted.append(index)
        else:
            self._set(index, _status(reply), reply, Stage.RCPT)

    def on_data_failed(self, reply: Reply) -> None:
        """DATA or a BDAT chunk was refused: the message goes to nobody."""
        for index in self.accepted:
            self._set(index, _status(reply), reply, Stage.DATA)

    def on_final(self, reply: Reply) -> None:
        index = self.accepted[self.finals]
        self.finals += 1
        self._set(index, _status(reply), reply, Stage.DATA)

    @property
    def finals_due(self) -> int:
        return len(self.accepted) - self.finals

    def lost(self) -> None:
        # Once the end of data was written, the server may have stored the message for
        # anyone it did not refuse (with pipelined BDAT LAST, even before we read the
        # RCPT replies); before that, it cannot have stored it for anyone.
        status = Status.UNKNOWN if self.end_sent else Status.TEMPORARY
        accepted = set(self.accepted)
        for index in range(len(self.rcpts)):
            self._set(index, status, None, Stage.DATA if index in accepted else Stage.RCPT)

    def result(self) -> TransactionResult:
        assert all(slot is not None for slot in self.slots)
        return TransactionResult(tuple(slot for slot in self.slots if slot is not None))
