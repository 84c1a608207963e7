"""lmtp_core.DeliveryPlan on its own: batches, recipients put back after a 452, the result.

How it works: a test builds a plan for some recipients, asks next_batch() for the RCPTs of
each transaction, and feeds record() a TransactionResult it makes up with the helpers below
(accepted and delivered after the data, refused at RCPT with a given code and enhanced code,
or failed after the data), the way a driver would feed it a real one. The hypothesis test
plays whole deliveries: random recipient counts, caps (the client's recipients_per_transaction
and the server's RCPTMAX), random RCPT outcomes for every try and an optional abandon(), and
checks the plan's promises: batches within the caps, never one recipient twice in a batch,
every recipient tried at most twice and only retried after a 452 (enhanced 4.5.3 or none) in a
transaction that accepted someone, and one result per recipient given, in order, each the
outcome of its last try (TEMPORARY at RCPT, without a reply, if never tried).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmtp_core import DeliveryPlan, RcptTo, RecipientResult, Reply, Stage, Status, TransactionResult

# When an example fails, hypothesis imports libcst to suggest a patch, and that import warns;
# with filterwarnings = ["error"] the session would end in an INTERNALERROR. Import it quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    with contextlib.suppress(ImportError):
        import hypothesis.extra._patching  # noqa: F401

A, B, C, D, E = (f"{x}@example.org" for x in "abcde")


def plan_for(addresses: Sequence[str], per_transaction: int | None = None) -> DeliveryPlan:
    return DeliveryPlan([RcptTo(a) for a in addresses], per_transaction)


def delivered(address: str) -> RecipientResult:
    return RecipientResult(address, Status.DELIVERED, Reply(250, "2.0.0", "saved"), Stage.DATA)


def refused(address: str, code: int = 452, enhanced: str | None = "4.5.3") -> RecipientResult:
    reply = Reply(code, enhanced, "no")
    status = Status.TEMPORARY if code < 500 else Status.PERMANENT
    return RecipientResult(address, status, reply, Stage.RCPT)


def failed_after_data(address: str, code: int = 452, enhanced: str = "4.2.2") -> RecipientResult:
    return RecipientResult(address, Status.TEMPORARY, Reply(code, enhanced, "full"), Stage.DATA)


def addresses(batch: Sequence[str | RcptTo] | None) -> list[str] | None:
    return None if batch is None else [r if isinstance(r, str) else r.address for r in batch]


def record(plan: DeliveryPlan, *outcomes: RecipientResult) -> None:
    plan.record(TransactionResult(outcomes))


def summary(result: TransactionResult) -> list[tuple[str, Status, Stage, int | None]]:
    return [
        (r.recipient, r.status, r.stage, r.reply.code if r.reply else None)
        for r in result.recipients
    ]


# ---- batches ----------------------------------------------------------------------------------


def test_one_batch_without_any_limit() -> None:
    plan = plan_for([A, B, C])
    assert not plan.more
    assert addresses(plan.next_batch()) == [A, B, C]
    record(plan, delivered(A), delivered(B), delivered(C))
    assert plan.next_batch() is None
    assert plan.result() == TransactionResult((delivered(A), delivered(B), delivered(C)))


def test_per_transaction_cap_makes_batches() -> None:
    plan = plan_for([A, B, C, D, E], per_transaction=2)
    assert plan.more
    batches = []
    while (batch := plan.next_batch()) is not None:
        batches.append(addresses(batch))
        record(plan, *(delivered(a) for a in addresses(batch) or []))
    assert batches == [[A, B], [C, D], [E]]
    assert plan.result().all_delivered
    assert [r.recipient for r in plan.result().recipients] == [A, B, C, D, E]


@pytest.mark.parametrize(
    ("per_transaction", "rcptmax", "size"),
    [(None, 2, 2), (3, 2, 2), (2, 3, 2), (1, None, 1), (None, None, 5), (9, 9, 5)],
)
def test_the_smaller_of_cap_and_rcptmax_wins(
    per_transaction: int | None, rcptmax: int | None, size: int
) -> None:
    plan = plan_for([A, B, C, D, E], per_transaction)
    assert len(plan.next_batch(rcptmax) or []) == size


def test_rcptmax_is_read_at_each_batch() -> None:
    plan = plan_for([A, B, C, D, E])
    assert not plan.more  # the server's RCPTMAX is not the plan's to know beforehand
    first = plan.next_batch(3)
    assert addresses(first) == [A, B, C]
    record(plan, delivered(A), delivered(B), delivered(C))
    assert addresses(plan.next_batch(1)) == [D]


def test_recipients_come_back_as_given() -> None:
    b = RcptTo(B, (("NOTIFY", "NEVER"),))
    plan = DeliveryPlan([A, b, C], per_transaction=2)
    first = plan.next_batch()
    assert first is not None and list(first) == [A, b]  # a str stays a str, params kept
    record(plan, delivered(A), delivered(B))
    assert list(plan.next_batch() or []) == [C]
    assert [r.recipient for r in plan.result().recipients] == [A, B, C]


def test_duplicates_are_separate_slots() -> None:
    plan = plan_for([A, A, B], per_transaction=2)
    assert addresses(plan.next_batch()) == [A, A]
    record(plan, delivered(A), refused(A, 550, "5.2.2"))
    assert addresses(plan.next_batch()) == [B]
    record(plan, delivered(B))
    assert summary(plan.result()) == [
        (A, Status.DELIVERED, Stage.DATA, 250),
        (A, Status.PERMANENT, Stage.RCPT, 550),
        (B, Status.DELIVERED, Stage.DATA, 250),
    ]


# ---- recipients put back after a 452 ----------------------------------------------------------


@pytest.mark.parametrize("enhanced", ["4.5.3", None])
def test_452_after_an_acceptance_is_retried_once(enhanced: str | None) -> None:
    plan = plan_for([A, B, C, D])
    plan.next_batch()
    record(plan, delivered(A), delivered(B), refused(C, 452, enhanced), refused(D, 452, enhanced))
    assert addresses(plan.next_batch()) == [C, D]
    record(plan, delivered(C), refused(D, 452, enhanced))  # the second refusal stands
    assert plan.next_batch() is None
    assert summary(plan.result()) == [
        (A, Status.DELIVERED, Stage.DATA, 250),
        (B, Status.DELIVERED, Stage.DATA, 250),
        (C, Status.DELIVERED, Stage.DATA, 250),
        (D, Status.TEMPORARY, Stage.RCPT, 452),
    ]


def test_an_accepted_recipient_failing_after_the_data_counts_as_accepted() -> None:
    plan = plan_for([A, B])
    plan.next_batch()
    record(plan, failed_after_data(A), refused(B))
    assert addresses(plan.next_batch()) == [B]


def test_deferred_recipients_go_back_in_the_callers_order() -> None:
    plan = plan_for([A, B, C, D, E], per_transaction=3)
    assert addresses(plan.next_batch()) == [A, B, C]
    record(plan, delivered(A), delivered(B), refused(C))
    assert addresses(plan.next_batch()) == [C, D]  # C before the untried D and E
    record(plan, delivered(C), delivered(D))
    assert addresses(plan.next_batch()) == [E]


@pytest.mark.parametrize(
    "refusal",
    [
        refused(B, 452, "4.2.2"),  # mailbox full at RCPT: not a limit
        refused(B, 451, "4.5.3"),
        refused(B, 552, "5.5.3"),
        refused(B, 550, "5.1.1"),
        failed_after_data(B, 452, "4.5.3"),  # after the data: never a recipient limit
    ],
    ids=["452-4.2.2", "451-4.5.3", "552-5.5.3", "550", "452-after-data"],
)
def test_other_refusals_are_not_retried(refusal: RecipientResult) -> None:
    plan = plan_for([A, B])
    plan.next_batch()
    record(plan, delivered(A), refusal)
    assert plan.next_batch() is None
    assert plan.result().recipients[1] == refusal


def test_452_without_any_acceptance_is_not_retried() -> None:
    plan = plan_for([A, B])
    plan.next_batch()
    record(plan, refused(A), refused(B))
    assert plan.next_batch() is None
    assert summary(plan.result()) == [
        (A, Status.TEMPORARY, Stage.RCPT, 452),
        (B, Status.TEMPORARY, Stage.RCPT, 452),
    ]


def test_452_for_a_single_recipient_is_not_retried() -> None:
    plan = plan_for([A, B], per_transaction=1)
    plan.next_batch()
    record(plan, refused(A))
    assert addresses(plan.next_batch()) == [B]  # the next recipient, not A again
    record(plan, delivered(B))
    assert plan.next_batch() is None


def test_452_before_any_acceptance_is_not_retried_even_if_later_ones_were_accepted() -> None:
    plan = plan_for([A, B, C])
    plan.next_batch()
    record(plan, refused(A), delivered(B), delivered(C))
    assert plan.next_batch() is None


@pytest.mark.parametrize("per_transaction", [None, 4])
def test_the_limit_the_server_showed_caps_later_batches(per_transaction: int | None) -> None:
    plan = plan_for([A, B, C, D, E, A, B], per_transaction)
    first = addresses(plan.next_batch())
    assert first == [A, B, C, D, E, A, B][: per_transaction or 7]
    record(plan, delivered(A), delivered(B), *(refused(a) for a in first[2:]))
    batches = []
    while (batch := plan.next_batch()) is not None:  # at most the 2 the server took
        batches.append(addresses(batch))
        record(plan, *(delivered(a) for a in addresses(batch) or []))
    assert batches == [[C, D], [E, A], [B]]
    assert plan.result().all_delivered


def test_rcptmax_below_the_limit_the_server_showed_still_wins() -> None:
    plan = plan_for([A, B, C, D, E])
    plan.next_batch()
    record(plan, delivered(A), delivered(B), delivered(C), refused(D), refused(E))
    assert addresses(plan.next_batch(1)) == [D]


# ---- abandon() and result() -------------------------------------------------------------------


def test_never_tried_recipients_are_temporary_at_rcpt_without_a_reply() -> None:
    plan = plan_for([A, B])
    assert summary(plan.result()) == [
        (A, Status.TEMPORARY, Stage.RCPT, None),
        (B, Status.TEMPORARY, Stage.RCPT, None),
    ]


def test_abandon_leaves_the_rest_as_it_is() -> None:
    plan = plan_for([A, B, C, D], per_transaction=2)
    plan.next_batch()
    record(plan, delivered(A), refused(B))  # B deferred
    plan.abandon()
    assert plan.next_batch() is None
    assert summary(plan.result()) == [
        (A, Status.DELIVERED, Stage.DATA, 250),
        (B, Status.TEMPORARY, Stage.RCPT, 452),  # keeps its 452
        (C, Status.TEMPORARY, Stage.RCPT, None),  # never tried
        (D, Status.TEMPORARY, Stage.RCPT, None),
    ]


def test_no_recipients_no_batch() -> None:
    plan = plan_for([])
    assert plan.next_batch() is None
    assert plan.result() == TransactionResult(())


# ---- a property over whole deliveries ---------------------------------------------------------

#: What one try of one recipient can come to; the first four are refusals at RCPT.
KINDS = ["452-4.5.3", "452-bare", "452-4.2.2", "550", "lost-rcpt", "ok", "full", "unknown"]
LIMIT_KINDS = {"452-4.5.3", "452-bare"}


def outcome(address: str, kind: str) -> RecipientResult:
    if kind == "452-4.5.3":
        return refused(address)
    if kind == "452-bare":
        return refused(address, 452, None)
    if kind == "452-4.2.2":
        return refused(address, 452, "4.2.2")
    if kind == "550":
        return refused(address, 550, "5.1.1")
    if kind == "lost-rcpt":
        return RecipientResult(address, Status.TEMPORARY, None, Stage.RCPT)
    if kind == "ok":
        return delivered(address)
    if kind == "full":
        return failed_after_data(address)
    return RecipientResult(address, Status.UNKNOWN, None, Stage.DATA)


@settings(max_examples=300, deadline=None)
@given(
    count=st.integers(1, 12),
    per_transaction=st.none() | st.integers(1, 5),
    rcptmax=st.none() | st.integers(1, 5),
    abandon_after=st.none() | st.integers(0, 6),
    data=st.data(),
)
def test_every_recipient_ends_with_one_outcome_after_at_most_two_tries(
    count: int,
    per_transaction: int | None,
    rcptmax: int | None,
    abandon_after: int | None,
    data: st.DataObject,
) -> None:
    names = [f"r{index % 4}@example.org" for index in range(count)]  # duplicates too
    rcpts = [RcptTo(n) for n in names]
    index_of = {id(r): i for i, r in enumerate(rcpts)}  # batches hand these objects back
    plan = DeliveryPlan(rcpts, per_transaction)
    cap = min(n for n in (per_transaction, rcptmax, count) if n)
    tries = [0] * count
    last: list[RecipientResult | None] = [None] * count
    first_kind: list[str | None] = [None] * count
    # for each recipient's first try: was someone of its transaction accepted before it,
    # and was anyone accepted at all
    accepted_before = [False] * count
    accepted_in_tx = [False] * count
    transactions = 0
    while (batch := plan.next_batch(rcptmax)) is not None:
        transactions += 1
        assert transactions <= 2 * count, "the plan does not end"
        assert 1 <= len(batch) <= cap
        indices = [index_of[id(r)] for r in batch]
        assert indices == sorted(set(indices)), "a batch is in the caller's order, no repeats"
        kinds = data.draw(
            st.lists(st.sampled_from(KINDS), min_size=len(batch), max_size=len(batch))
        )
        results = [outcome(names[i], k) for i, k in zip(indices, kinds, strict=True)]
        seen_accept = False
        for i, kind, one in zip(indices, kinds, results, strict=True):
            tries[i] += 1
            last[i] = one
            if tries[i] == 1:
                first_kind[i] = kind
                accepted_before[i] = seen_accept
                accepted_in_tx[i] = any(r.stage is Stage.DATA for r in results)
            seen_accept = seen_accept or one.stage is Stage.DATA
        plan.record(TransactionResult(tuple(results)))
        if abandon_after is not None and transactions > abandon_after:
            plan.abandon()
    result = plan.result()
    assert [r.recipient for r in result.recipients] == names
    for i in range(count):
        assert tries[i] <= 2
        if tries[i] == 2:  # retried only for a recipient limit, after an acceptance
            assert first_kind[i] in LIMIT_KINDS and accepted_in_tx[i]
        elif (
            tries[i] == 1
            and first_kind[i] in LIMIT_KINDS
            and accepted_before[i]
            and abandon_after is None
        ):
            raise AssertionError(f"recipient {i} deferred after an acceptance, never retried")
        if last[i] is None:
            assert abandon_after is not None, f"recipient {i} never tried"
            assert result.recipients[i] == RecipientResult(
                names[i], Status.TEMPORARY, None, Stage.RCPT
            )
        else:
            assert result.recipients[i] == last[i]
