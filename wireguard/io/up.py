"""``python -m wireguard up CONFIG`` and ``down CONFIG|NAME``, as ``wg-quick``.

``up`` reads ``CONFIG`` (a bare interface name: ``/etc/wireguard/NAME.conf``,
as wg-quick), checks what it can in the calling process (root,
``/dev/net/tun``, the configuration, the interface name), then starts the
endpoint as a background process (a re-executed ``up --foreground``, its own
session, output appended to ``/var/log/wireguard-py/NAME.log``) and waits
until that process reports the interface up, addresses and routes set and the control socket
``/var/run/wireguard/NAME.sock`` answering; then it exits 0. An error on
either side is one line on stderr and exit status 1.

The service (``--foreground``) is the engine ``wireguard-sansio`` runs
(:class:`~wireguard.io.interface.TunInterface`: the TUN, the UDP socket, the
control socket, the link followed through netlink) with the rest of what
wg-quick does around it: the configuration, addresses, routes, policy rules
and hooks. It owns everything it made: the TUN interface
(closing it removes the interface with its addresses and routes), the policy
rules and firewall rules of a default route, the UDP socket, the control socket and the pid file
``/var/run/wireguard/NAME.pid`` (pid and start time, so a reused pid is never
mistaken for it). SIGTERM or SIGINT shuts it down cleanly.

``down`` finds the process by the pid file (or, failing that, by the peer
credentials of the control socket), sends SIGTERM, waits for it to go, and
removes whatever a killed process left behind: the socket and pid files, and
the policy rules and firewall rules of a default route, which the service
notes in ``/var/run/wireguard/NAME.rules`` (removed only from the network
namespace they were added in).

The firewall rules are wg-quick's (its ``add_default``): for each address
of the interface, a drop of packets to it arriving on another interface from
a source that is not local, and the connection mark saved and restored for
UDP; as an nft table ``wg-quick-NAME`` if ``nft`` is installed, else by
``iptables-restore`` with the comment ``wg-quick(8) rule for NAME``. With
neither, ``up`` of a default route fails, as wg-quick's does. Taking them
down removes, as wg-quick's ``remove_firewall``, every such table and rule
of that name.

PreUp, PostUp, PreDown and PostDown run as wg-quick runs them: each command
with ``%i`` replaced by the interface name, by bash with errexit and pipefail
(``sh -e`` if there is none, which is logged), in the service, output to its
log: the first failing command ends the hook, as under wg-quick's ``set -e -o
pipefail``. PreUp runs once the interface exists, before it is configured and
the endpoint names are looked up (current wg-quick's order, wireguard-tools
e6888dd; Debian 12's older wg-quick runs it before creating the interface),
PostUp once addresses and routes are set; if either fails,
``up`` fails with one line naming it and nothing stays behind. PreDown runs before the teardown
and PostDown after it; a failure there is logged and the teardown goes on.
``down`` waits for them with no time limit, as wg-quick does (it says so
every 10 s); a service still there 10 s after its last hook (or after the
signal, if it runs none) is killed.
DNS is not applied: that is reported as a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from ..config import HOOK_KEYS, AccessWarning, Config, ConfigError, ConfigWarning, load
from ..errors import LocalProtocolError
from .control import SOCKET_DIRECTORY, socket_path
from .resolve import REKEY_FAILED_AFTER, reresolver_for
from .tun import (
    TUN_PATH,
    NetlinkConfig,
    TunError,
    interface_name,
    routing_table,
    validate_name,
)

log = logging.getLogger(__name__)

LOG_DIRECTORY = "/var/log/wireguard-py"
CONFIG_DIRECTORY = "/etc/wireguard"  # where wg-quick looks for NAME.conf
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0  # then SIGKILL, counted from the service's last hook
HOOK_PROGRESS = 10.0  # how often `down` says it still waits for a hook

T = TypeVar("T")

__all__ = ["LOG_DIRECTORY", "UpError", "down", "load_config", "run_foreground", "up"]


class UpError(LocalProtocolError):
    """The interface cannot be brought up or down; the message says why, in
    one line."""


def pid_path(name: str) -> str:
    return os.path.join(SOCKET_DIRECTORY, f"{name}.pid")


def log_path(name: str) -> str:
    return os.path.join(LOG_DIRECTORY, f"{name}.log")


def rules_path(name: str) -> str:
    """Where a running service notes the policy rules (and whether the
    firewall rules) it added for a default route, so that ``down`` can
    remove them if the service was killed."""
    return os.path.join(SOCKET_DIRECTORY, f"{name}.rules")


def _netns_id() -> str:
    """This process's network namespace (rules belong to one)."""
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return ""


