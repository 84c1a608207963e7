"""One transaction's bookkeeping on the client: who is accepted, and each outcome.

How it works: a Transaction holds one slot per recipient given, in order (duplicates
are separate slots: LMTP pairs replies by position, never by address). Replies are
applied as they arrive: MAIL, then one per RCPT, then the DATA or BDAT replies, then
one per accepted recipient after the end of data, in RCPT order. When the connection
ends early, lost() fills the empty slots: UNKNOWN once the end of data was written
(the server may have stored the message), otherwise TEMPORARY (it cannot have been
stored); the stage is DATA for a recipient accepted at RCPT and RCPT for one whose RCPT
reply never came. DELIVERED only ever comes from a 2xx reply after the data.

One delivery may need several transactions when the server limits recipients per
transaction: DeliveryPlan hands out batches (at most the server's LIMITS RCPTMAX, RFC
9422, or the client's own cap), and after each result it puts back the recipients the
server deferred for that reason (RFC 5321 4.5.3.1.10: 452, enhanced 4.5.3 if any, after
an earlier recipient of the same transaction was accepted) for one more try each; the
number accepted before the first such refusal becomes the cap of later batches. result()
is one TransactionResult in the caller's order; recipients never tried are TEMPORARY.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from ._events import MailFrom, RcptTo, Reply

__all__ = ["DeliveryPlan", "RecipientResult", "Stage", "Status", "TransactionResult"]


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


class Stage(enum.StrEnum):
    """Where the outcome was decided: the envelope (MAIL or RCPT), the data, or here,
    before the server was asked (LOCAL: the message or this recipient cannot be
    carried to this server, e.g. over its SIZE, or SMTPUTF8 needed and not offered)."""

    RCPT = "rcpt"
    DATA = "data"
    LOCAL = "local"


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome for one recipient of a delivery, in the order the recipients were
    given: its status, the server's reply if one came, the stage, and why in words
    when there is no reply."""

    recipient: str
    status: Status
    #: The server's reply, or None when none came (the connection ended first) or
    #: none exists (a LOCAL decision).
    reply: Reply | None
    #: Where it was decided: RCPT (the envelope), DATA or LOCAL. When the connection
    #: ended before the reply came, the stage the recipient had reached: DATA once it
    #: was accepted at RCPT, else RCPT.
    stage: Stage
    #: Why, in words, when there is no reply: a LOCAL decision, or how the connection
    #: ended. (With a reply, its text says why.)
    reason: str | None = None


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
        "sent",
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
        #: Indices of the recipients given to the server (not refused here), in order.
        self.sent = list(range(len(rcpts)))
        #: Indices of recipients accepted at RCPT, in RCPT order.
        self.accepted: list[int] = []
        self.mail_ok: bool | None = None
        self.rcpt_replies = 0
        #: The end of data (final dot or BDAT LAST) was handed to the driver, and the
        #: driver did not report the write that carried it as failed.
        self.end_sent = False
        #: Replies received after the end of data so far.
        self.finals = 0

    def _set(
        self,
        index: int,
        status: Status,
        reply: Reply | None,
        stage: Stage,
        reason: str | None = None,
    ) -> None:
        if self.slots[index] is None:
            address = self.rcpts[index].address
            self.slots[index] = RecipientResult(address, status, reply, stage, reason)

    def refuse(self, reason: str, indices: Sequence[int] | None = None) -> None:
        """PERMANENT here, without the server: the message (indices None) or these
        recipients cannot be carried to it."""
        for index in range(len(self.rcpts)) if indices is None else indices:
            self._set(index, Status.PERMANENT, None, Stage.LOCAL, reason)
        self.sent = [index for index in self.sent if self.slots[index] is None]

    def distrust(self, reason: str) -> None:
        """More replies came than were due: no outcome after the data can be paired
        with certainty, so none of them stands as delivered (or failed): UNKNOWN."""
        for index, slot in enumerate(self.slots):
            if slot is not None and slot.stage is Stage.DATA:
                self.slots[index] = RecipientResult(
                    slot.recipient, Status.UNKNOWN, slot.reply, Stage.DATA, reason
                )

    def on_mail(self, reply: Reply) -> None:
        self.mail_ok = reply.code < 300
        if not self.mail_ok:
            for index in self.sent:
                self._set(index, _status(reply), reply, Stage.RCPT)

    def on_rcpt(self, reply: Reply) -> None:
        index = self.sent[self.rcpt_replies]
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

    def lost(self, reason: str) -> None:
        # Once the end of data was written, the server may have stored the message for
        # anyone it did not refuse (with pipelined BDAT LAST, even before we read the
        # RCPT replies); before that, it cannot have stored it for anyone.
        status = Status.UNKNOWN if self.end_sent else Status.TEMPORARY
        accepted = set(self.accepted)
        for index in range(len(self.rcpts)):
            stage = Stage.DATA if index in accepted else Stage.RCPT
            self._set(index, status, None, stage, reason)

    def result(self) -> TransactionResult:
        assert all(slot is not None for slot in self.slots)
        return TransactionResult(tuple(slot for slot in self.slots if slot is not None))


