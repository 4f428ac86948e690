"""``wireguard-sansio [-f|--foreground] INTERFACE-NAME``: this implementation
where wireguard-go stands, so that ``wg-quick`` (with
``WG_QUICK_USERSPACE_IMPLEMENTATION=wireguard-sansio``) and every script
written for wireguard-go drive it unchanged.

The command line, environment, exit statuses and messages are wireguard-go's
(``main.go``):

- it creates the TUN interface INTERFACE-NAME (MTU 1420, down, no addresses
  and no routes: the caller's job, with ``ip`` and ``wg``) and the control
  socket ``/var/run/wireguard/INTERFACE-NAME.sock`` (owner only), then, unless
  told to stay in the foreground (``-f``, ``--foreground``,
  ``WG_PROCESS_FOREGROUND=1``), starts itself again in the background with
  both passed on (``WG_TUN_FD=3``, ``WG_UAPI_FD=4``,
  ``WG_PROCESS_FOREGROUND=1``) and exits 0 once that process serves the
  interface, so the interface exists and the socket answers when the command
  returns. A supervisor may pass a TUN and a listening socket it made the
  same way;
- ``LOG_LEVEL``: ``verbose`` (or ``debug``), ``error`` (the default) or
  ``silent``; lines go to standard output as wireguard-go writes them
  (``ERROR: (wg0) 2006/01/02 15:04:05 ...``). In the background the process
  keeps standard output and error only if ``LOG_LEVEL`` is set and not
  ``silent``, as wireguard-go does;
- exit status 1 with one ``ERROR:`` line when setting up fails (``Failed to
  create TUN device: operation not permitted`` when not root, ``... device
  or resource busy`` for a name in use, ``UAPI listen error: unix socket in
  use``, ...), 0 otherwise, including, as in wireguard-go, after printing
  the usage for a wrong command line;
- it ends, removing its socket, when the interface is deleted
  (``ip link del``), when the socket file is removed, or on SIGTERM or SIGINT
  (and SIGHUP).

``--help`` prints the usage and what the command does (wireguard-go would
take it for an interface name); ``--version`` prints the version.

The process is :class:`~wireguard.io.interface.TunInterface`, the engine that
``python -m wireguard up`` runs too, with a device that has no key and no
peers until ``wg`` configures it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import platform
import select
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

__all__ = ["main"]

if TYPE_CHECKING:
    from ..io.tun import Tun

PROG = "wireguard-sansio"
ENV_TUN_FD = "WG_TUN_FD"
ENV_UAPI_FD = "WG_UAPI_FD"
ENV_FOREGROUND = "WG_PROCESS_FOREGROUND"
# Ours, not wireguard-go's: where the background process says it is serving.
ENV_READY_FD = "WG_SANSIO_READY_FD"
EXIT_SETUP_SUCCESS = 0
EXIT_SETUP_FAILED = 1
DEFAULT_MTU = 1420  # wireguard-go's device.DefaultMTU, set when it creates the TUN
READY_TIMEOUT = 60.0

log = logging.getLogger(__name__)


def _version() -> str:
    from .. import __version__

    return __version__


def usage() -> str:
    return f"Usage: {PROG} [-f/--foreground] INTERFACE-NAME"


HELP = f"""{{usage}}

Create the WireGuard interface INTERFACE-NAME (a TUN device, down, without
addresses or routes) and serve it in the background, as wireguard-go does:
configure it with wg(8) and ip(8), or with
WG_QUICK_USERSPACE_IMPLEMENTATION={PROG} wg-quick up CONFIG.

  -f, --foreground   stay in the foreground
  --version          print the version
  --help             print this help

Environment: LOG_LEVEL=verbose|error|silent (default error; lines on standard
output), WG_PROCESS_FOREGROUND=1 (as -f), WG_TUN_FD and WG_UAPI_FD (use an
open TUN device and a listening control socket instead of creating them).
The control socket is /var/run/wireguard/INTERFACE-NAME.sock. The process ends
when the interface is deleted, its control socket removed, or on SIGTERM."""


class SetupError(Exception):
    """Setting up failed: the message is what wireguard-go would log."""


# --------------------------------------------------------------------------- logging


class _GoFormatter(logging.Formatter):
    """wireguard-go's log lines: ``LEVEL: (NAME) 2006/01/02 15:04:05 text``,
    with its two levels: ERROR (warnings and errors) and DEBUG (the rest)."""

    def __init__(self, name: str) -> None:
        super().__init__(datefmt="%Y/%m/%d %H:%M:%S")
        self.ifname = name

    def format(self, record: logging.LogRecord) -> str:
        level = "ERROR" if record.levelno >= logging.WARNING else "DEBUG"
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return f"{level}: ({self.ifname}) {self.formatTime(record, self.datefmt)} {text}"


def _log_level() -> int:
    """LOG_LEVEL as wireguard-go reads it (anything else: error)."""
    value = os.environ.get("LOG_LEVEL", "")
    if value in ("verbose", "debug"):
        return logging.DEBUG
    if value == "silent":
        return logging.CRITICAL + 10
    return logging.WARNING


def _setup_logging(name: str) -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_GoFormatter(name))
    root = logging.getLogger("wireguard")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_log_level())
    root.propagate = False
    return handler


def _go_error(exc: OSError | int) -> str:
    """An errno as Go's syscall.Errno prints it (strerror, lower case)."""
    code = exc if isinstance(exc, int) else (exc.errno or 0)
    if not code:
        return str(exc)
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


