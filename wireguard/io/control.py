"""The ``wg`` control socket: an asyncio Unix-socket server for the UAPI.

``wg`` finds a userspace interface NAME by the socket
``/var/run/wireguard/NAME.sock`` and speaks the ``get=1`` / ``set=1``
protocol of :mod:`wireguard.uapi` over it; this module only moves bytes
between that socket and a :class:`~wireguard.uapi.UAPIConnection`.

Whoever can write to the socket can read the private key and reroute the
tunnel, so it is created owner-only (0600) under a restrictive umask, so that
no other user can connect in the moment between ``bind`` and a ``chmod``. As
wireguard-go does (``ipc/uapi_linux.go``), a socket a live process still
answers on is never taken over, and a stale one left by a crash is replaced.

The server runs in the event loop that drives the device, so the device
needs no lock against the data path; requests are worked through a slice at
a time (see :class:`~wireguard.uapi.UAPIConnection`), and the loop runs other
work between slices, so a 20,000-peer ``set`` does not hold up datagrams.
Between connections, as with wireguard-go's ``ipcMutex``, one request at a
time reads or changes the device: a ``set`` from its first line to its answer
(also while it waits for the client to send more), a ``get`` while its answer
is put together (not while the client reads it). Each answer is written, and
drained, before the connection's next request is read: a client cannot make
the server hold more than one answer and one read of its input.

A daemon is told when its socket file is removed (``on_removed``), as
wireguard-go's ``UAPIListen`` watches it with inotify and exits: the file is
the interface's name in ``wg show interfaces``, and removing it is one way of
stopping the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable

from ..uapi import UAPI, UAPIConnection, UAPIError, UAPIUnknownOperation
from .lifecycle import Lifecycle, hang_up

__all__ = ["SOCKET_DIRECTORY", "ControlServer", "query", "socket_path"]

log = logging.getLogger(__name__)

SOCKET_DIRECTORY = "/var/run/wireguard"
_READ_SIZE = 64 * 1024


def socket_path(name: str, directory: str = SOCKET_DIRECTORY) -> str:
    """Where ``wg`` looks for interface *name*: ``DIRECTORY/NAME.sock``.
    The name is an interface name (at most 15 bytes, IFNAMSIZ - 1), so it
    cannot climb out of the directory."""
    if (
        not name
        or len(name.encode()) > 15
        or name in (".", "..")
        or any(c in name for c in "/\0")
        or any(c.isspace() for c in name)
    ):
        raise ValueError(f"not an interface name: {name!r}")
    return os.path.join(directory, f"{name}.sock")


def _listen(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen()
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _is_live(path: str) -> bool:
    """Does a process still accept connections on *path*?"""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except TimeoutError:
        return True  # someone is there, with a full backlog
    finally:
        probe.close()
    return True


def _bind(path: str) -> socket.socket:
    # 0o177: the socket inode is created 0600 by bind() itself. The umask is
    # process-wide, so it is restored at once.
    old_umask = os.umask(0o177)
    try:
        try:
            return _listen(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
        if _is_live(path):
            raise OSError(errno.EADDRINUSE, f"{path} is in use by a running interface")
        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise FileExistsError(errno.EEXIST, f"{path} exists and is not a socket")
        os.unlink(path)  # stale: its process is gone
        return _listen(path)
    finally:
        os.umask(old_umask)


class ControlServer(Lifecycle):
    """Serves *uapi* on the Unix socket *path* (see :func:`socket_path`).

    ``await start()`` creates the directory (0755) if needed and the socket
    (0600); it raises OSError (EADDRINUSE) if another live process serves
    *path*. ``await close()`` stops serving, hangs up on clients and removes
    the socket file, unless it is no longer ours. Also an async context
    manager.
    """

    def __init__(
        self,
        uapi: UAPI,
        path: str | os.PathLike[str],
        *,
        sock: socket.socket | None = None,
        on_removed: Callable[[], None] | None = None,
    ) -> None:
        self.uapi = uapi
        self.path = os.fspath(path)
        # A socket already listening at *path* (a daemon's parent bound it:
        # wireguard-go's WG_UAPI_FD).
        self._sock = sock
        # Called once if the socket file is removed or replaced.
        self.on_removed = on_removed
        self._server: asyncio.AbstractServer | None = None
        self._identity: tuple[int, int] | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._device_lock = asyncio.Lock()
        self._watch: _FileWatch | None = None

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("the control server is already started")
        if self._sock is not None:
            sock, self._sock = self._sock, None
            sock.setblocking(False)
        else:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, mode=0o755, exist_ok=True)
            sock = _bind(self.path)
        try:
            st = os.stat(self.path)
            self._identity = (st.st_dev, st.st_ino)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock)
        except BaseException:
            sock.close()
            self._unlink()
            raise
        if self.on_removed is not None:
            self._watch = _FileWatch(self.path, self._identity, self._removed)
            self._watch.start(asyncio.get_running_loop())

    def _removed(self) -> None:
        log.info("control socket %s was removed", self.path)
        self._identity = None  # no longer ours to unlink
        if self.on_removed is not None:
            self.on_removed()

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()
        self._unlink()

    @property
    def serving(self) -> bool:
        return self._server is not None

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one we created: after a
        successor replaced it (our process looked dead to it), it is theirs."""
        identity, self._identity = self._identity, None
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if identity == (st.st_dev, st.st_ino):
                os.unlink(self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        connection = UAPIConnection(self.uapi, on_error=self._refused)
        lock = self._device_lock
        holding = False
        try:
            while True:
                if not holding:
                    await lock.acquire()
                    holding = True
                out = connection.next_output()
                if not connection.in_request:
                    lock.release()
                    holding = False
                if out is None:  # needs more input
                    if connection.closed:
                        break
                    data = await reader.read(_READ_SIZE)
                    if data:
                        connection.receive_data(data)
                    else:
                        connection.receive_eof()
                    continue
                if out:
                    writer.write(out)
                if not holding:
                    # An answer is complete: out to the client before the
                    # next request is looked at.
                    await writer.drain()
                # Let the data path and other clients run between slices.
                await asyncio.sleep(0)
        except ConnectionError:
            pass  # the client went away; wg never waits for more than one answer
        except asyncio.CancelledError:
            # close() hangs up on clients by cancelling them. Ending quietly:
            # asyncio (3.11) reports a client task that ends cancelled as an
            # unhandled exception with a traceback.
            if not self._closing():
                raise
        except Exception:
            log.exception("control socket %s: request failed", self.path)
        finally:
            if holding:
                lock.release()
            try:
                await hang_up(writer, self._closing)
            finally:
                # Only now: close() must reach a client still being hung up on.
                self._clients.discard(task)

    def _closing(self) -> bool:
        """close() has begun: clients are hung up on at once."""
        return self._server is None

    def _refused(self, error: UAPIError) -> None:
        """A request refused: logged as wireguard-go's IpcHandle logs it
        ("IPC error -22: ..."; an unknown operation without the number)."""
        if isinstance(error, UAPIUnknownOperation):
            log.error("control socket %s: %s", self.path, error)
        else:
            log.error("control socket %s: IPC error %d: %s", self.path, error.errno, error)


class _FileWatch:
    """Calls *on_gone* once when the file at *path* is no longer the one with
    *identity* (device, inode): inotify on the file (``IN_ATTRIB`` fires when
    its link count drops, ``IN_DELETE_SELF``/``IN_MOVE_SELF``), where the C
    library offers it, and a check every few seconds in any case."""

    _IN_ATTRIB = 0x004
    _IN_MOVE_SELF = 0x800
    _IN_DELETE_SELF = 0x400
    _IN_NONBLOCK = 0o4000
    _IN_CLOEXEC = 0o2000000
    INTERVAL = 5.0

    def __init__(self, path: str, identity: tuple[int, int] | None, on_gone: Callable[[], None]):
        self.path = path
        self.identity = identity
        self.on_gone = on_gone
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC)
            if fd >= 0:
                mask = self._IN_ATTRIB | self._IN_MOVE_SELF | self._IN_DELETE_SELF
                if libc.inotify_add_watch(fd, os.fsencode(self.path), mask) < 0:
                    os.close(fd)
                else:
                    self._fd = fd
                    loop.add_reader(fd, self._on_event)
        self._arm()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        fd, self._fd = self._fd, -1
        if fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            os.close(fd)
        self._loop = None

    def _arm(self) -> None:
        if self._loop is not None:
            self._timer = self._loop.call_later(self.INTERVAL, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self._check():
            self._arm()

    def _on_event(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._fd, 4096):
                pass
        self._check()

    def _check(self) -> bool:
        """Whether the file went (and *on_gone* was called)."""
        try:
            st = os.lstat(self.path)
            present = (st.st_dev, st.st_ino) == self.identity and stat.S_ISSOCK(st.st_mode)
        except FileNotFoundError:
            present = False
        except OSError:
            present = True  # cannot tell: keep serving
        if present:
            return False
        self.stop()
        self.on_gone()
        return True


def query(path: str, timeout: float = 5.0) -> str:
    """Send ``get=1`` to the control socket at *path* and return the answer
    (the client side, as ``wg show`` speaks it). OSError passes through."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(b"get=1\n\n")
        chunks: list[bytes] = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            if b"\n\n" in b"".join(chunks[-2:]):
                break
    return b"".join(chunks).decode()
