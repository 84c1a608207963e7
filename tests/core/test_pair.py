"""A client core and a server core joined in memory, driven by hypothesis.

How it works: ConnectionPair moves every byte one side writes into the other side's
receive_data(), so each side's output is checked by the other's parser. The server's
application is a policy that hypothesis chooses per recipient: accept or refuse at
RCPT (450/550), then one final reply after the data (250/452/552). A RuleBasedStateMachine
runs transactions with random envelopes (duplicate recipients included), random
bodies (dot lines, bare CR and LF, 8-bit bytes), DATA or BDAT, with or without STARTTLS,
and checks after every step: each recipient has exactly one outcome, and it is exactly
what the policy decided; the server sent exactly one final reply per accepted recipient;
the message the server received is the CRLF-normalised body. A transaction with every
recipient refused and DATA (pipelined behind them) ends the session: the server refuses
the DATA and closes, as a driver would, and the client sees the end of file and is
reusable no more; nothing else ever ends it but QUIT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from lmtp_core import (
    ClientConnection,
    ConnectionClosed,
    EndOfData,
    Limits,
    MailFrom,
    MessageData,
    RcptTo,
    Ready,
    Reply,
    ServerConnection,
    Signal,
    Stage,
    StartTls,
    Status,
    TransactionResult,
)

RCPT_REPLIES = [
    Reply(250, "2.1.5", "OK"),
    Reply(450, "4.2.1", "busy"),
    Reply(550, "5.1.1", "no such user"),
]
FINAL_REPLIES = [
    Reply(250, "2.0.0", "Saved"),
    Reply(452, "4.2.2", "full"),
    Reply(552, "5.2.2", "over quota"),
]
ADDRESSES = ["alice@example.org", "bob@example.org", "carol@example.org", '"d e"@example.org']


def normalise(body: bytes) -> bytes:
    out = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    return out if not out or out.endswith(b"\r\n") else out + b"\r\n"


@dataclass
class Policy:
    """What the server application says, decided in advance per recipient."""

    rcpt: list[Reply]
    final: list[Reply]
    received: list[bytes] = field(default_factory=list)
    finals_sent: int = 0
    ended: int = 0


class ConnectionPair:
    def __init__(self, *, chunking: bool, starttls: bool, chunk: int) -> None:
        limits = Limits(bdat_chunk=chunk)
        self.client = ClientConnection(chunking=chunking, require_starttls=starttls, limits=limits)
        self.server = ServerConnection("mx.example.org", tls_available=starttls, limits=limits)
        self.policy = Policy([], [])
        self.closed = ""  # why the server ended the session, once it has

    def serve(self) -> None:
        policy = self.policy
        while True:
            event = self.server.next_event()
            if event is Signal.NEED_DATA:
                return
            if isinstance(event, MailFrom):
                self.server.send(Reply(250, "2.1.0", "OK"))
            elif isinstance(event, RcptTo):
                self.server.send(policy.rcpt.pop(0))
            elif isinstance(event, MessageData):
                policy.received.append(event.data)
            elif isinstance(event, EndOfData):
                policy.ended += 1
                for _ in range(self.server.owed_replies):
                    self.server.send(policy.final[policy.finals_sent])
                    policy.finals_sent += 1
            elif isinstance(event, StartTls):
                self.client.receive_data(self.server.data_to_send())
                self.server.tls_established()
            elif isinstance(event, ConnectionClosed):
                # QUIT, or a DATA refused because no recipient was accepted
                assert event.reason in ("quit", "DATA refused"), event
                self.closed = event.reason
                return

    def step(self, body: list[bytes]) -> object:
        """Run until the client has something to say other than asking for I/O."""
        for _ in range(10_000):
            event = self.client.next_event()
            if event is Signal.NEED_DATA:
                if self.closed == "DATA refused":  # the server's driver closed the socket:
                    self.client.receive_eof()  # the client's next read is the end of file
                    continue
                self.server.receive_data(self.client.data_to_send())
                self.serve()
                self.client.receive_data(self.server.data_to_send())
            elif event is Signal.NEED_BODY:
                if body:
                    self.client.send_body(body.pop(0))
                else:
                    self.client.end_body()
            elif isinstance(event, StartTls):
                self.client.tls_established()
            else:
                return event
        raise AssertionError("no progress")


bodies = st.lists(
    st.binary(max_size=40).map(lambda b: b.replace(b"\x00", b""))
    | st.sampled_from([b".", b"\r\n.\r\n", b"\n.\n", b"\r", b"\n", b"..", b"\xc3\xa9"]),
    max_size=8,
)


class PairMachine(RuleBasedStateMachine):
    @initialize(
        chunking=st.booleans(), starttls=st.booleans(), chunk=st.sampled_from([64, 1 << 20])
    )
    def connect(self, chunking: bool, starttls: bool, chunk: int) -> None:
        self.options: dict[str, Any] = {"chunking": chunking, "starttls": starttls, "chunk": chunk}
        self.chunking = chunking
        self.results: list[TransactionResult] = []
        self.reconnect()

    @precondition(lambda self: not self.pair.client.reusable)
    @rule()
    def reconnect(self) -> None:
        """A new session (as a driver opens one when the server ended the last)."""
        self.pair = ConnectionPair(**self.options)
        event = self.pair.step([])
        assert isinstance(event, Ready), event

    @precondition(lambda self: self.pair.client.reusable)
    @rule(
        recipients=st.lists(st.sampled_from(ADDRESSES), min_size=1, max_size=5),
        data=st.data(),
        body=bodies,
    )
    def transaction(self, recipients: list[str], data: st.DataObject, body: list[bytes]) -> None:
        rcpt = [data.draw(st.sampled_from(RCPT_REPLIES)) for _ in recipients]
        final = [data.draw(st.sampled_from(FINAL_REPLIES)) for _ in recipients]
        accepted = [i for i, reply in enumerate(rcpt) if reply.code == 250]
        policy = self.pair.policy = Policy(list(rcpt), list(final))
        self.pair.client.start_transaction("sender@example.net", recipients)
        result = self.pair.step(list(body))
        assert isinstance(result, TransactionResult), result
        assert [r.recipient for r in result.recipients] == recipients
        for index, outcome in enumerate(result.recipients):
            if index in accepted:
                expected = final[accepted.index(index)]
                assert (outcome.reply, outcome.stage) == (expected, Stage.DATA)
            else:
                expected = rcpt[index]
                assert (outcome.reply, outcome.stage) == (expected, Stage.RCPT)
            status = {2: Status.DELIVERED, 4: Status.TEMPORARY, 5: Status.PERMANENT}
            assert outcome.status is status[expected.code // 100]
        assert policy.finals_sent == len(accepted)  # LMTP: one reply per accepted RCPT
        assert policy.ended == (1 if accepted else 0)
        if accepted:
            assert b"".join(policy.received) == normalise(b"".join(body))
        else:
            assert policy.received == []  # no recipient, no body
        # Only a refused DATA (every recipient refused, no CHUNKING) ends the session.
        refused_data = not accepted and not self.chunking
        assert (self.pair.closed == "DATA refused") == refused_data
        if refused_data:
            assert isinstance(self.pair.step([]), ConnectionClosed)
            assert not self.pair.client.reusable
        self.results.append(result)

    @invariant()
    def one_outcome_per_recipient_and_never_delivered_without_a_2xx(self) -> None:
        for result in getattr(self, "results", []):
            for outcome in result.recipients:
                if outcome.status is Status.DELIVERED:
                    assert outcome.reply is not None and outcome.reply.code // 100 == 2
                    assert outcome.stage is Stage.DATA

    def teardown(self) -> None:
        if hasattr(self, "pair") and self.pair.client.reusable:
            self.pair.client.quit()
            event = self.pair.step([])
            assert isinstance(event, ConnectionClosed) and event.reason == "quit"


PairMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=6,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestPair = PairMachine.TestCase
