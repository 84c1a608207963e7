"""Listening sockets and the accept loop's rules, once for every runtime's Server.

How it works. Listening(config) makes the listening sockets with the stdlib, non-
blocking; each runtime then waits on them in its own way. TCP: every address
getaddrinfo() gives for the host (IPv6 ones v6-only). A UNIX socket path is taken only
when that is safe: a path where a server answers is refused (EADDRINUSE, naming the
path), a path that exists and is not a socket is refused and left alone (EEXIST), and
only a stale socket (connecting is refused) is replaced. close() closes the sockets and
removes the socket file, but only while it is still the one this server bound (same
device and inode), so a server started later on the path keeps its own. A `sock`
given in the settings is served as it is; its path is never removed. systemd_socket()
takes the socket systemd passes by socket activation (fd 3, when LISTEN_PID is this
process), to be given as `sock`.

Spreading connections over processes that share one listening socket (workers, or
several servers on one systemd socket): each process is woken for a new connection,
and the first to call accept() gets it. So every accept loop takes one connection
per wake-up before it waits for readiness again, as nginx
does by default (multi_accept off), for the cost of one readiness check per
connection: a loop that drained the queue per wake-up, as asyncio's own does, left all
8 of 8 sessions to one of 2 workers in 5 of 20 runs. One per wake-up alone still gave
one worker 7 or 8 of them in 4 runs of 40, the kernel's choice being a coin toss per
connection; so workers also look at each other's load. Loads is one session count per
worker in memory shared across the fork (the supervisor makes it and each worker
joins its slot). Before accepting, Gate.defer() tells a worker that serves more
sessions than another to leave the connection waiting: it looks again after
DEFER_STEP and takes the connection itself after DEFER_MAX, and then defers to the
others only once their counts have moved (a worker whose event loop is stuck must not
slow every connection down). With it, 90 runs of 90 split 4 and 4.

The accept loops are ours, not the runtime's (asyncio's start_server(), trio's
serve_listeners(), socketserver), because they carry policy those have no place for:
the connection limit answered with 421 before any greeting, the pause after EMFILE and
its kin, one connection per wake-up and the deferral above for fair spreading across
workers. Gate holds what every accept loop does the same way. refuse() answers a connection
past max_connections with the core's 421 4.3.2 in place of the greeting, written
without blocking, and closes it (over implicit TLS it only closes: the client waits
for a handshake). failed() turns an accept() failure (EMFILE, ENFILE, ENOBUFS, ENOMEM,
a thread that cannot start, or anything unforeseen) into a pause before the next try,
doubling from 10 ms up to 1 s and starting over after a success, so that the loop
neither dies nor spins; a connection the client aborted before accept() is skipped
without a pause. Both log at most once per LOG_INTERVAL seconds, with a count of what
they did not log.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import mmap
import os
import socket
import stat
import time
from typing import Any

from ._config import ServerConfig

__all__ = ["LOG_INTERVAL", "Gate", "Listening", "Loads", "systemd_socket"]

LOG_INTERVAL = 10.0
PAUSE_MIN, PAUSE_MAX = 0.01, 1.0
#: A worker busier than another leaves a waiting connection to it: it looks again
#: every DEFER_STEP seconds and takes the connection itself after DEFER_MAX.
DEFER_STEP, DEFER_MAX = 0.005, 0.1
#: The first descriptor systemd passes (sd_listen_fds(3): SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3
#: accept() failures that concern one connection only: skip it, try the next at once.
_TRANSIENT = {errno.ECONNABORTED, errno.EPROTO, errno.EINTR, errno.EAGAIN}


class Listening:
    """The listening sockets of one server."""

    def __init__(self, config: ServerConfig) -> None:
        self._path: str | None = None
        self._identity: tuple[int, int] | None = None
        if config.sock is not None:
            self.sockets = [config.sock]
        elif config.socket_path is not None:
            self.sockets = [self._unix(config.socket_path, config.backlog)]
        else:
            self.sockets = _tcp(config.host, config.port, config.backlog)
        for sock in self.sockets:
            sock.setblocking(False)
        #: What clients connect to: the UNIX path, or the first (host, port, ...).
        self.address: Any = self.sockets[0].getsockname()

    def _unix(self, path: str, backlog: int) -> socket.socket:
        abstract = path.startswith("\0")
        if not abstract:
            _take_over(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(backlog)
            if not abstract:
                st = os.stat(path)
                self._path, self._identity = path, (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        """Close the sockets; remove our socket file if it is still ours."""
        for sock in self.sockets:
            sock.close()
        path, self._path = self._path, None
        if path is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(path)
                if (st.st_dev, st.st_ino) == self._identity:
                    os.unlink(path)


def systemd_socket() -> socket.socket | None:
    """The listening socket systemd passed to this process (socket activation), to
    serve as `sock=`; None when it passed none. The first one only (LISTEN_FDS may
    say more). The variables are removed, so that a child process does not take the
    socket for its own (sd_listen_fds(1) does the same)."""
    try:
        pid, count = int(os.environ["LISTEN_PID"]), int(os.environ["LISTEN_FDS"])
    except (KeyError, ValueError):
        return None
    if pid != os.getpid() or count < 1:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    sock = socket.socket(fileno=LISTEN_FDS_START)
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # systemd's descriptor: left as it is
        raise OSError(
            errno.EINVAL,
            "systemd passed a socket that is not a listening stream socket (ListenStream=)",
        )
    sock.set_inheritable(False)
    return sock


def _take_over(path: str) -> None:
    """Make `path` free to bind, or raise: never remove a live socket or a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, "the path exists and is not a socket; not replacing it", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: nobody listens there any more
        return
    except (TimeoutError, BlockingIOError):  # a server too busy to take us is a server
        pass
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another server is listening there", path)