def config_file(target: str) -> str:
    """The file ``up`` reads: as wg-quick's, a bare interface name (no ``/``,
    no ``.conf``) is ``/etc/wireguard/NAME.conf``; anything else a path."""
    if "/" not in target and not target.endswith(".conf"):
        with contextlib.suppress(TunError):
            return os.path.join(CONFIG_DIRECTORY, f"{validate_name(target)}.conf")
    return os.path.abspath(target)


def target_name(target: str) -> str:
    """``down`` takes a config path (as wg-quick) or a bare interface name."""
    if "/" in target or target.endswith(".conf") or os.path.isfile(target):
        return interface_name(target)
    return validate_name(target)


# --------------------------------------------------------------------------- checks


def _need_root() -> None:
    if os.geteuid() != 0:
        raise UpError("must be run as root (it creates a network interface)")


def _need_tun() -> None:
    if not os.path.exists(TUN_PATH):
        raise UpError(f"{TUN_PATH} does not exist (no TUN support here?)")
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        raise UpError(
            "pyroute2 is needed to configure the interface: pip install 'wireguard-sansio[tun]'"
        ) from None


def load_config(path: str) -> tuple[Config, list[str]]:
    """The parsed file and the warnings to show (DNS not set, and what the
    parser noted but for the hooks, which the service runs). A file other
    users can reach gets wg-quick's warning on stderr at once, as wg-quick
    prints it before anything else."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConfigWarning)
            try:
                config = load(path)
            except ConfigError as exc:
                raise UpError(str(exc)) from None
            except OSError as exc:
                raise UpError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        for w in caught:
            if isinstance(w.message, AccessWarning):
                # Shown to the caller's filters (the commands print it as
                # wg-quick does), before anything else.
                warnings.warn(w.message, stacklevel=2)
    notes = [
        str(w.message)
        for w in caught
        if issubclass(w.category, ConfigWarning)
        and not isinstance(w.message, AccessWarning)
        and getattr(w.message, "key", None) not in HOOK_KEYS  # the service runs those
    ]
    iface = config.interface
    if iface.private_key is None:
        raise UpError(f"{path}: [Interface] has no PrivateKey")
    if iface.table and iface.table.lower() not in ("auto", "off"):
        try:
            routing_table(iface.table)
        except TunError as exc:
            line = iface.lines.get("Table")
            located = ConfigError(str(exc), filename=path, lineno=line, key="Table")
            raise UpError(str(located)) from None
    if iface.dns or iface.dns_search:
        notes.append(f"{path}: DNS is not applied by this implementation")
    if iface.save_config:
        notes.append(f"{path}: SaveConfig is not supported; the file is never written")
    return config, notes


def _link_exists(name: str) -> bool:
    """In this process's network namespace (asked of the kernel, as wg-quick's
    ``ip link show`` does: /sys may be another namespace's, under nsenter)."""
    try:
        socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def _proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (the first is
    field 3, the state), None if the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    return None if not rest or rest[0] in ("Z", "X") else rest


