"""Endpoint host names resolved as ``wg`` resolves them (I/O: a resolver
call and pauses between tries), and re-resolved while the tunnel runs
(:class:`EndpointReresolver`, as wireguard-tools' ``reresolve-dns``)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..config import ConfigError
from ..keys import looks_like_key

if TYPE_CHECKING:
    from ..config import Config
    from ..device import Device, Effects
    from ..keys import PublicKey

__all__ = [
    "REKEY_FAILED_AFTER",
    "RESOLUTION_RETRIES_VARIABLE",
    "EndpointReresolver",
    "ReresolveCounters",
    "endpoint_names",
    "reresolver_for",
    "resolution_retries",
    "resolve_endpoint",
]

RESOLUTION_RETRIES_VARIABLE = "WG_ENDPOINT_RESOLUTION_RETRIES"
_WS = " \t\n\v\f\r"  # what strtoul skips before the number
# getaddrinfo's permanent failures (glibc's NameResolver notes, which wg
# follows): no point in asking again. Anything else may be transient.
_PERMANENT_EAI = frozenset(
    getattr(socket, name)
    for name in ("EAI_NONAME", "EAI_FAIL", "EAI_NODATA")
    if hasattr(socket, name)
)
_FIRST_PAUSE_US = 1_000_000
_LONGEST_PAUSE_US = 20_000_000

log = logging.getLogger(__name__)


def _shown(text: str) -> str:
    return "(not shown: it could be a key)" if looks_like_key(text) else repr(text)


def resolution_retries(environ: Mapping[str, str] = os.environ) -> int | None:
    """How many times ``wg`` asks again for an endpoint's host that did not
    resolve: ``WG_ENDPOINT_RESOLUTION_RETRIES``, 15 if unset, None (no limit)
    for ``infinity``. Anything else but a number (as strtoul reads it, up to
    INT_MAX) is a :class:`ConfigError`, as wg refuses it."""
    text = environ.get(RESOLUTION_RETRIES_VARIABLE)
    if text is None:
        return 15
    if text == "infinity":
        return None
    digits = text.lstrip(_WS)
    digits = digits[1:] if digits.startswith("+") else digits
    if text and not (digits.isascii() and digits.isdigit() and len(digits) <= 10):
        raise ConfigError(
            f"unable to parse {RESOLUTION_RETRIES_VARIABLE}: {_shown(text)} (a number or infinity)"
        )
    count = int(digits or "0")
    if count > 0x7FFFFFFF:
        raise ConfigError(
            f"unable to parse {RESOLUTION_RETRIES_VARIABLE}: {_shown(text)} (too large)"
        )
    return count


_Lookup = Callable[..., Awaitable[list[tuple[Any, ...]]]]
_DEFAULT: Any = object()


async def resolve_endpoint(
    host: str,
    port: int,
    *,
    retries: int | None = _DEFAULT,
    lookup: _Lookup | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> tuple[str, int]:
    """An :class:`Endpoint`'s host (name or literal) and port as one address
    to send to, IPv4 preferred when a name has both (an IPv4-mapped address
    comes back as plain IPv4).

    A name is looked up as ``wg`` looks it up (``parse_endpoint`` in
    wireguard-tools): a permanent failure (no such name) at once, any other
    asks again after 1 s, then 6/5 of the pause before, at most 20 s,
    *retries* times (default :func:`resolution_retries`, None for no limit),
    each retry logged as wg prints it. *lookup* (default the loop's
    getaddrinfo) and *sleep* are for tests. Raises :class:`OSError` (a
    :class:`socket.gaierror` for a resolver error) whose message names the
    host and port, as wg's does."""
    try:
        ipaddress.ip_address(host)
        return host, port
    except ValueError:
        pass
    left = resolution_retries() if retries is _DEFAULT else retries
    if lookup is None:
        lookup = asyncio.get_running_loop().getaddrinfo
    shown = f"{host}:{port}" if not looks_like_key(host) else "(host not shown: it could be a key)"
    pause = _FIRST_PAUSE_US
    while True:
        try:
            try:
                infos = await lookup(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
            except UnicodeError:
                # Python's IDNA step refused the name (an empty or long label):
                # ask the C library with the name as it is, as wg does.
                raw = host.encode("utf-8")
                infos = await lookup(raw, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
            break
        except OSError as exc:  # gaierror, or plain OSError for EAI_SYSTEM
            why = exc.strerror or str(exc)
            permanent = isinstance(exc, socket.gaierror) and exc.errno in _PERMANENT_EAI
            if permanent or (left is not None and left <= 0):
                raise type(exc)(exc.errno, f"{why}: `{shown}'") from None
            if left is not None:
                left -= 1
            log.warning("%s: `%s'. Trying again in %.2f seconds...", why, shown, pause / 1e6)
            await sleep(pause / 1e6)
            pause = min(_LONGEST_PAUSE_US, pause * 6 // 5)
    found = [info for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)]
    if not found:
        raise OSError(f"Neither IPv4 nor IPv6 address found: `{shown}'")
    found.sort(key=lambda info: info[0] != socket.AF_INET)
    address, number = found[0][4][0], found[0][4][1]
    if address.startswith("::ffff:") and "." in address:
        address = address[7:]
    return address, number


# ------------------------------------------------------------ re-resolution

# reresolve-dns (wireguard-tools contrib) sets a peer's endpoint from its name
# again when the latest handshake is older than 135 s: REKEY_AFTER_TIME (120)
# + KEEPALIVE_TIMEOUT (10) + REKEY_TIMEOUT (5), the age past which a peer that
# is in use would have completed a new handshake had it been reachable.
REKEY_FAILED_AFTER = 135.0
# reresolve-dns itself runs from a timer; while a peer stays stale it asks again
# at most this often (or every stale_after seconds, if that is shorter).
STALE_RETRY = 30.0

relog = log  # re-resolution: INFO for a change, WARNING for a failure


class _Binding(Protocol):
    """What the re-resolver needs of a binding (a :class:`~wireguard.io.tunnel.Tunnel`)."""

    device: Device

    @property
    def now(self) -> float: ...  # pragma: no cover

    def apply(self, effects: Effects, now: float | None = None) -> None: ...  # pragma: no cover


@dataclass
class ReresolveCounters:
    """What re-resolution did, for every peer together (see :mod:`wireguard.metrics`)."""

    attempts: int = 0  # names looked up
    failures: int = 0  # look-ups that failed (logged once per change of error)
    changes: int = 0  # a name's answer differed from the one before (logged)
    endpoint_updates: int = 0  # endpoints the device was given


@dataclass
class _Name:
    key: PublicKey
    host: str
    port: int
    address: tuple[str, int] | None  # the latest answer
    last_attempt: float
    error: str | None = None  # the failure logged last, None while it resolves


def endpoint_names(config: Config) -> dict[PublicKey, tuple[str, int]]:
    """The peers of *config* whose ``Endpoint`` is a host name (not a literal):
    public key -> (name, port)."""
    names = {}
    for peer in config.peers:
        if peer.endpoint is None:
            continue
        try:
            ipaddress.ip_address(peer.endpoint.host)
        except ValueError:
            names[peer.public_key] = (peer.endpoint.host, peer.endpoint.port)
    return names


class EndpointReresolver:
    """Looks the endpoint names of peers up again while a tunnel runs, and
    gives the device the new address through its ordinary API
    (:meth:`Device.add_peer` with ``endpoint=``, then
    :meth:`Device.send_staged`), as ``wg set wg0 peer KEY endpoint NAME:PORT``
    from wireguard-tools' ``reresolve-dns`` does.

    Two rules, either or both:

    * *stale_after* (default :data:`REKEY_FAILED_AFTER`, 135 s; None turns it
      off): a peer whose latest handshake (or, before the first one, the
      tunnel's start) is older than that is looked up again, then every
      ``min(30, stale_after)`` seconds while it stays so, and its endpoint is
      set to the answer if it differs from the one in use (a roamed endpoint
      that no longer answers is replaced too, as reresolve-dns does). An idle
      peer with no PersistentKeepalive has no handshakes either: it is looked
      up every 30 s, as reresolve-dns would.
    * *interval* (default None): every peer is looked up this often, and its
      endpoint set when the name's answer changed; a peer that roamed while
      its name kept its address is left alone.

    A change of a name's address is logged (INFO on ``wireguard.io.resolve``);
    a failure is logged once (WARNING) until the error changes or the name
    resolves again, and counted in :attr:`counters`. Each look-up is one
    try (:func:`resolve_endpoint` with no retries): the schedule is the retry.

    *binding* is a :class:`~wireguard.io.tunnel.Tunnel` (its ``device``,
    ``now`` and ``apply``); *names* maps public keys to (host, port), as
    :func:`endpoint_names` gives them; *lookup* is for tests. :meth:`check`
    runs one pass at a given time (what the task runs); :meth:`start` and
    :meth:`close` run the task on the loop.
    """

    def __init__(
        self,
        binding: _Binding,
        names: Mapping[PublicKey, tuple[str, int]],
        *,
        interval: float | None = None,
        stale_after: float | None = REKEY_FAILED_AFTER,
        lookup: _Lookup | None = None,
    ) -> None:
        for value, what in ((interval, "interval"), (stale_after, "stale_after")):
            if value is not None and not value > 0:
                raise ValueError(f"the re-resolution {what} must be positive (or None: off)")
        self.binding = binding
        self.interval = interval
        self.stale_after = stale_after
        self.retry = None if stale_after is None else min(STALE_RETRY, stale_after)
        self.lookup = lookup
        self.counters = ReresolveCounters()
        self._names: dict[PublicKey, _Name] = {}
        self._started_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        now = None
        for key, (host, port) in names.items():
            peer = binding.device.peers.get(key)
            address = None if peer is None or peer.endpoint is None else peer.endpoint[:2]
            if now is None:
                now = binding.now
                self._started_at = now
            self._names[key] = _Name(key, host, port, address, now)

    @property
    def names(self) -> dict[PublicKey, tuple[str, int]]:
        """The peers looked up again: public key -> (name, port)."""
        return {k: (n.host, n.port) for k, n in self._names.items()}

    @property
    def active(self) -> bool:
        """Whether there is anything to do: a name, and a rule switched on."""
        return bool(self._names) and (self.interval is not None or self.stale_after is not None)

    # ------------------------------------------------------------ the rules

    def _stale(self, name: _Name, now: float) -> bool:
        if self.stale_after is None or self.retry is None:
            return False
        peer = self.binding.device.peers.get(name.key)
        if peer is None:
            return False
        since = peer.last_handshake if peer.last_handshake is not None else self._started_at
        assert since is not None
        return now - since > self.stale_after and now - name.last_attempt >= self.retry

    def _interval_due(self, name: _Name, now: float) -> bool:
        return self.interval is not None and now - name.last_attempt >= self.interval

    def next_due(self, now: float) -> float | None:
        """When the next pass may have something to do (None: never)."""
        due: list[float] = []
        for name in self._names.values():
            if self.interval is not None:
                due.append(name.last_attempt + self.interval)
            if self.stale_after is not None and self.retry is not None:
                peer = self.binding.device.peers.get(name.key)
                if peer is None:
                    # Removed (``wg set ... remove``), perhaps to be set again:
                    # look for it again later, as reresolve-dns's timer would.
                    due.append(max(now, name.last_attempt) + self.retry)
                    continue
                since = peer.last_handshake if peer.last_handshake is not None else self._started_at
                assert since is not None
                # "older than": just past the age, and not before the retry pause
                due.append(max(since + self.stale_after + 1e-3, name.last_attempt + self.retry))
        return min(due) if due else None

    async def check(self, now: float) -> int:
        """One pass at *now* (the binding's clock): look up the names that are
        due and set the endpoints that change. Returns how many were set."""
        work = []
        for name in self._names.values():
            stale = self._stale(name, now)
            if stale or self._interval_due(name, now):
                name.last_attempt = now
                work.append(self._one(name, stale))
        results = await asyncio.gather(*work)
        return sum(results)

    async def _one(self, name: _Name, stale: bool) -> bool:
        shown = f"{name.host}:{name.port}"
        key = name.key.to_base64()
        self.counters.attempts += 1
        try:
            address = await resolve_endpoint(name.host, name.port, retries=0, lookup=self.lookup)
        except OSError as exc:
            self.counters.failures += 1
            error = exc.strerror or str(exc)
            if error != name.error:
                relog.warning(
                    "peer %s: cannot re-resolve endpoint %s: %s (kept %s; failures are "
                    "counted, not logged again until the error changes)",
                    key, shown, error, _address_text(name.address),
                )  # fmt: skip
            name.error = error
            return False
        if name.error is not None:
            relog.info("peer %s: endpoint %s resolves again", key, shown)
            name.error = None
        changed = address != name.address
        if changed:
            self.counters.changes += 1
            relog.info(
                "peer %s: endpoint %s now resolves to %s (was %s)%s",
                key, shown, _address_text(address), _address_text(name.address),
                " after its handshakes went stale" if stale else "",
            )  # fmt: skip
        name.address = address
        device = self.binding.device
        peer = device.peers.get(name.key)
        if peer is None:
            return False
        current = None if peer.endpoint is None else peer.endpoint[:2]
        if current == address or not (changed or stale):
            return False
        if not changed:
            relog.info(
                "peer %s: handshakes stale at %s, endpoint set to %s from %s again",
                key, _address_text(current), _address_text(address), shown,
            )  # fmt: skip
        now = self.binding.now
        device.add_peer(name.key, endpoint=address)
        self.binding.apply(device.send_staged(name.key, now), now)
        self.counters.endpoint_updates += 1
        return True

    # ------------------------------------------------------------- the task

    def start(self) -> None:
        """Run the rules on the running loop until :meth:`close` (nothing to
        do, nothing runs)."""
        if self._task is None and self.active:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            now = self.binding.now
            due = self.next_due(now)
            if due is None:
                return
            if due > now:
                await asyncio.sleep(due - now)
                continue
            try:
                await self.check(now)
            except Exception:  # never let a surprise stop re-resolution for good
                relog.exception("endpoint re-resolution failed")
                await asyncio.sleep(self.retry or self.interval or STALE_RETRY)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _address_text(address: tuple[str, int] | None) -> str:
    if address is None:
        return "none"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def reresolver_for(
    binding: _Binding,
    config: Config,
    *,
    interval: float | None = None,
    stale_after: float | None = REKEY_FAILED_AFTER,
    lookup: _Lookup | None = None,
) -> EndpointReresolver:
    """An :class:`EndpointReresolver` for the peers of *config* whose endpoints are names."""
    return EndpointReresolver(
        binding, endpoint_names(config), interval=interval, stale_after=stale_after, lookup=lookup
    )