# --------------------------------------------------------------------------- setup


def _open_tun(name: str) -> Tun:
    """The TUN device: the one passed as WG_TUN_FD, or a new one (MTU 1420)."""
    from ..io.tun import TUN_PATH, Tun, TunError

    given = os.environ.get(ENV_TUN_FD, "")
    try:
        if given:
            try:
                fd = int(given, 10)
            except ValueError:
                raise SetupError(f"Failed to create TUN device: invalid {ENV_TUN_FD}") from None
            return Tun.from_fd(fd)
        tun = Tun.create(name, strict_name=False, exclusive=False)
    except TunError as exc:
        if exc.errno == errno.ENOENT:
            message = f'CreateTUN("{name}") failed; {TUN_PATH} does not exist'
        elif exc.errno == errno.ENAMETOOLONG:
            message = "interface name too long: file name too long"
        elif exc.errno is not None:
            message = _go_error(exc.errno)
        else:
            message = str(exc)
        raise SetupError(f"Failed to create TUN device: {message}") from None
    try:
        tun.set_mtu(DEFAULT_MTU)
    except OSError as exc:
        tun.close()
        raise SetupError(f"Failed to create TUN device: {_go_error(exc)}") from None
    return tun


def _open_uapi(name: str) -> socket.socket:
    """The control socket: the one passed as WG_UAPI_FD, or a new one."""
    from ..io import control

    given = os.environ.get(ENV_UAPI_FD, "")
    if given:
        try:
            sock = socket.socket(fileno=int(given, 10))
        except (ValueError, OSError) as exc:
            raise SetupError(f"UAPI listen error: {exc}") from None
        os.set_inheritable(sock.fileno(), False)
        return sock
    path = control.socket_path(name)
    try:
        os.makedirs(control.SOCKET_DIRECTORY, mode=0o755, exist_ok=True)
        return control._bind(path)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SetupError("UAPI listen error: unix socket in use") from None
        raise SetupError(f"UAPI listen error: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------- background


def _keeps_output() -> bool:
    """Whether the background process keeps stdout and stderr (LOG_LEVEL set
    and not silent); otherwise they go to /dev/null, as in wireguard-go."""
    return os.environ.get("LOG_LEVEL", "") != "" and _log_level() <= logging.CRITICAL


def _say_slow_aead() -> None:
    """The slow-``cryptography`` note on this terminal's stderr, for a
    background process whose log goes nowhere (its tunnel would log it
    there, unseen); with LOG_LEVEL set the background process says it."""
    from ..crypto import slow_aead_note

    note = slow_aead_note()
    if note is not None and not _keeps_output():
        print(f"Warning: {note}", file=sys.stderr, flush=True)


def _daemonize(argv: Sequence[str], tun_fd: int, uapi_fd: int, name: str) -> None:
    """Start this command again in the background with the TUN and the
    control socket as fds 3 and 4, and wait until it serves them."""
    read_end, write_end = os.pipe()
    keep_output = _keeps_output()
    env = dict(os.environ)
    env.update({ENV_TUN_FD: "3", ENV_UAPI_FD: "4", ENV_FOREGROUND: "1", ENV_READY_FD: "5"})
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    # Out of the way of fds 0-5 first, so that the dup2s below cannot clash.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (tun_fd, uapi_fd, write_end)]
    try:
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        ]
        if not keep_output:
            actions += [
                (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                (os.POSIX_SPAWN_DUP2, 1, 2),
            ]
        targets = zip(high, (3, 4, 5), strict=True)
        actions += [(os.POSIX_SPAWN_DUP2, fd, target) for fd, target in targets]
        args = [sys.executable, "-m", "wireguard.cli.daemon", *argv]
        try:
            pid = os.posix_spawn(sys.executable, args, env, file_actions=actions, setsid=True)
        except OSError as exc:
            raise SetupError(f"Failed to daemonize: {exc.strerror or exc}") from None
    finally:
        for fd in (*high, write_end):
            os.close(fd)
    message = _wait_ready(read_end, pid)
    if message != "ok":
        raise SetupError(message)
    if not _answers(name):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        raise SetupError("Failed to daemonize: the control socket does not answer")


def _wait_ready(fd: int, pid: int) -> str:
    """What the background process reports: "ok", or the error it logged."""
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                return f"Failed to daemonize: no word from the daemon in {READY_TIMEOUT:.0f} s"
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(fd)
    line = data.decode(errors="replace").strip()
    if line:
        return line
    status = 0
    with contextlib.suppress(ChildProcessError):
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status) if status else 0
    return f"Failed to daemonize: the daemon exited with status {code}"


