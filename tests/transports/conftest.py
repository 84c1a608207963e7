"""Fixtures for the driver tests: short UNIX socket paths and throwaway TLS certificates.

How it works: ``sock_path`` is a socket path in a fresh directory from pytest's temporary
base (``tmp_path`` itself can exceed the 107-octet ``sun_path`` limit with long test ids).
``pki`` makes a trustme CA at test-session start and a server certificate for ``localhost``,
``mail.example.org`` and ``127.0.0.1`` signed by it, plus a second, unrelated CA; it writes the
CA certificates to PEM files (clients take ``cafile``) and builds server-side contexts on
demand. Nothing is written outside the temporary directories.

``_no_leaks`` (autouse) runs the garbage collector after every test and fails the test if
that closed a socket nobody closed: a leak is charged to the test that made it, instead of
surfacing as an unraisable ResourceWarning in whichever test runs next.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from transports import server_context

from .runtimes import collect_leaks

SERVER_NAME = "mail.example.org"


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    yield
    leaks = collect_leaks()
    assert not leaks, f"unclosed resources: {leaks}"


@pytest.fixture
def sock_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A UNIX socket path short enough for sun_path."""
    path = tmp_path_factory.mktemp("s") / "lmtp.sock"
    assert len(str(path).encode()) < 100
    return str(path)


@dataclass(frozen=True)
class PKI:
    ca_file: str  # the CA that signed the server certificate
    other_ca_file: str  # a CA that signed nothing we serve
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        """A server-side context for ssl_context= or starttls_context=."""
        return server_context(self.cert_file, self.key_file)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    directory: Path = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    leaf = ca.issue_cert("localhost", SERVER_NAME, "127.0.0.1")
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    other.cert_pem.write_to_path(str(directory / "other-ca.pem"))
    leaf.private_key_pem.write_to_path(str(directory / "key.pem"))
    chain = directory / "chain.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    return PKI(
        str(directory / "ca.pem"),
        str(directory / "other-ca.pem"),
        str(chain),
        str(directory / "key.pem"),
    )
