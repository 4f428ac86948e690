"""Endpoint host names resolved as ``wg`` resolves them (I/O: a resolver
call and pauses between tries)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from ..config import ConfigError
from ..keys import looks_like_key

__all__ = ["RESOLUTION_RETRIES_VARIABLE", "resolution_retries", "resolve_endpoint"]

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
            infos = await lookup(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
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


