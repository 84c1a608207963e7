"""The exceptions the core raises, and nothing else escapes it.

How it works: every error is a ProtocolError. LocalProtocolError means the caller
misused the API (an event that is illegal in this state, an address that would inject
a command); nothing is queued when it is raised and the connection is unchanged.
RemoteProtocolError means the peer broke the protocol; framing is lost, so the
connection moves to its ERROR state for good. Anything else escaping the core is a bug.
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class of every error the core raises."""


class LocalProtocolError(ProtocolError):
    """The caller asked for something the protocol or the peer does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol; the connection is unusable."""