def _tcp(host: str, port: int, backlog: int) -> list[socket.socket]:
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((address[0], port, *address[2:]))
            sock.listen(backlog)
            port = port or sock.getsockname()[1]  # port 0: the same free port for all
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Throttle:
    """Says when a line may be logged: at most once per `interval` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = -math.inf
        self._missed = 0

    def due(self) -> int | None:
        """None: stay quiet; else log now, mentioning this many lines not logged."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._missed += 1
            return None
        missed, self._missed, self._last = self._missed, 0, now
        return missed


class Loads:
    """How many sessions each worker sharing a listening socket serves: one signed
    64-bit slot per worker in an anonymous shared mapping, made before the workers are
    forked. A slot is -1 while no worker runs in it. Each worker writes only its own
    slot (an aligned 8-byte store: no lock) and reads the others'."""

    #: This process's, once it joined as a worker; every Gate made here uses it.
    current: Loads | None = None

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, 8 * workers)
        self._counts = memoryview(self._memory).cast("q")
        self._slot = 0
        for slot in range(workers):
            self._counts[slot] = -1

    def join(self, slot: int) -> None:
        """In a worker (after the fork): take `slot`, serving no session yet."""
        self._slot = slot
        self._counts[slot] = 0
        Loads.current = self

    def vacate(self, slot: int) -> None:
        """In the parent: the worker in `slot` ended."""
        self._counts[slot] = -1

    def publish(self, sessions: int) -> None:
        self._counts[self._slot] = sessions

    def others(self) -> tuple[int, ...]:
        counts = self._counts.tolist()
        return tuple(counts[: self._slot] + counts[self._slot + 1 :])

    def busier(self, others: tuple[int, ...]) -> bool:
        """Whether a worker that runs serves fewer sessions than this one."""
        mine = self._counts[self._slot]
        return any(0 <= count < mine for count in others)


class Gate:
    """The accept loop's rules: the connection limit, refusals, pauses after failures,
    and, in a worker, leaving a connection to a less busy worker for a moment."""

    def __init__(self, config: ServerConfig, log: logging.Logger) -> None:
        self.limit = config.max_connections
        self._log = log
        self._endpoint = config.endpoint
        self._busy = b"" if config.ssl_context else config.connection(busy=True).data_to_send()
        self._pause = PAUSE_MIN
        self._refusals = _Throttle(LOG_INTERVAL)
        self._failures = _Throttle(LOG_INTERVAL)
        self._loads = Loads.current
        self._waiting_since: float | None = None  # deferring the connection waiting
        self._unanswered: tuple[int, ...] | None = None

    def load(self, sessions: int) -> None:
        """The server's session count changed (known to the other workers)."""
        if self._loads is not None:
            self._loads.publish(sessions)

    def defer(self) -> float:
        """A connection waits: 0 to take it now, or seconds to wait (DEFER_STEP) before
        asking again, leaving it to a less busy worker. After DEFER_MAX nobody took
        it: take it, and defer to the others again only once their counts move (a
        worker whose loop is stuck must not slow everyone down)."""
        loads = self._loads
        if loads is None:
            return 0.0
        others = loads.others()
        if others == self._unanswered or not loads.busier(others):
            self._waiting_since = None
            return 0.0
        now = time.monotonic()
        if self._waiting_since is None:  # reset only by an accept or by no longer busier
            self._waiting_since = now
        if now - self._waiting_since < DEFER_MAX:
            return DEFER_STEP
        self._unanswered, self._waiting_since = others, None
        return 0.0

    def refuse(self, sock: socket.socket) -> None:
        """A connection past the limit: 421 4.3.2 without blocking, then close."""
        try:
            sock.setblocking(False)
            if self._busy:
                sock.send(self._busy)
        except OSError:
            pass
        finally:
            sock.close()
        missed = self._refusals.due()
        if missed is not None:
            self._log.warning(
                "%s: max_connections (%d) reached: refusing connections with 421%s",
                self._endpoint,
                self.limit,
                f" ({missed} more since the last report)" if missed else "",
            )

    def failed(self, exc: BaseException) -> float:
        """accept() (or starting a thread for a connection) failed: seconds to pause."""
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT:
            return 0.0
        pause, self._pause = self._pause, min(self._pause * 2, PAUSE_MAX)
        missed = self._failures.due()
        if missed is not None:
            self._log.error(
                "%s: cannot accept a connection: %s; pausing, then trying again%s",
                self._endpoint,
                _describe(exc),
                f" ({missed} more failures since the last report)" if missed else "",
            )
        return pause

    def accepted(self) -> None:
        self._pause = PAUSE_MIN
        self._waiting_since = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({os.strerror(exc.errno)})"
    return f"{type(exc).__name__}: {exc}"