def _proc_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if the
    process is gone or a zombie."""
    rest = _proc_stat(pid)
    return rest[19] if rest is not None else None


def _read_pid_file(name: str) -> int | None:
    """The live process the pid file names, or None (absent, stale, reused)."""
    try:
        pid_text, start = Path(pid_path(name)).read_text().split()[:2]
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return pid if _proc_start_time(pid) == start else None


def _socket_owner(name: str) -> int | None:
    """The pid serving the control socket (SO_PEERCRED), if any."""
    path = socket_path(name)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect(path)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    finally:
        sock.close()
    pid = struct.unpack("3i", creds)[0]
    return pid or None


def _is_ours(pid: int) -> bool:
    """Is *pid* a process of this package's up command (not, say, wireguard-go)?"""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"wireguard.io.up" in argv or (b"up" in argv and any(b"wireguard" in a for a in argv))


def _find_process(name: str) -> int | None:
    pid = _read_pid_file(name)
    if pid is not None:
        return pid
    pid = _socket_owner(name)
    if pid is not None and _is_ours(pid):
        return pid
    return None


def _socket_answers(name: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    try:
        sock.connect(socket_path(name))
        sock.sendall(b"get=1\n\n")
        data = b""
        while b"\n\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return b"errno=0\n" in data
    except OSError:
        return False
    finally:
        sock.close()


# --------------------------------------------------------------------------- up


def up(
    config_path: str,
    *,
    foreground: bool = False,
    log_file: str | None = None,
    verbose: bool = False,
    ready_fd: int | None = None,
    reresolve_interval: float | None = None,
    reresolve_after: float | None = REKEY_FAILED_AFTER,
) -> int:
    """``up``: bring up the interface of the wg-quick file at *config_path*
    (a bare interface name: ``/etc/wireguard/NAME.conf``, as wg-quick reads it)
    (in the background, or in this process with *foreground*). Raises
    :class:`UpError` (or :class:`TunError`) with one line of why not.
    Endpoint names are looked up again as
    :class:`~wireguard.io.resolve.EndpointReresolver` says (*reresolve_after*,
    *reresolve_interval*; None for off)."""
    path = config_file(config_path)
    name = interface_name(path)
    _need_root()
    _need_tun()
    config, notes = load_config(path)
    if _link_exists(name):
        raise UpError(f"interface {name!r} already exists")
    owner = _find_process(name)
    if owner is not None:
        raise UpError(f"{name} is already up (pid {owner})")
    if _socket_answers(name):
        raise UpError(f"{socket_path(name)} is in use by another WireGuard interface")
    # Only once nothing stands in the way, so that an error stays one line.
    for note in notes:
        log.warning("%s", note)
    reresolve = (reresolve_interval, reresolve_after)
    if foreground:
        return run_foreground(name, config, ready_fd=ready_fd, reresolve=reresolve)
    return _spawn(name, path, log_file or log_path(name), verbose, reresolve)


def _spawn(
    name: str,
    path: str,
    log_file: str,
    verbose: bool,
    reresolve: tuple[float | None, float | None] = (None, REKEY_FAILED_AFTER),
) -> int:
    """Start ``up --foreground`` in its own session and wait for its word."""
    os.makedirs(os.path.dirname(log_file) or ".", exist_ok=True)
    read_end, write_end = os.pipe()
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "wireguard", "up", "--foreground",
            "--ready-fd", str(write_end), path]  # fmt: skip
    if verbose:
        argv.insert(5, "--verbose")
    interval, after = reresolve
    argv[5:5] = ["--reresolve-interval", str(interval or 0), "--reresolve-after", str(after or 0)]
    try:
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                pass_fds=(write_end,), start_new_session=True, cwd="/", env=env,
            )  # fmt: skip
    except OSError as exc:
        os.close(read_end)
        raise UpError(f"cannot start the service: {exc.strerror}") from None
    finally:
        os.close(write_end)
    message = _read_ready(read_end, proc)
    if message.startswith("ok"):
        port = message.split()[1] if len(message.split()) > 1 else "?"
        if not _socket_answers(name):
            proc.terminate()
            raise UpError(f"the control socket of {name} does not answer; see {log_file}")
        log.info("[#] %s is up: pid %d, UDP port %s, log %s", name, proc.pid, port, log_file)
        return 0
    if message.startswith("error "):
        raise UpError(message[6:])
    code = proc.poll()
    if code is None:
        proc.terminate()
        raise UpError(f"{name} did not come up within {READY_TIMEOUT:.0f} s; see {log_file}")
    raise UpError(f"the service exited with status {code}; see {log_file}")


