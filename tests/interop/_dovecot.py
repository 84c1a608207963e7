"""A private Dovecot LMTP server for interop tests.

How it works: ``DovecotLMTP(base)`` writes its own ``dovecot.conf`` (and a passwd-file user list)
under ``base`` and runs ``dovecot -F -c base/dovecot.conf`` as a child process, so nothing from
``/etc/dovecot`` is used and the instance can be stopped and reaped reliably.  It listens on a
UNIX socket ``base/lmtp.sock`` and on ``127.0.0.1:<free port>``; ``start()`` polls both (with a
short backoff, no fixed sleeps) until each returns the ``220`` greeting, retrying on another
port if the chosen one was taken in the meantime.  ``stop()`` sends SIGTERM to the PID in
``<base_dir>/master.pid`` and waits for the master to exit.  Dovecot's master sleeps a fixed
second while shutting down its log process, so a stop takes about 1.1 s; ``terminate()`` plus a
later ``wait()`` lets callers overlap that with other work.

Mail is delivered as the system user ``lmtptest`` (Dovecot refuses uid 0), created on first use.
Dovecot's non-root processes (the mail user and the internal ``dovecot`` user used by auth) must
be able to reach the mail store, the raw logs and the user list.  When ``base`` is not reachable
for them (pytest's ``tmp_path`` lives under a mode-0700 directory), those live in a private
"spool" directory from ``tempfile.mkdtemp`` and ``base/mail``, ``base/rawlog`` and ``base/users``
are symlinks to it; the same happens for Dovecot's ``base_dir`` when paths under ``base`` would be
too long for UNIX sockets.  ``close()`` (or leaving the ``with`` block) stops Dovecot and removes
that spool.

Users (all ``@example.org``): ``alice`` and ``bob`` are delivered normally; ``quota`` is accepted at
RCPT and gets ``552 5.2.2`` after DATA; ``tempquota`` gets ``452 4.2.2`` after DATA; any other
address gets ``550 5.1.1`` at RCPT.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["DOMAIN", "MAIL_USER", "DovecotLMTP", "dovecot_available", "require_peer"]

DOMAIN = "example.org"
MAIL_USER = "lmtptest"
DH_PARAMS = Path("/usr/share/dovecot/dh.pem")

# Longest socket Dovecot creates under base_dir is "token-login/tokenlogin"; sun_path holds 107
# bytes plus NUL.  Keep a margin.
_MAX_SOCKET_PATH = 100
_LONGEST_BASE_DIR_SOCKET = "/token-login/tokenlogin"

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 10.0
# Normal children are gone ~0.15 s after SIGTERM; anything but the log process left after this
# is stuck (see DovecotLMTP.wait).
_STRAGGLER_GRACE = 0.5
_PORT_ATTEMPTS = 5

# passwd-file lines: user:password:uid:gid:gecos:home:shell:extra_fields
_USERS: dict[str, str] = {
    "alice": "",
    "bob": "",
    "quota": "userdb_quota_rule=*:bytes=1",
    "tempquota": "userdb_quota_rule=*:bytes=1 userdb_quota_full_tempfail=yes",
}

_LIBEXEC_CANDIDATES = (Path("/usr/lib/dovecot"), Path("/usr/libexec/dovecot"))


def _find_dovecot() -> str | None:
    found = shutil.which("dovecot")
    if found is None and os.access("/usr/sbin/dovecot", os.X_OK):
        found = "/usr/sbin/dovecot"
    return found


def _plugin_dir() -> Path | None:
    doveconf = shutil.which("doveconf") or "/usr/bin/doveconf"
    try:
        out = subprocess.run(
            [doveconf, "-c", "/dev/null", "-h", "mail_plugin_dir"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def dovecot_available() -> str | None:
    """Return None when a private Dovecot LMTP server can be run here, else a skip reason."""
    binary = _find_dovecot()
    if binary is None:
        return "dovecot not installed (apt-get install dovecot-core dovecot-lmtpd)"
    try:
        subprocess.run([binary, "--version"], capture_output=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"dovecot --version failed: {exc}"
    plugin_dir = _plugin_dir()
    libexec = [plugin_dir.parent] if plugin_dir is not None else []
    if not any((d / "lmtp").is_file() for d in [*libexec, *_LIBEXEC_CANDIDATES]):
        return "dovecot LMTP server not installed (apt-get install dovecot-lmtpd)"
    if plugin_dir is None or not any(plugin_dir.glob("lib*_quota_plugin.so")):
        return "dovecot quota plugin not found"
    if not DH_PARAMS.is_file():
        return f"{DH_PARAMS} missing (needed for ssl = yes)"
    if os.geteuid() != 0:
        return "running Dovecot LMTP as a separate mail user needs root"
    for internal in ("dovecot", "dovenull"):
        try:
            pwd.getpwnam(internal)
        except KeyError:
            return f"Dovecot's internal user {internal!r} is missing (reinstall dovecot-core)"
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            return f"mail user {MAIL_USER!r} missing and useradd not available"
    return None


def require_peer(reason: str | None) -> None:
    """Skip the test when ``reason`` names a missing peer; fail instead if LMTP_REQUIRE_PEERS=1."""
    if reason is None:
        return
    import pytest

    if os.environ.get("LMTP_REQUIRE_PEERS") == "1":
        pytest.fail(f"LMTP_REQUIRE_PEERS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _ensure_mail_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(MAIL_USER)
    except KeyError:
        pass
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            MAIL_USER,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    # Exit status 9: created concurrently by someone else; fine.
    if result.returncode not in (0, 9):
        raise RuntimeError(f"useradd {MAIL_USER} failed: {result.stderr.strip()}")
    return pwd.getpwnam(MAIL_USER)


def _traversable_by(path: Path, uids: list[tuple[int, int]]) -> bool:
    """True when every directory from / down to ``path`` is searchable by all (uid, gid)."""
    for directory in [path, *path.parents]:
        try:
            st = directory.stat()
        except OSError:
            return False
        for uid, gid in uids:
            if st.st_uid == uid:
                bit = stat.S_IXUSR
            elif st.st_gid == gid:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not st.st_mode & bit:
                return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read_greeting(family: socket.AddressFamily, address: str | tuple[str, int]) -> bytes:
    """Connect, read the greeting line, QUIT politely; raise OSError when not ready."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(address)
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = sock.recv(512)
            if not chunk:
                raise ConnectionError(f"connection closed before greeting: {data!r}")
            data += chunk
        if not data.startswith(b"220 "):
            raise ConnectionError(f"unexpected greeting {data!r}")
        sock.sendall(b"QUIT\r\n")
        try:
            while sock.recv(512):
                pass
        except OSError:
            pass
        return data.rstrip(b"\r\n")


