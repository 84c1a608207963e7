"""Fixtures for interop tests against real LMTP peers (Dovecot, aiosmtpd, swaks, msmtp).

How it works: ``dovecot`` yields a started ``DovecotLMTP`` rooted in the test's ``tmp_path``;
``dovecot_tls`` does the same with a throwaway ``trustme`` CA and a server certificate for
``localhost``/``127.0.0.1`` and yields ``(server, ca)``.  ``swaks`` and ``msmtp`` give the paths of
those clients; ``tls_files`` writes a fresh trustme CA and server certificate for our own servers;
``socket_dir`` is a short private temporary directory for UNIX sockets (``tmp_path`` can be too
long for ``sun_path``).  When a peer is missing the tests are skipped, or failed when
``LMTP_REQUIRE_PEERS=1`` (for CI jobs that must run them).

Dovecot starts in a few tens of milliseconds but its master sleeps a fixed second while stopping,
so teardown only sends SIGTERM and the session-scoped ``_dovecot_reaper`` waits for every
instance (and removes its spool) at the end; several shutdowns thus overlap instead of adding a
second to every test.  Every test collected from this directory gets the ``interop`` marker.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import trustme
except ImportError:  # pragma: no cover - depends on the environment
    trustme = None  # type: ignore[assignment]

_HERE = Path(__file__).resolve().parent
# Make the helper importable as ``_dovecot`` whatever pytest's import mode is.
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from _dovecot import DovecotLMTP, dovecot_available, require_peer  # noqa: E402
from runtimes_interop import TLSFiles  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before -m filtering
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.interop)


@pytest.fixture(scope="session")
def _dovecot_reaper() -> Iterator[list[DovecotLMTP]]:
    """Instances whose shutdown was started; waited for (bounded) once, at session end."""
    stopping: list[DovecotLMTP] = []
    yield stopping
    errors = []
    for server in stopping:
        try:
            server.close()
        except Exception as exc:  # report all, not just the first
            errors.append(f"{server!r}: {exc}")
    if errors:
        raise RuntimeError("Dovecot instances did not stop cleanly:\n" + "\n".join(errors))


def _start(
    tmp_path: Path,
    reaper: list[DovecotLMTP],
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> DovecotLMTP:
    require_peer(dovecot_available())
    server = DovecotLMTP(tmp_path / "dovecot", tls_cert=tls_cert, tls_key=tls_key)
    reaper.append(server)
    server.start()
    return server


@pytest.fixture
def dovecot(tmp_path: Path, _dovecot_reaper: list[DovecotLMTP]) -> Iterator[DovecotLMTP]:
    """A started private Dovecot LMTP server (UNIX socket and 127.0.0.1 TCP, no TLS)."""
    server = _start(tmp_path, _dovecot_reaper)
    yield server
    server.terminate()


@pytest.fixture
def dovecot_tls(
    tmp_path: Path, _dovecot_reaper: list[DovecotLMTP]
) -> Iterator[tuple[DovecotLMTP, trustme.CA]]:
    """``(server, ca)``: Dovecot with ``ssl = yes`` and a cert from a fresh ``trustme.CA``."""
    require_peer(None if trustme is not None else "trustme not installed (pip install trustme)")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    cert_path = tls_dir / "server.pem"
    key_path = tls_dir / "server.key"
    cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_path))
    server = _start(tmp_path, _dovecot_reaper, tls_cert=cert_path, tls_key=key_path)
    yield server, ca
    server.terminate()


@pytest.fixture
def swaks() -> str:
    """Path of the ``swaks`` client."""
    path = shutil.which("swaks")
    require_peer(None if path else "swaks not installed (apt-get install swaks)")
    assert path is not None
    return path


@pytest.fixture
def msmtp() -> str:
    """Path of the ``msmtp`` client."""
    path = shutil.which("msmtp")
    require_peer(None if path else "msmtp not installed (apt-get install msmtp)")
    assert path is not None
    return path


@pytest.fixture
def tls_files(tmp_path: Path) -> TLSFiles:
    """A fresh trustme CA (``ca_file``) and a server certificate for localhost and 127.0.0.1."""
    require_peer(None if trustme is not None else "trustme not installed (pip install trustme)")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    tls_dir = tmp_path / "our-tls"
    tls_dir.mkdir()
    files = TLSFiles(tls_dir / "ca.pem", tls_dir / "server.pem", tls_dir / "server.key")
    ca.cert_pem.write_to_path(str(files.ca_file))
    files.cert_file.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(files.key_file))
    return files


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A short, private temporary directory for UNIX sockets; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="lmtp-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