def _read_ready(fd: int, proc: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + READY_TIMEOUT
    data = b""
    try:
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(2)
                break
            data += chunk
    finally:
        os.close(fd)
    return data.decode(errors="replace").strip()


# --------------------------------------------------------------------------- the service


def run_foreground(
    name: str,
    config: Config,
    *,
    ready_fd: int | None = None,
    reresolve: tuple[float | None, float | None] = (None, REKEY_FAILED_AFTER),
) -> int:
    """Serve the interface in this process until a signal (the caller sets
    up logging: the ``up`` command writes the service's lines to its log)."""
    service = Service(name, config, reresolve=reresolve)

    def ready(line: str) -> None:
        if ready_fd is not None:
            with contextlib.suppress(OSError):
                os.write(ready_fd, (line + "\n").encode())
                os.close(ready_fd)

    try:
        asyncio.run(service.run(ready))
    except (UpError, TunError) as exc:
        if ready_fd is None:
            raise
        log.error("%s", exc)
        ready(f"error {exc}")
        return 1
    except Exception as exc:
        log.exception("failed")
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        if ready_fd is None:
            raise UpError(message) from None
        ready(f"error {message}")
        return 1
    return 0


def _write_run_file(path: str, text: str) -> None:
    """Write a file of /var/run/wireguard whole or not at all."""
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Service:
    """One interface, from creation to teardown, in the running event loop."""

    def __init__(
        self,
        name: str,
        config: Config,
        *,
        reresolve: tuple[float | None, float | None] = (None, REKEY_FAILED_AFTER),
    ) -> None:
        self.name = name
        self.config = config
        self.stopping = asyncio.Event()
        self.reresolve = reresolve  # (interval, stale_after) of the EndpointReresolver

    async def run(self, ready: Callable[[str], None]) -> None:
        from .interface import TunInterface
        from .tun import Tun, configure
        from .tunnel import device_from_config

        loop = asyncio.get_running_loop()
        name, config = self.name, self.config
        tun = engine = netlink = reresolver = None
        pid_written = up = False
        settings = config.interface
        port = settings.listen_port or 0

        def stop() -> None:
            self.stopping.set()
            if engine is not None:
                engine.stop("signal")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop)
        try:
            # As current wg-quick's cmd_up: the interface (add_if), PreUp
            # (wireguard-tools e6888dd: it may act on the interface before
            # it has addresses, and may make the endpoints' names
            # resolvable), then the names looked up (its `wg addconf`).
            tun = Tun.create(name)
            await self._hooks("PreUp", settings.pre_up)
            try:
                device = await self._unless_stopped(device_from_config(config))
            except OSError as exc:
                raise UpError(f"endpoint: {exc}") from None
            engine = TunInterface(name, device, tun, listen_port=port)
            tun = None  # the engine's now: closed by its close()
            try:
                await engine.start()
            except OSError as exc:
                where = socket_path(name)
                if where in str(exc):
                    raise UpError(f"{where} is in use by a running interface") from None
                raise UpError(f"cannot start {name}: {exc.strerror or exc}") from None

            def set_fwmark(mark: int) -> None:
                device.fwmark = mark
                engine.tunnel.set_fwmark(mark)

            if settings.fwmark:
                set_fwmark(settings.fwmark)
            # pyroute2's synchronous API runs its own event loop: in a thread.
            endpoints = [p.endpoint[0] for p in device.peers.values() if p.endpoint is not None]
            netlink = await asyncio.to_thread(
                configure, engine.tun, config, set_fwmark=set_fwmark, endpoints=endpoints,
                note=self._note_rules,
            )  # fmt: skip
            # The link is up now; the engine opens the UDP socket when it hears
            # of it, or here, where a port in use is an error of `up`.
            try:
                engine.bring_up()
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise UpError(f"UDP port {port} is in use") from None
                raise UpError(f"cannot listen on UDP port {port}: {exc.strerror}") from None
            if self.stopping.is_set():
                raise UpError(f"{name}: stopped before it was up")
            await self._hooks("PostUp", settings.post_up)
            up = True
            self._write_pid_file()
            pid_written = True
            log.info(
                "up: %s, UDP port %d, %d peer(s), TUN offload %s, UDP GSO %s GRO %s",
                name, engine.tunnel.listen_port, len(device.peers),
                engine.tun.offload, engine.tunnel.gso, engine.tunnel.gro_active,
            )  # fmt: skip
            interval, stale_after = self.reresolve
            reresolver = reresolver_for(
                engine.tunnel, config, interval=interval, stale_after=stale_after
            )
            reresolver.start()
            ready(f"ok {engine.tunnel.listen_port}")
            if not self.stopping.is_set():
                why = await engine.wait()
                if why != "signal":
                    log.info("%s", why)
            log.info("shutting down")
        finally:
            if reresolver is not None:
                await reresolver.close()
            if up:
                await self._hooks("PreDown", settings.pre_down, fatal=False)
            if netlink is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(netlink.undo)
                with contextlib.suppress(OSError):
                    os.unlink(rules_path(name))
            if engine is not None:
                with contextlib.suppress(Exception):
                    await engine.close()
            if tun is not None:
                tun.close()
            if up:
                await self._hooks("PostDown", settings.post_down, fatal=False)
            if pid_written:
                self._remove_pid_file()

    async def _unless_stopped(self, work: Awaitable[T]) -> T:
        """*work*, unless a signal comes first: then it is cancelled and
        ``up`` fails (a name being looked up again and again must not keep a
        service that ``up`` gave up on)."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise UpError(f"{self.name}: stopped before it was up")
        return task.result()

    async def _hooks(self, key: str, commands: Sequence[str], *, fatal: bool = True) -> None:
        """Run one kind of hook, as wg-quick: ``%i`` is the interface name,
        the shell is bash with errexit and pipefail (wg-quick runs under
        ``set -e -o pipefail`` and each hook as ``(eval "$hook")``), so the
        first failing command ends the hook. A failure stops ``up`` (*fatal*)
        or is logged."""
        if not commands:
            return
        bash = shutil.which("bash")
        if bash is not None:
            argv = [bash, "-e", "-o", "pipefail", "-c"]
        else:
            # POSIX sh has errexit; dash (Debian's sh) has no pipefail.
            log.warning("bash not found: %s hooks run by /bin/sh -e, without pipefail", key)
            argv = ["/bin/sh", "-e", "-c"]
        for command in commands:
            line = command.replace("%i", self.name)
            log.info("[#] %s", line)
            try:
                proc = await asyncio.create_subprocess_exec(*argv, line, stdin=subprocess.DEVNULL)
                status = await proc.wait()
            except OSError as exc:
                status, line = -1, f"{line} ({exc.strerror})"
            if status != 0:
                message = f"{key} failed (status {status}): {line}"
                if fatal:
                    raise UpError(message)
                log.error("%s", message)

    def _note_rules(self, netlink: NetlinkConfig) -> None:
        """NAME.rules: the policy and firewall rules that may be in the
        kernel (called before each is added, so a SIGKILL at any moment
        leaves them noted for ``down``); none, no file."""
        path = rules_path(self.name)
        if not netlink.rules and not netlink.firewall:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return
        noted = {"netns": _netns_id(), "pid": os.getpid(), "rules": netlink.rules,
                 "firewall": netlink.firewall}  # fmt: skip
        _write_run_file(path, json.dumps(noted))

    def _write_pid_file(self) -> None:
        pid = os.getpid()
        _write_run_file(pid_path(self.name), f"{pid} {_proc_start_time(pid)}\n")

    def _remove_pid_file(self) -> None:
        path = pid_path(self.name)
        with contextlib.suppress(OSError):
            if Path(path).read_text().split()[0] == str(os.getpid()):
                os.unlink(path)


# --------------------------------------------------------------------------- down


def down(target: str) -> int:
    """``down``: stop the interface named *target* (or of the wg-quick file
    *target*) that ``up`` started. Raises :class:`UpError` if there is none."""
    name = target_name(target)
    _need_root()
    pid = _find_process(name)
    if pid is None:
        leftovers = _remove_leftovers(name)
        if not leftovers:
            raise UpError(f"{name!r} is not an interface of this implementation (not up?)")
        log.info("[#] %s was not running; removed %s", name, ", ".join(leftovers))
        return 0
    os.kill(pid, signal.SIGTERM)
    # wg-quick runs PreDown and PostDown with no time limit: while the service
    # runs one (a child of it), it is waited for, and said so from the stop
    # timeout on; it is killed only STOP_TIMEOUT after the last hook it ran
    # (or after the signal, if it ran none).
    quiet_since = time.monotonic()
    said = quiet_since + STOP_TIMEOUT - HOOK_PROGRESS
    while not _wait_gone(pid, 0.2):
        now = time.monotonic()
        if _children(pid):
            quiet_since = now
            if now - said >= HOOK_PROGRESS:
                said = now
                log.info("[#] waiting for %s's PreDown/PostDown hooks to finish", name)
        elif now - quiet_since >= STOP_TIMEOUT:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
            break
    _remove_leftovers(name)
    log.info("[#] %s is down", name)
    return 0


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _proc_start_time(pid) is not None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _children(pid: int) -> list[int]:
    """The live processes whose parent is *pid* (field 4 of /proc/N/stat)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (rest := _proc_stat(entry)) is not None and rest[1] == str(pid):
            found.append(int(entry))
    return found