def _deferred_for_limit(result: RecipientResult) -> bool:
    reply = result.reply
    return (
        result.stage is Stage.RCPT
        and reply is not None
        and reply.code == 452
        and reply.enhanced in (None, "4.5.3")
    )


class DeliveryPlan:
    """The transactions one message needs for its recipients (see the module comment).

    Use: ``while (batch := plan.next_batch(rcptmax)) is not None``: run a transaction
    for ``batch`` (the recipients as given, in order) and give its result to
    ``record()``; then ``result()``. ``per_transaction`` is the client's own cap (None:
    none). One transaction for everyone, the common case, costs next to nothing: its
    result is returned as it came."""

    __slots__ = ("_rcpts", "_cap", "_pending", "_retried", "_batch", "_slots", "_whole")

    def __init__(
        self, recipients: Sequence[str | RcptTo], per_transaction: int | None = None
    ) -> None:
        self._rcpts = recipients
        self._cap = per_transaction
        self._pending = list(range(len(recipients)))  # indices still to try
        self._retried: set[int] = set()
        self._batch: list[int] = []
        self._slots: list[RecipientResult | None] = [None] * len(recipients)
        self._whole: TransactionResult | None = None  # one transaction said it all

    @property
    def more(self) -> bool:
        """More than one transaction is already known to be needed (or under way)."""
        return len(self._pending) > (self._cap or len(self._pending))

    def next_batch(self, rcptmax: int | None = None) -> Sequence[str | RcptTo] | None:
        """The recipients of the next transaction, or None when every one has a result."""
        pending = self._pending
        if not pending:
            return None
        size = len(pending)
        for limit in (self._cap, rcptmax):
            if limit and limit < size:
                size = limit
        if size == len(self._rcpts):  # everyone at once
            self._batch, self._pending = pending, []
            return self._rcpts
        self._batch, self._pending = pending[:size], pending[size:]
        return [self._rcpts[i] for i in self._batch]

    def record(self, result: TransactionResult) -> None:
        """The result of the transaction for the last batch."""
        outcomes = result.recipients
        assert len(outcomes) == len(self._batch)
        if len(outcomes) == len(self._rcpts) and not any(map(_deferred_for_limit, outcomes)):
            self._whole, self._slots, self._batch = result, list(outcomes), []
            return
        self._whole = None
        accepted = 0  # accepted at RCPT so far, in RCPT order
        limit = None  # how many the server took before its first deferral
        deferred = []
        for index, outcome in zip(self._batch, outcomes, strict=True):
            self._slots[index] = outcome
            if outcome.stage is Stage.DATA:
                accepted += 1
            elif accepted and index not in self._retried and _deferred_for_limit(outcome):
                self._retried.add(index)
                deferred.append(index)
                limit = accepted if limit is None else limit
        if limit is not None:  # the server showed its limit: later batches keep to it
            self._cap = min(self._cap or limit, limit)
        self._pending = sorted(self._pending + deferred)
        self._batch = []

    def abandon(self) -> None:
        """No more transactions (the connection ended): what is left stays as it is."""
        self._pending = []

    def result(self) -> TransactionResult:
        """One outcome per recipient given, in order; never tried: TEMPORARY at RCPT."""
        if self._whole is not None:
            return self._whole
        return TransactionResult(
            tuple(
                slot or RecipientResult(_address(rcpt), Status.TEMPORARY, None, Stage.RCPT)
                for slot, rcpt in zip(self._slots, self._rcpts, strict=True)
            )
        )


def _address(rcpt: str | RcptTo) -> str:
    return rcpt.address if isinstance(rcpt, RcptTo) else rcpt