def _kill_children(parent: int, *, spare: set[str]) -> None:
    """SIGKILL the children of ``parent`` (found via /proc) except those named in ``spare``."""
    proc_root = Path("/proc")
    if not proc_root.is_dir():
        return
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may contain spaces, so split after the last ")".
        comm = raw[raw.find("(") + 1 : raw.rfind(")")]
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) < 2 or int(fields[1]) != parent or comm in spare or fields[0] == "Z":
            continue
        with contextlib.suppress(OSError):
            os.kill(int(entry.name), signal.SIGKILL)


def _listdir(directory: Path) -> list[Path]:
    return list(directory.iterdir()) if directory.is_dir() else []


_PREPENDED = (b"return-path", b"delivered-to", b"received")


class DovecotLMTP:
    """A private Dovecot LMTP instance rooted at ``base`` (see the module docstring)."""

    host = "127.0.0.1"
    domain = DOMAIN
    mail_user = MAIL_USER

    def __init__(
        self, base: Path, *, tls_cert: Path | None = None, tls_key: Path | None = None
    ) -> None:
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("give both tls_cert and tls_key, or neither")
        self.base = Path(base).absolute()
        self.tls_cert = Path(tls_cert).absolute() if tls_cert is not None else None
        self.tls_key = Path(tls_key).absolute() if tls_key is not None else None
        self.socket_path = self.base / "lmtp.sock"
        self.config_path = self.base / "dovecot.conf"
        self.log_path = self.base / "dovecot.log"
        self.stderr_path = self.base / "dovecot.stderr"
        self.state_dir = self.base / "state"
        self.base_dir = self.base / "run"
        self.mail_root = self.base / "mail"
        self.rawlog_dir = self.base / "rawlog"
        self.users_path = self.base / "users"
        self.instance_name = f"lmtptest-{os.getpid()}-{id(self):x}"
        self.port = 0
        self.greeting = b""
        self._proc: subprocess.Popen[bytes] | None = None
        self._spool: Path | None = None
        self._probe_rawlogs: set[str] = set()
        self._version: str | None = None
        self._terminated_at: float | None = None
        # Where things really are (differs from the paths above when a spool is used).
        self._mail_real = self.mail_root
        self._rawlog_real = self.rawlog_dir
        self._users_real = self.users_path
        self._base_dir_real = self.base_dir

    # ----------------------------------------------------------------- context manager

    def __enter__(self) -> DovecotLMTP:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- facts

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def version(self) -> str:
        """``dovecot --version``, e.g. ``2.3.19.1 (9b53102964)``."""
        if self._version is None:
            binary = _find_dovecot() or "dovecot"
            self._version = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        return self._version

    @classmethod
    def address(cls, local: str) -> str:
        """``address("alice") == "alice@example.org"``."""
        return f"{local}@{cls.domain}"

    # ----------------------------------------------------------------- layout

    def _prepare_dirs(self) -> tuple[int, int]:
        user = _ensure_mail_user()
        mail_ids = (user.pw_uid, user.pw_gid)
        internal = pwd.getpwnam("dovecot")
        self.base.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(exist_ok=True)
        for link in (self.mail_root, self.rawlog_dir, self.users_path, self.base_dir):
            if link.is_symlink():
                link.unlink()

        shared_home = self.base
        if not _traversable_by(self.base, [mail_ids, (internal.pw_uid, internal.pw_gid)]):
            shared_home = self._make_spool([mail_ids, (internal.pw_uid, internal.pw_gid)])
        run_home = self.base
        if len(str(self.base_dir)) + len(_LONGEST_BASE_DIR_SOCKET) > _MAX_SOCKET_PATH:
            run_home = self._spool or self._make_spool([])
        if len(str(self.socket_path)) > _MAX_SOCKET_PATH:
            raise ValueError(f"{self.socket_path} is too long for a UNIX socket path")

        for name in ("mail", "rawlog"):
            real = shared_home / name
            real.mkdir(exist_ok=True)
            os.chown(real, *mail_ids)
            os.chmod(real, 0o755)
        (run_home / "run").mkdir(exist_ok=True)
        if shared_home != self.base:
            for name in ("mail", "rawlog", "users"):
                (self.base / name).symlink_to(shared_home / name)
        if run_home != self.base:
            self.base_dir.symlink_to(run_home / "run")
        self._mail_real = shared_home / "mail"
        self._rawlog_real = shared_home / "rawlog"
        self._users_real = shared_home / "users"
        self._base_dir_real = run_home / "run"
        return mail_ids

    def _make_spool(self, ids: list[tuple[int, int]]) -> Path:
        if self._spool is None:
            candidates = [Path(tempfile.gettempdir()), Path("/tmp"), Path("/var/tmp")]
            for parent in candidates:
                if _traversable_by(parent, ids) and os.access(parent, os.W_OK):
                    self._spool = Path(tempfile.mkdtemp(prefix="lmtp-dovecot-", dir=parent))
                    break
            else:
                raise RuntimeError("no temp directory reachable by the Dovecot users")
            os.chmod(self._spool, 0o711)
        return self._spool

    def _write_config(self) -> None:
        user_lines = "".join(
            f"{name}@{self.domain}:{{PLAIN}}x::::::{extra}\n" for name, extra in _USERS.items()
        )
        self._users_real.write_text(user_lines)
        os.chmod(self._users_real, 0o644)
        mail = self._mail_real
        if self.tls_cert is not None and self.tls_key is not None:
            ssl = (
                "ssl = yes\n"
                f"ssl_cert = <{self.tls_cert}\n"
                f"ssl_key = <{self.tls_key}\n"
                f"ssl_dh = <{DH_PARAMS}\n"
            )
        else:
            ssl = "ssl = no\n"
        config = f"""\
# Written by tests/interop/_dovecot.py; private test instance.
instance_name = {self.instance_name}
base_dir = {self._base_dir_real}
state_dir = {self.state_dir}
log_path = {self.log_path}
protocols = lmtp
listen = {self.host}
{ssl}
mail_location = maildir:{mail}/%u
# Store messages with CRLF, so a stored copy is byte-for-byte what the client sent.
mail_save_crlf = yes
lmtp_rawlog_dir = {self._rawlog_real}
# No stats-writer connection: a process that starts while the instance stops would otherwise
# wait 5 s for the (already stopped) stats service's handshake.
stats_writer_socket_path =
mail_plugins = quota
lmtp_rcpt_check_quota = no

passdb {{
  driver = passwd-file
  args = {self._users_real}
}}
userdb {{
  driver = passwd-file
  args = {self._users_real}
  default_fields = uid={MAIL_USER} gid={MAIL_USER} home={mail}/%u
}}
plugin {{
  quota = count:User quota
  quota_vsizes = yes
  quota_rule = *:storage=0
}}
service lmtp {{
  unix_listener {self.socket_path} {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = {self.host}
    port = {self.port}
  }}
}}
service doveadm {{
  inet_listener {{
    port = 0
  }}
}}
"""
        self.config_path.write_text(config)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start Dovecot and return once both listeners have sent their greeting."""
        if self.running:
            raise RuntimeError("already started")
        binary = _find_dovecot()
        if binary is None:
            raise RuntimeError("dovecot not installed")
        self._prepare_dirs()
        deadline = time.monotonic() + _START_TIMEOUT
        for _ in range(_PORT_ATTEMPTS):
            self.port = _free_port()
            self._write_config()
            if self._launch(binary, deadline):
                self._probe_rawlogs = {p.name for p in self._rawlog_real.iterdir()}
                return
        raise RuntimeError(f"no free port after {_PORT_ATTEMPTS} attempts\n{self._diagnostics()}")

    def _launch(self, binary: str, deadline: float) -> bool:
        """Run the master; True when ready, False on a port collision; raise otherwise."""
        with self.stderr_path.open("wb") as stderr:
            self._proc = subprocess.Popen(
                [binary, "-F", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
            )
        delay = 0.002
        greetings: dict[str, bytes] = {}
        targets: dict[str, tuple[socket.AddressFamily, str | tuple[str, int]]] = {
            "unix": (socket.AF_UNIX, str(self.socket_path)),
            "tcp": (socket.AF_INET, (self.host, self.port)),
        }
        while True:
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                text = self.stderr_path.read_text(errors="replace")
                if "Address already in use" in text:
                    return False
                raise RuntimeError(f"dovecot exited with status {status}\n{self._diagnostics()}")
            for name, (family, address) in targets.items():
                if name in greetings:
                    continue
                with contextlib.suppress(OSError):
                    greetings[name] = _read_greeting(family, address)
            if len(greetings) == len(targets):
                self.greeting = greetings["tcp"]
                return True
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"dovecot not ready after {_START_TIMEOUT}s (ready: {sorted(greetings)})\n"
                    f"{self._diagnostics()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _read_master_pid(self) -> int | None:
        try:
            return int((self.base_dir / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def terminate(self) -> None:
        """Ask the master to shut down (SIGTERM to the PID in master.pid) without waiting."""
        if self._proc is None or self._proc.poll() is not None:
            return
        pids = {self._proc.pid}
        from_file = self._read_master_pid()
        if from_file is not None:
            pids.add(from_file)
        self._terminated_at = time.monotonic()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise

    def wait(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Wait for the master to exit; SIGKILL it and raise if that takes over ``timeout`` s.

        A service process the master spawned just before SIGTERM can block for 5 s reading its
        settings from the config service, which has already exited; once the others are gone
        (``_STRAGGLER_GRACE`` after SIGTERM) such stragglers get SIGKILL.
        """
        proc = self._proc
        if proc is None:
            return
        deadline = time.monotonic() + timeout
        grace_end = (self._terminated_at or time.monotonic()) + _STRAGGLER_GRACE
        try:
            try:
                proc.wait(timeout=max(0.0, min(grace_end, deadline) - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_children(proc.pid, spare={"log"})
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
            raise RuntimeError(f"dovecot did not stop within {timeout}s; killed") from None
        finally:
            self._proc = None
            self._terminated_at = None

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Stop Dovecot and wait (bounded) until the master has exited."""
        self.terminate()
        self.wait(timeout)

    def close(self) -> None:
        """Stop Dovecot and remove the private spool directory, if one was made."""
        try:
            self.stop()
        finally:
            if self._spool is not None:
                for name in ("mail", "rawlog", "users", "run"):
                    link = self.base / name
                    if link.is_symlink():
                        link.unlink()
                shutil.rmtree(self._spool, ignore_errors=True)
                self._spool = None

    # ----------------------------------------------------------------- inspection

    def maildir(self, user: str) -> Path:
        """The Maildir of a full address; Dovecot's %u is the lower-cased full address."""
        if "@" not in user:
            raise ValueError(f"expected a full address like alice@{self.domain}, got {user!r}")
        return self.mail_root / user.lower()

    def messages(self, user: str) -> list[bytes]:
        """Raw stored files of ``user`` (new/ and cur/), sorted by file name."""
        root = self.maildir(user)
        files = [path for sub in ("new", "cur") for path in _listdir(root / sub)]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    @staticmethod
    def body_of(stored: bytes) -> bytes:
        """Strip the header fields Dovecot prepends (Return-Path, Delivered-To, Received).

        Only the leading ones, in Dovecot's order and at most one each, so a message that
        itself starts with a Received field comes back intact.
        """
        rest = stored
        for name in _PREPENDED:
            match = re.match(rb"([^:\r\n]+):", rest)
            if match is None or match.group(1).strip().lower() != name:
                continue
            # Consume the field and its folded continuation lines.
            pos = 0
            while True:
                end = rest.find(b"\n", pos)
                if end == -1:
                    return b""
                pos = end + 1
                if rest[pos : pos + 1] not in (b" ", b"\t"):
                    break
            rest = rest[pos:]
        return rest

    def rawlogs(self) -> list[Path]:
        """Rawlog files (``*.in``/``*.out``) of client sessions, excluding start()'s probes."""
        if not self.rawlog_dir.is_dir():
            return []
        return sorted(p for p in self.rawlog_dir.iterdir() if p.name not in self._probe_rawlogs)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self) -> str:
        parts = []
        for path in (self.stderr_path, self.log_path):
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<DovecotLMTP {state} {self.socket_path} {self.host}:{self.port} tls={self.tls}>"
