"""lmtp_core: a sans-I/O LMTP (RFC 2033) protocol core, client and server roles.

Re-exports only; docs/guide/sansio.rst shows how to drive a connection. COMPILED is True when
the package runs compiled by mypyc (the optional accelerated build, docs/guide/compiled.rst).
"""

from ._body import BareLineEndings, LongLines, normalized_size
from ._client import Capabilities, ClientConnection, ClientState, Phase, Ready
from ._delivery import DeliveryPlan, RecipientResult, Stage, Status, TransactionResult
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import _COMPILED as COMPILED
from ._events import (
    ConnectionClosed,
    EndOfData,
    Lhlo,
    MailFrom,
    MessageData,
    MessageRefused,
    Params,
    Quit,
    RcptTo,
    Reply,
    Rset,
    Signal,
    StartTls,
)
from ._limits import Limits
from ._server import ServerConnection, ServerState

__all__ = [
    "COMPILED",
    "BareLineEndings",
    "Capabilities",
    "ClientConnection",
    "ClientState",
    "ConnectionClosed",
    "DeliveryPlan",
    "EndOfData",
    "Lhlo",
    "Limits",
    "LocalProtocolError",
    "LongLines",
    "MailFrom",
    "MessageData",
    "MessageRefused",
    "Params",
    "Phase",
    "ProtocolError",
    "Quit",
    "RcptTo",
    "Ready",
    "RecipientResult",
    "RemoteProtocolError",
    "Reply",
    "Rset",
    "ServerConnection",
    "ServerState",
    "Signal",
    "Stage",
    "StartTls",
    "Status",
    "TransactionResult",
    "normalized_size",
]