def _remove_leftovers(name: str) -> list[str]:
    """What a dead process left: its socket file, pid file and the policy
    and firewall rules of a default route. The TUN interface, its addresses and routes
    went with its file descriptor."""
    removed = _remove_stale_rules(name)
    sock = socket_path(name)
    if os.path.exists(sock) and _socket_owner(name) is None:
        with contextlib.suppress(OSError):
            os.unlink(sock)
            removed.append(sock)
    pidf = pid_path(name)
    if os.path.exists(pidf) and _read_pid_file(name) is None:
        with contextlib.suppress(OSError):
            os.unlink(pidf)
            removed.append(pidf)
    return removed


def _remove_stale_rules(name: str) -> list[str]:
    """The policy and firewall rules a killed service noted (see
    :func:`rules_path`), removed if we are in the namespace they were added in."""
    path = rules_path(name)
    try:
        with open(path) as f:
            noted = json.load(f)
    except (OSError, ValueError):
        return []
    if _proc_start_time(int(noted.get("pid", 0))) is not None and _is_ours(noted["pid"]):
        return []  # still running
    if noted.get("netns") != _netns_id():
        log.warning(
            "[#] %s: its policy and firewall rules are in another network namespace; "
            "run down there to remove them",
            name,
        )
        return []
    try:
        firewall = bool(noted.get("firewall"))
        count = NetlinkConfig(name, 0, rules=list(noted.get("rules", [])), firewall=firewall).undo()
    except ImportError:  # no pyroute2
        return []
    with contextlib.suppress(OSError):
        os.unlink(path)
    removed = [f"{count} policy rule(s)"] if count else []
    return [*removed, "its firewall rules"] if firewall else removed
