"""ClientConnection.check_envelope(), which every driver's deliver() calls first, on a
recipient list that is a str: a str is a Sequence[str] too, so mypy accepts
deliver(message, sender, "c@example.org"); it is a TypeError that names the mistake,
not an "invalid recipient address 'c'"."""

from __future__ import annotations

import pytest

from lmtp_core import ClientConnection, LocalProtocolError, RcptTo


def test_a_str_for_the_recipient_list_is_a_type_error_naming_the_mistake() -> None:
    with pytest.raises(TypeError) as raised:
        ClientConnection.check_envelope("s@example.net", "c@example.org")
    message = str(raised.value)
    assert "recipients must be a list of addresses, not a str" in message
    assert "['c@example.org']" in message  # what to write instead
    assert "invalid" not in message


def test_an_empty_str_is_the_same_mistake() -> None:
    with pytest.raises(TypeError, match="not a str"):
        ClientConnection.check_envelope("s@example.net", "")


def test_sequences_of_addresses_pass() -> None:
    ClientConnection.check_envelope("s@example.net", ["c@example.org"])
    ClientConnection.check_envelope("", ("c@example.org", RcptTo("d@example.org")))


def test_the_other_checks_are_unchanged() -> None:
    with pytest.raises(LocalProtocolError, match="at least one recipient"):
        ClientConnection.check_envelope("s@example.net", [])
    with pytest.raises(LocalProtocolError, match="recipient"):
        ClientConnection.check_envelope("s@example.net", ["c"])