def _answers(name: str) -> bool:
    from ..io.control import query, socket_path

    try:
        return "errno=0" in query(socket_path(name), timeout=10)
    except OSError:
        return False


# --------------------------------------------------------------------------- the service


def _tell(fd: int | None, line: str) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, (line + "\n").encode())
            os.close(fd)


async def _serve(name: str, tun: Tun, uapi: socket.socket, ready_fd: int | None) -> None:
    from ..device import Device
    from ..io.interface import TunInterface
    from ..keys import PrivateKey

    device = Device(PrivateKey(bytes(32)), mtu=DEFAULT_MTU)
    engine = TunInterface(name, device, tun, listen_port=0, control_sock=uapi)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, engine.stop, f"signal {signal.Signals(sig).name}")
    try:
        await engine.start()
        log.debug("Device started")
        log.debug("UAPI listener started")
        _tell(ready_fd, "ok")
        ready_fd = None
        why = await engine.wait()
        log.debug("Shutting down (%s)", why)
    finally:
        await engine.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        print(
            f"{PROG} v{_version()}\n\n"
            f"Userspace WireGuard daemon for {sys.platform}-{platform.machine()}, "
            f"in Python {platform.python_version()}.\n"
            "Information available at https://www.wireguard.com."
        )
        return EXIT_SETUP_SUCCESS
    if len(args) == 1 and args[0] in ("--help", "-h"):
        print(HELP.format(usage=usage()))
        return EXIT_SETUP_SUCCESS
    if not 1 <= len(args) <= 2:
        print(usage())
        return EXIT_SETUP_SUCCESS  # as wireguard-go
    if args[0] in ("-f", "--foreground"):
        if len(args) != 2:
            print(usage())
            return EXIT_SETUP_SUCCESS
        foreground, name = True, args[1]
    else:
        if len(args) != 1:
            print(usage())
            return EXIT_SETUP_SUCCESS
        foreground, name = False, args[0]
    foreground = foreground or os.environ.get(ENV_FOREGROUND) == "1"
    ready_fd: int | None = None
    if os.environ.get(ENV_READY_FD):
        with contextlib.suppress(ValueError):
            ready_fd = int(os.environ.pop(ENV_READY_FD))
            os.set_inheritable(ready_fd, False)
    _setup_logging(name)
    log.debug("Starting %s version %s", PROG, _version())
    # Until the event loop takes the signals over: clean up, then exit.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _terminate)
    tun = uapi = None
    served = False
    try:
        tun = _open_tun(name)
        name = tun.name
        uapi = _open_uapi(name)
        if not foreground:
            _say_slow_aead()
            _daemonize(args, tun.fd, uapi.fileno(), name)
            served = True  # the socket file is the background process's now
            return EXIT_SETUP_SUCCESS
        asyncio.run(_serve(name, tun, uapi, ready_fd))
    except _Terminated:
        log.debug("Shutting down (terminated while starting)")
        return EXIT_SETUP_SUCCESS
    except SetupError as exc:
        log.error("%s", exc)
        _tell(ready_fd, str(exc))
        return EXIT_SETUP_FAILED
    except Exception as exc:
        log.exception("Failed to start")
        _tell(ready_fd, f"{type(exc).__name__}: {exc}".splitlines()[0])
        return EXIT_SETUP_FAILED
    except KeyboardInterrupt:
        return EXIT_SETUP_SUCCESS
    finally:
        if uapi is not None:
            if not served:
                _remove_socket_file(name, uapi)
            uapi.close()  # closing never removes the file
        if tun is not None:
            tun.close()
    return EXIT_SETUP_SUCCESS


class _Terminated(BaseException):
    """SIGTERM or SIGHUP before the service handles signals itself."""


def _terminate(signum: int, frame: object) -> None:
    raise _Terminated


def _remove_socket_file(name: str, sock: socket.socket) -> None:
    """The control socket file, if it is still the one *sock* is bound to."""
    from ..io.control import socket_path

    with contextlib.suppress(OSError):
        path = socket_path(name)
        if sock.getsockname() == path and sock.fileno() >= 0:
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main())
