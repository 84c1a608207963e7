"""MaildirHandler behind our servers, over real sockets (issue 13, item 7).

An address that cannot go into a header safely (C1 control, bidi override, line
separator) is refused at MAIL or RCPT; addresses are compared and named in one canonical
form (needless quotes dropped, NFC, case-folded), so no spelling of a rejected address
gets past the reject list and every spelling of a known one lands in one folder; with
known recipients, the others get 550 5.1.1; without them, anyone is accepted; a valid
254-octet address is stored under a bounded folder name; concurrent first deliveries to
one new recipient (handler threads in the asyncio and trio servers) all store.
"""

from __future__ import annotations

import asyncio
import unicodedata
from pathlib import Path

import pytest

from transports import asyncio as lmtp_asyncio
from transports import blocking
from transports.maildir import FOLDER_NAME, MaildirHandler, canonical

from .runtimes import ASYNC_RUNTIMES, LoopThread
from .servers import Raw, code_of, serving

SENDER = "s@example.net"


def stored(root: Path) -> dict[str, int]:
    return {folder.name: len(list((folder / "new").iterdir())) for folder in root.iterdir()}


def test_canonical_form() -> None:
    assert canonical('"Bob"@Example.ORG') == "bob@example.org"
    assert canonical('"b\\ob"@x.example') == "bob@x.example"  # a quoted pair that changes nothing
    assert canonical('"a b"@x.example') == '"a b"@x.example'  # the quotes are needed
    assert canonical('"a\\"b"@x.example') == '"a\\"b"@x.example'
    nfd = unicodedata.normalize("NFD", "José@Exämple.org")
    assert canonical(nfd) == "josé@exämple.org"
    assert canonical("Postmaster") == "postmaster"


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_addresses_unsafe_in_a_header_are_refused(
    runtime: str, tmp_path: Path, sock_path: str
) -> None:
    handler = MaildirHandler(tmp_path / "m")
    with serving(runtime, handler, socket_path=sock_path), Raw(sock_path) as raw:
        raw.reply()
        raw.send(
            "LHLO c.example\r\nMAIL FROM:<ev\u0085il@example.net> SMTPUTF8\r\n"
            "MAIL FROM:<s@example.net> SMTPUTF8\r\n"
            "RCPT TO:<a\u202eb@example.org>\r\nRCPT TO:<line\u2028break@example.org>\r\n"
            "RCPT TO:<fine\u00e9@example.org>\r\nQUIT\r\n".encode()
        )
        codes = [code_of(r) for r in raw.replies(7)]
    assert codes == [
        b"250",
        b"553 5.1.7",
        b"250 2.1.0",
        b"553 5.1.3",
        b"553 5.1.3",
        b"250 2.1.5",
        b"221 2.0.0",
    ]


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_every_spelling_of_an_address_is_one_address(
    runtime: str, tmp_path: Path, sock_path: str
) -> None:
    root = tmp_path / "m"
    handler = MaildirHandler(
        root,
        reject=["nobody@example.org"],
        recipients=["alice@example.org", "nobody@example.org", "josé@example.org"],
    )
    nfd = unicodedata.normalize("NFD", "josé@example.org")
    recipients = [
        '"nobody"@example.org',  # rejected, however spelt
        "NoBody@Example.ORG",
        '"alice"@EXAMPLE.org',  # known, however spelt
        "ALICE@example.org",
        nfd,
        "stranger@example.org",  # unknown
    ]
    with serving(runtime, handler, socket_path=sock_path):
        result = blocking.deliver(b"hi\r\n", SENDER, recipients, socket_path=sock_path)
    codes = [(r.status.value, r.reply and r.reply.code) for r in result.recipients]
    assert codes == [("permanent", 550)] * 2 + [("delivered", 250)] * 3 + [("permanent", 550)]
    assert result.recipients[-1].reply is not None
    assert result.recipients[-1].reply.enhanced == "5.1.1"
    assert stored(root) == {"alice@example.org": 2, "jos%C3%A9@example.org": 1}


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_without_known_recipients_anyone_is_accepted(
    runtime: str, tmp_path: Path, sock_path: str
) -> None:
    with serving(runtime, MaildirHandler(tmp_path / "m"), socket_path=sock_path):
        result = blocking.deliver(
            b"hi\r\n", SENDER, ["a@example.org", "b@example.net"], socket_path=sock_path
        )
    assert result.all_delivered
    assert stored(tmp_path / "m") == {"a@example.org": 1, "b@example.net": 1}


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_a_254_octet_address_is_stored_under_a_bounded_folder(
    runtime: str, tmp_path: Path, sock_path: str
) -> None:
    local = "!#" * 32  # 64 octets, each percent-encoded in a folder name
    domain = ".".join(["d" * 63, "e" * 63, "f" * 57, "org"])
    address = f"{local}@{domain}"
    assert len(address) == 254
    root = tmp_path / "m"
    with serving(runtime, MaildirHandler(root), socket_path=sock_path):
        result = blocking.deliver(b"hi\r\n", SENDER, [address], socket_path=sock_path)
    assert result.all_delivered, result.recipients
    [folder] = root.iterdir()
    assert len(folder.name) <= FOLDER_NAME and "=" in folder.name
    assert folder == MaildirHandler(root).folder(address)
    [copy] = (folder / "new").iterdir()
    assert f"Delivered-To: {address}\r\n".encode() in copy.read_bytes()


@pytest.mark.parametrize("runtime", ASYNC_RUNTIMES)
def test_concurrent_first_deliveries_to_a_new_recipient_all_store(
    runtime: str, tmp_path: Path, sock_path: str
) -> None:
    root = tmp_path / "m"

    async def burst() -> list[bool]:
        async def one(n: int) -> bool:
            result = await lmtp_asyncio.deliver(
                b"m%d\r\n" % n, SENDER, ["new@example.org"], socket_path=sock_path, timeout=30
            )
            return result.all_delivered

        return await asyncio.gather(*(one(n) for n in range(16)))

    with (
        serving(runtime, MaildirHandler(root), socket_path=sock_path),
        LoopThread("asyncio") as loop,
    ):
        delivered = loop.call(burst)
    assert delivered == [True] * 16
    assert stored(root) == {"new@example.org": 16}
