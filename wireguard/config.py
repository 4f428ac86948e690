"""wg-quick and ``wg setconf`` configuration files: parse, check and write them.

Two formats share one syntax. ``wg setconf`` / ``wg showconf`` speak only what the
device itself knows (its private key, listen port, fwmark and peers); ``wg-quick``
adds what the host needs around the device (addresses, DNS, MTU, routing table,
hook commands). One data model, :class:`Config`, holds both; :func:`strip_wg_quick`
drops the host part, as ``wg-quick strip`` does.

The syntax is wg's own (``config.c`` in wireguard-tools), not :mod:`configparser`:
``#`` starts a comment anywhere on a line, keys and section names are
case-insensitive, and whitespace is ignored around ``=`` and inside values (``wg``
deletes every space of a line before looking at it). Hook commands are the one
exception: as in ``wg-quick``, a hook is the whole rest of its line after the
first ``=``, inner spaces and ``#`` included, because ``wg-quick`` hands it to
bash, which decides what is a comment.

What this module will not do, on purpose:

- resolve host names while parsing: an :class:`Endpoint` keeps the host as written,
  and the binding resolves it (with :func:`resolve_endpoint`, which retries as ``wg``
  does at ``setconf`` time);
- run PreUp/PostUp/PreDown/PostDown: they are kept verbatim so a file can be
  written back unchanged, and every one is reported with a :class:`ConfigWarning`
  (``python -m wireguard up``, like ``wg-quick``, runs them; nothing else does);
- touch the file system, except :func:`load` and :func:`read_key_file`, which only
  read the file they are given (and warn, as wg-quick does, if other users can reach
  it).

Every error is a :class:`ConfigError` that names the file, the line and the key, so
a user can go straight to the mistake: ``wg0.conf:7: AllowedIPs: '10.0.0.300/32'
is not an IP network``. Secret keys are never echoed into messages.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
)
from typing import Literal, TypeVar

from .errors import KeyFormatError, LocalProtocolError
from .keys import PresharedKey, PrivateKey, PublicKey, looks_like_key

__all__ = [
    "AccessWarning",
    "Config",
    "ConfigError",
    "ConfigWarning",
    "Endpoint",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "InterfaceConfig",
    "PeerConfig",
    "check_access",
    "dump_setconf",
    "dump_wg_quick",
    "load",
    "parse_setconf",
    "parse_wg_quick",
    "read_key_file",
    "strip_wg_quick",
]

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
IPInterface = IPv4Interface | IPv6Interface


# --------------------------------------------------------------------------- errors


def _where(filename: str | None, lineno: int | None, key: str | None, message: str) -> str:
    parts = []
    if filename is not None:
        parts.append(filename)
    if lineno is not None:
        parts.append(str(lineno))
    prefix = ":".join(parts)
    head = f"{prefix}: " if prefix else ""
    if key:
        head += f"{key}: "
    return head + message


class _Located(Exception):
    """Where in a file a problem is: ``filename``, ``lineno``, ``key``."""

    def __init__(
        self,
        message: str,
        *,
        filename: str | None = None,
        lineno: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.filename = filename
        self.lineno = lineno
        self.key = key
        super().__init__(_where(filename, lineno, key, message))


class ConfigError(_Located, LocalProtocolError, ValueError):
    """A configuration file, or a configuration built in code, is not valid.

    ``filename``, ``lineno`` and ``key`` say where, so that the message reads like
    a compiler's (``wg0.conf:7: AllowedIPs: ...``) and a tool can point at the
    line. ``lineno`` is ``None`` for a :class:`Config` built in code; ``message``
    is the bare problem without the location.
    """


HOOK_WARNING = "hook command kept; only `python -m wireguard up` runs it"
HOOK_KEYS = frozenset({"PreUp", "PostUp", "PreDown", "PostDown"})


class ConfigWarning(_Located, UserWarning):
    """Something in a file is accepted but deserves the user's attention: hooks
    that are kept but not run here, host bits dropped from an AllowedIP, a missing
    PrivateKey, an ignored empty value. Located like :class:`ConfigError`."""


class AccessWarning(ConfigWarning):
    """A file that holds keys can be reached by other users: wg-quick's
    ``Warning: `FILE' is world accessible``, which is what ``str()`` gives.
    ``filename`` is the file, as resolved (wg-quick names it so too)."""

    def __init__(self, filename: str) -> None:
        super().__init__(f"Warning: `{filename}' is world accessible")
        self.filename = filename


def check_access(path: str | os.PathLike[str], fd: int | None = None) -> None:
    """Issue an :class:`AccessWarning` if the regular file *path* (open as
    *fd*, if given) can be reached by users other than its owner: some
    permission for the group or for others, on the file and on its directory
    alike. wg-quick warns for others only; the group is checked too, since a
    private key readable by a group is no better. Files that are not regular
    (``/dev/null``, a pipe) are left alone."""
    real = os.path.realpath(path)
    try:
        mode = os.fstat(fd).st_mode if fd is not None else os.stat(real).st_mode
        directory = os.stat(os.path.dirname(real) or ".").st_mode
    except OSError:
        return
    if stat.S_ISREG(mode) and mode & directory & 0o077:
        warnings.warn(AccessWarning(real), stacklevel=3)


class _Problem(Exception):
    """A value is wrong; whoever catches it knows the file, line and key."""


_T = TypeVar("_T")
_K = TypeVar("_K", PrivateKey, PublicKey, PresharedKey)


def _checked(key: str, check: Callable[..., _T], *args: object) -> _T:
    """Run a value check for a dataclass built in code, where there is no line."""
    try:
        return check(*args)
    except _Problem as exc:
        raise ConfigError(str(exc), key=key) from None


# --------------------------------------------------------------------------- values

# char_is_space() in wireguard-tools: what wg deletes from a line. Python's own
# str.split()/strip() would also eat Unicode spaces that wg keeps.
_WS = " \t\n\v\f\r"
_WS_RE = re.compile(r"[ \t\n\v\f\r]+")
_NUMERIC_RE = re.compile(r"[0-9.]+")
_LABEL = r"[A-Za-z0-9_-]{1,63}"
_HOSTNAME_RE = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")

_PORT_MAX = 0xFFFF
_FWMARK_MAX = 0xFFFFFFFF
_KEEPALIVE_MAX = 0xFFFF
# 68 is the smallest MTU Linux allows on any link (ETH_MIN_MTU, RFC 791); a UDP
# datagram cannot carry more than 65535.
_MTU_MIN = 68
_MTU_MAX = 0xFFFF


_NOT_SHOWN = "value (not shown: it could be a key)"


def _q(value: object) -> str:
    """*value* quoted for a message, unless it could be a key: a private key
    pasted into the wrong place must not end up in a log."""
    text = value if isinstance(value, str) else repr(value)
    if looks_like_key(text):
        return _NOT_SHOWN
    return f"'{text}'" if isinstance(value, str) else text


def _compact(text: str) -> str:
    return _WS_RE.sub("", text)


def _uint(text: str, maximum: int, what: str) -> int:
    # Length guard first: int() refuses strings over 4300 digits with its own error.
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > maximum:
        raise _Problem(f"{_q(text)} is not {what}")
    return int(text)


def _parse_port(text: str) -> int:
    return _uint(text, _PORT_MAX, "a port number (0..65535)")


def _parse_fwmark(text: str) -> int:
    # As wg: "off", decimal, or hex with a lowercase "0x"; no sign, no spaces.
    what = "a firewall mark (off, 0..4294967295 or 0x0..0xffffffff)"
    if text.lower() == "off":
        return 0
    if len(text) > 2 and text.startswith("0x"):
        digits = text[2:]
        if not re.fullmatch(r"[0-9a-fA-F]{1,8}", digits.lstrip("0") or "0"):
            raise _Problem(f"{_q(text)} is not {what}")
        return int(digits, 16)
    return _uint(text, _FWMARK_MAX, what)


def _parse_keepalive(text: str) -> int:
    if text.lower() == "off":
        return 0
    return _uint(text, _KEEPALIVE_MAX, "a keepalive interval (off or 0..65535 seconds)")


def _parse_mtu(text: str) -> int:
    what = f"an MTU ({_MTU_MIN}..{_MTU_MAX})"
    return _check_range(_uint(text, _MTU_MAX, what), _MTU_MAX, what, _MTU_MIN)


def _check_range(value: int, maximum: int, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise _Problem(f"{_q(str(value))} is not {what}")
    return value


def _parse_ip(text: str) -> IPAddress | None:
    # A scope ("%eth0") is meaningful for a socket address, never for a route.
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _split_prefix(entry: str, what: str) -> tuple[IPAddress, int]:
    """``addr[/prefix]`` as wg reads it: a bare address is a host route."""
    addr_text, slash, prefix_text = entry.partition("/")
    addr = _parse_ip(addr_text)
    if addr is None:
        raise _Problem(f"{_q(entry)} is not {what}")
    if not slash:
        return addr, addr.max_prefixlen
    if not (prefix_text.isascii() and prefix_text.isdigit()) or len(prefix_text) > 3:
        raise _Problem(f"{_q(entry)} is not {what}")
    prefix = int(prefix_text)
    if prefix > addr.max_prefixlen:
        raise _Problem(f"{_q(entry)} is not {what} (prefix length {prefix} > {addr.max_prefixlen})")
    return addr, prefix


def _parse_network(entry: str) -> tuple[IPNetwork, bool]:
    """One AllowedIPs entry, and whether it had host bits set (which wg accepts
    with a warning and the kernel masks off)."""
    addr, prefix = _split_prefix(entry, "an IP network")
    network = ipaddress.ip_network((addr, prefix), strict=False)
    return network, network.network_address != addr


def _parse_interface_address(entry: str) -> IPInterface:
    addr, prefix = _split_prefix(entry, "an IP address with an optional /prefix")
    return ipaddress.ip_interface((addr, prefix))


def _looks_like_dns_server(token: str) -> bool:
    # wg-quick's own test: digits and dots, or any colon, is a server address;
    # anything else is a search domain.
    return bool(_NUMERIC_RE.fullmatch(token)) or ":" in token


def _parse_dns_server(token: str) -> IPAddress:
    # A scope is allowed here: resolv.conf takes "fe80::1%eth0".
    try:
        return ipaddress.ip_address(token)
    except ValueError:
        raise _Problem(f"{_q(token)} is not an IP address") from None


def _check_search_domain(domain: str) -> str:
    if (
        not isinstance(domain, str)
        or _looks_like_dns_server(domain)
        or not _HOSTNAME_RE.fullmatch(domain)
        or len(domain.rstrip(".")) > 253
    ):
        raise _Problem(f"{_q(domain)} is not a search domain")
    return domain


def _normalize_host(host: str) -> str:
    """An endpoint host: an IP literal (normalized, as ``wg showconf`` prints it)
    or a host name (kept as written; resolving it is the binding's job)."""
    if not isinstance(host, str):
        raise _Problem(f"{_q(host)} is not a host")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if ":" in host or "%" in host:
        raise _Problem(f"{_q(host)} is not an IPv6 address")
    if _NUMERIC_RE.fullmatch(host):
        raise _Problem(f"{_q(host)} is not an IPv4 address")
    if not _HOSTNAME_RE.fullmatch(host) or len(host.rstrip(".")) > 253:
        raise _Problem(f"{_q(host)} is not an IP address or a host name")
    return host


def _check_endpoint_port(port: int) -> int:
    # Port 0 is fine for ListenPort (the kernel picks one) but nothing can be
    # sent to it.
    return _check_range(port, _PORT_MAX, "an endpoint port (1..65535)", minimum=1)


def _parse_endpoint(text: str) -> Endpoint:
    # The split follows wg's parse_endpoint(): a leading '[' must be closed and
    # followed by ':port'; otherwise the port is after the last ':'. Unlike wg we
    # refuse an unbracketed IPv6 address, whose port wg finds only by luck.
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise _Problem(f"{_q(text)} has no closing ']' (expected [address]:port)")
        host, rest = text[1:close], text[close + 1 :]
        if not rest.startswith(":") or rest == ":":
            raise _Problem(f"{_q(text)} has no port after ']' (expected [address]:port)")
        port_text = rest[1:]
        if not host:
            raise _Problem(f"{_q(text)} has no address between the brackets")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or not port_text:
            raise _Problem(f"{_q(text)} has no port (expected host:port or [IPv6]:port)")
        if not host:
            raise _Problem(f"{_q(text)} has no host (expected host:port or [IPv6]:port)")
        if ":" in host:
            hint = f", as in [{host}]:{port_text}" if _q(text) != _NOT_SHOWN else ""
            raise _Problem(f"{_q(text)}: an IPv6 endpoint needs brackets{hint}")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise _Problem(f"{_q(text)} has a port that is not a number (1..65535)")
    port = int(port_text)
    if not 1 <= port <= _PORT_MAX:
        raise _Problem(f"{_q(text)} has port {port}, outside 1..65535")
    return Endpoint(_normalize_host(host), port)


def _check_hook(command: str) -> str:
    # A hook must survive dump -> parse unchanged: a newline would end the
    # line, and outer whitespace would be trimmed. A '#' is fine: a hook keeps
    # the rest of its line, as in wg-quick.
    if (
        not isinstance(command, str)
        or not command
        or command != command.strip(_WS)
        or any(c in command for c in "\n\r\0")
    ):
        raise _Problem(
            f"{_q(command)} cannot be written to a config file (empty, outer whitespace,"
            " a newline or NUL)"
        )
    return command


# A routing table as `ip route ... table T` takes it: a number or the name of
# an entry in rt_tables, which is letters, digits, '_', '.' and '-'.
_TABLE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _check_table(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_RE.fullmatch(table):
        raise _Problem(f"{_q(table)} is not a routing table (off, auto, a number or a name)")
    return table


def _check_type(value: object, types: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, types):
        raise _Problem(f"{_q(value)} is not {what}")


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Endpoint:
    """Where a peer is reached: a host (IP literal or name, unresolved) and a UDP
    port. ``str()`` is the form ``wg`` prints and reads: ``[v6]:port`` for IPv6."""

    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", _checked("Endpoint", _normalize_host, self.host))
        _checked("Endpoint", _check_endpoint_port, self.port)

    @property
    def ip(self) -> IPAddress | None:
        """The address if ``host`` is an IP literal, ``None`` for a host name."""
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PeerConfig:
    """One ``[Peer]`` section. ``None`` means the file did not set the value;
    a keepalive of 0 means "off" was written, which a round trip keeps."""

    public_key: PublicKey
    preshared_key: PresharedKey | None = None
    allowed_ips: tuple[IPNetwork, ...] = ()
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None
    #: ``(filename, line of its PublicKey)`` when parsed from a file, for a note
    #: about the peer made later (not compared: the same peer from another file
    #: is equal).
    location: tuple[str, int] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_ips", tuple(self.allowed_ips))
        _checked("PublicKey", _check_type, self.public_key, PublicKey, "a PublicKey")
        if self.preshared_key is not None:
            _checked("PresharedKey", _check_type, self.preshared_key, PresharedKey, "a key")
        for net in self.allowed_ips:
            _checked("AllowedIPs", _check_type, net, (IPv4Network, IPv6Network), "an IP network")
        if self.endpoint is not None:
            _checked("Endpoint", _check_type, self.endpoint, Endpoint, "an Endpoint")
        if self.persistent_keepalive is not None:
            _checked(
                "PersistentKeepalive",
                _check_range,
                self.persistent_keepalive,
                _KEEPALIVE_MAX,
                "a keepalive interval (0..65535)",
            )


_INTERFACE_TUPLES = ("addresses", "dns", "dns_search", "pre_up", "post_up", "pre_down", "post_down")


@dataclass(frozen=True)
class InterfaceConfig:
    """The ``[Interface]`` section.

    The first three fields are the device's own (what ``wg setconf`` accepts);
    the rest belong to ``wg-quick`` and configure the host around the device.
    ``dns`` holds server addresses and ``dns_search`` search domains, which
    wg-quick tells apart inside the same ``DNS =`` list. Hooks are kept; only
    ``python -m wireguard up`` runs them.
    """

    private_key: PrivateKey | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    dns: tuple[IPAddress, ...] = ()
    dns_search: tuple[str, ...] = ()
    mtu: int | None = None
    table: str | None = None
    pre_up: tuple[str, ...] = ()
    post_up: tuple[str, ...] = ()
    pre_down: tuple[str, ...] = ()
    post_down: tuple[str, ...] = ()
    save_config: bool = False
    #: The line of each key that is set once (``"Table"``: 4; not Address,
    #: DNS or the hooks, which may repeat) when parsed from a file, for a note
    #: about a value made later (not compared).
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Lists are accepted for convenience and frozen, so a Config is hashable.
        for name in _INTERFACE_TUPLES:
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.private_key is not None:
            _checked("PrivateKey", _check_type, self.private_key, PrivateKey, "a PrivateKey")
        if self.listen_port is not None:
            _checked("ListenPort", _check_range, self.listen_port, _PORT_MAX, "a port (0..65535)")
        if self.fwmark is not None:
            _checked("FwMark", _check_range, self.fwmark, _FWMARK_MAX, "a firewall mark")
        for addr in self.addresses:
            _checked("Address", _check_type, addr, (IPv4Interface, IPv6Interface), "an address")
        for server in self.dns:
            _checked("DNS", _check_type, server, (IPv4Address, IPv6Address), "an IP address")
        for domain in self.dns_search:
            _checked("DNS", _check_search_domain, domain)
        if self.mtu is not None:
            _checked("MTU", _check_range, self.mtu, _MTU_MAX, "an MTU (68..65535)", _MTU_MIN)
        if self.table is not None:
            _checked("Table", _check_table, self.table)
        for key, hooks in self._hooks():
            for command in hooks:
                _checked(key, _check_hook, command)

    def _hooks(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        return (
            ("PreUp", self.pre_up),
            ("PostUp", self.post_up),
            ("PreDown", self.pre_down),
            ("PostDown", self.post_down),
        )

    @property
    def has_wg_quick_settings(self) -> bool:
        """Whether anything here is beyond what ``wg setconf`` accepts."""
        return self != strip_wg_quick(Config(self)).interface


@dataclass(frozen=True)
class Config:
    """A whole file: one interface and its peers, in file order.

    ``warnings`` carries what the parser noted (see :class:`ConfigWarning`); it
    is not part of equality, so ``parse(dump(c)) == c`` compares only settings.
    """

    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    peers: tuple[PeerConfig, ...] = ()
    warnings: tuple[ConfigWarning, ...] = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(self.peers))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        _checked("Interface", _check_type, self.interface, InterfaceConfig, "an InterfaceConfig")
        seen: set[PublicKey] = set()
        for peer in self.peers:
            _checked("Peer", _check_type, peer, PeerConfig, "a PeerConfig")
            if peer.public_key in seen:
                raise ConfigError(
                    f"two peers have public key {peer.public_key.to_base64()}", key="PublicKey"
                )
            seen.add(peer.public_key)


def strip_wg_quick(config: Config) -> Config:
    """Keep only what ``wg setconf`` accepts, as ``wg-quick strip`` does, so the
    result can be handed to the device (or compared with ``wg showconf``)."""
    iface = config.interface
    return Config(
        InterfaceConfig(
            private_key=iface.private_key, listen_port=iface.listen_port, fwmark=iface.fwmark
        ),
        config.peers,
    )


# --------------------------------------------------------------------------- parser

_INTERFACE_KEYS = {"privatekey": "PrivateKey", "listenport": "ListenPort", "fwmark": "FwMark"}
_PEER_KEYS = {
    "publickey": "PublicKey",
    "presharedkey": "PresharedKey",
    "allowedips": "AllowedIPs",
    "endpoint": "Endpoint",
    "persistentkeepalive": "PersistentKeepalive",
}
_WG_QUICK_KEYS = {
    "address": "Address",
    "dns": "DNS",
    "mtu": "MTU",
    "table": "Table",
    "preup": "PreUp",
    "postup": "PostUp",
    "predown": "PreDown",
    "postdown": "PostDown",
    "saveconfig": "SaveConfig",
}
_REPEATABLE = frozenset({"Address", "DNS", "AllowedIPs", "PreUp", "PostUp", "PreDown", "PostDown"})
_HOOK_FIELDS = ("PreUp", "PostUp", "PreDown", "PostDown")


class _InterfaceBuilder:
    def __init__(self) -> None:
        self.lineno: int | None = None
        self.seen: dict[str, int] = {}
        self.private_key: PrivateKey | None = None
        self.listen_port: int | None = None
        self.fwmark: int | None = None
        self.addresses: list[IPInterface] = []
        self.dns: list[IPAddress] = []
        self.dns_search: list[str] = []
        self.mtu: int | None = None
        self.table: str | None = None
        self.hooks: dict[str, list[str]] = {key: [] for key in _HOOK_FIELDS}
        self.save_config = False

    def build(self) -> InterfaceConfig:
        return InterfaceConfig(
            private_key=self.private_key,
            listen_port=self.listen_port,
            fwmark=self.fwmark,
            addresses=tuple(self.addresses),
            dns=tuple(self.dns),
            dns_search=tuple(self.dns_search),
            mtu=self.mtu,
            table=self.table,
            pre_up=tuple(self.hooks["PreUp"]),
            post_up=tuple(self.hooks["PostUp"]),
            pre_down=tuple(self.hooks["PreDown"]),
            post_down=tuple(self.hooks["PostDown"]),
            save_config=self.save_config,
            lines=dict(self.seen),
        )


class _PeerBuilder:
    def __init__(self, lineno: int) -> None:
        self.lineno = lineno
        self.seen: dict[str, int] = {}
        self.public_key: PublicKey | None = None
        self.preshared_key: PresharedKey | None = None
        self.allowed_ips: list[IPNetwork] = []
        self.endpoint: Endpoint | None = None
        self.persistent_keepalive: int | None = None

    def build(self, filename: str) -> PeerConfig:
        assert self.public_key is not None
        return PeerConfig(
            public_key=self.public_key,
            preshared_key=self.preshared_key,
            allowed_ips=tuple(self.allowed_ips),
            endpoint=self.endpoint,
            persistent_keepalive=self.persistent_keepalive,
            location=(filename, self.seen["PublicKey"]),
        )


def _shown_key(text: str) -> str | None:
    """The key as written, for an error message, unless it does not look like a
    key name: a pasted line of base64 may be a private key, which must not end
    up in a log."""
    return text if _KEY_NAME_RE.fullmatch(text) and not looks_like_key(text) else None


_KEY_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_ \t-]{0,31}")
_HERE = -1  # "the line being parsed", as a default argument


class _Parser:
    """One pass over the lines; the state is the current section."""

    def __init__(self, filename: str, *, wg_quick: bool, strict: bool) -> None:
        self.filename = filename
        self.wg_quick = wg_quick
        self.strict = strict
        self.lineno = 0
        self.section: Literal["interface", "peer"] | None = None
        self.iface = _InterfaceBuilder()
        self.peers: list[_PeerBuilder] = []
        self.public_keys: dict[PublicKey, int] = {}
        self.warnings: list[ConfigWarning] = []

    def error(self, key: str | None, message: str, lineno: int | None = _HERE) -> ConfigError:
        return ConfigError(
            message,
            filename=self.filename,
            lineno=self.lineno if lineno == _HERE else lineno,
            key=key,
        )

    def warn(self, key: str | None, message: str, lineno: int | None = _HERE) -> None:
        self.warnings.append(
            ConfigWarning(
                message,
                filename=self.filename,
                lineno=self.lineno if lineno == _HERE else lineno,
                key=key,
            )
        )

    def parse(self, text: str) -> Config:
        # Split on "\n" only (not str.splitlines, which also breaks at \v, \f,
        # \x1c.. and U+2028) so line numbers are the ones an editor and wg show.
        for lineno, raw in enumerate(text.split("\n"), start=1):
            self.lineno = lineno
            self.line(raw)
        return self.finish()

    def line(self, raw: str) -> None:
        line = raw.split("#", 1)[0]
        compact = _compact(line)
        if not compact:
            return
        if "\0" in line:
            raise self.error(None, "line contains a NUL character")
        if compact.startswith("["):
            self.header(compact, line.strip(_WS))
            return
        key_text, eq, value = line.partition("=")
        key_text = key_text.strip(_WS)
        if not eq:
            shown = _shown_key(_WS_RE.split(key_text, 1)[0])
            raise self.error(shown, "missing '=' between key and value (expected Key = Value)")
        if not key_text:
            raise self.error(None, "missing key before '='")
        if self.section is None:
            raise self.error(
                _shown_key(key_text), "key outside a section (expected [Interface] or [Peer] first)"
            )
        lookup = _compact(key_text).lower()
        if self.section == "interface" and _WG_QUICK_KEYS.get(lookup) in HOOK_KEYS:
            # wg-quick's parse_options (src/wg-quick/linux.bash, since
            # v1.0.20260223) gives a hook the unstripped rest of the line, '#'
            # and all; the first '=' is the same one, it comes before any '#'.
            value = raw.partition("=")[2]
        if self.section == "interface":
            self.interface_key(lookup, key_text, value)
        else:
            self.peer_key(lookup, key_text, value)

    def header(self, compact: str, shown: str) -> None:
        name = compact.lower()
        if name == "[interface]":
            if self.iface.lineno is not None:
                raise self.error(
                    "[Interface]", f"second [Interface] section (first on line {self.iface.lineno})"
                )
            self.iface.lineno = self.lineno
            self.section = "interface"
        elif name == "[peer]":
            self.peers.append(_PeerBuilder(self.lineno))
            self.section = "peer"
        elif looks_like_key(shown):
            message = "unknown section, not shown: it could be a key"
            raise self.error(None, f"{message} (expected [Interface] or [Peer])")
        else:
            raise self.error(shown, "unknown section (expected [Interface] or [Peer])")

    def once(self, seen: dict[str, int], key: str) -> None:
        """wg silently lets a later line win; we refuse, since two PrivateKey
        lines are almost always a merge mistake that would pick the wrong key."""
        if key in _REPEATABLE:
            return
        if key in seen:
            raise self.error(key, f"set twice (first on line {seen[key]})")
        seen[key] = self.lineno

    def unknown(self, key_text: str, lookup: str, here: str) -> ConfigError:
        shown = _shown_key(key_text)
        if shown is None:
            return self.error(None, f"unknown key in [{here}] (not shown: not a key name)")
        if here == "Interface" and lookup in _PEER_KEYS:
            return self.error(key_text, "unknown key in [Interface] (it belongs in [Peer])")
        if here == "Peer" and (lookup in _INTERFACE_KEYS or lookup in _WG_QUICK_KEYS):
            return self.error(key_text, "unknown key in [Peer] (it belongs in [Interface])")
        return self.error(key_text, f"unknown key in [{here}]")

    def required(self, key: str, value: str) -> str:
        if not value:
            raise self.error(key, "has no value")
        return value

    def interface_key(self, lookup: str, key_text: str, raw_value: str) -> None:
        if lookup in _INTERFACE_KEYS:
            key = _INTERFACE_KEYS[lookup]
        elif lookup in _WG_QUICK_KEYS:
            key = _WG_QUICK_KEYS[lookup]
            if not self.wg_quick:
                if self.strict:
                    raise self.error(
                        key,
                        "is a wg-quick key, which `wg setconf` does not accept"
                        " (parse with parse_wg_quick, or strip it)",
                    )
                self.warn(key, "wg-quick key ignored (as `wg-quick strip` does)")
                return
        else:
            raise self.unknown(key_text, lookup, "Interface")
        self.once(self.iface.seen, key)
        try:
            self.interface_value(key, raw_value)
        except _Problem as exc:
            raise self.error(key, str(exc)) from None

    def interface_value(self, key: str, raw_value: str) -> None:
        iface = self.iface
        value = _compact(raw_value)
        if key == "PrivateKey":
            iface.private_key = self.key(PrivateKey, key, value, secret=True)
        elif key == "ListenPort":
            iface.listen_port = _parse_port(self.required(key, value))
        elif key == "FwMark":
            iface.fwmark = _parse_fwmark(self.required(key, value))
        elif key in ("Address", "DNS"):
            # wg-quick splits these on commas and whitespace alike (bash word
            # splitting), so empty items vanish.
            tokens = [t for t in _WS_RE.split(raw_value.replace(",", " ")) if t]
            if not tokens:
                self.warn(key, "empty value ignored")
            for token in tokens:
                if key == "Address":
                    iface.addresses.append(_parse_interface_address(token))
                elif _looks_like_dns_server(token):
                    iface.dns.append(_parse_dns_server(token))
                else:
                    iface.dns_search.append(_check_search_domain(token))
        else:
            stripped = raw_value.strip(_WS)
            if key == "SaveConfig":
                if stripped.lower() not in ("true", "false"):
                    raise _Problem(f"{_q(stripped)} is neither true nor false")
                iface.save_config = stripped.lower() == "true"
            elif not stripped:
                # wg-quick treats an empty MTU, Table or hook as unset.
                self.warn(key, "empty value ignored")
            elif key == "MTU":
                iface.mtu = _parse_mtu(stripped)
            elif key == "Table":
                iface.table = _check_table(stripped)
            else:
                iface.hooks[key].append(_check_hook(stripped))
                self.warn(key, HOOK_WARNING)

    def key(self, cls: type[_K], key: str, value: str, *, secret: bool) -> _K:
        try:
            return cls.from_base64(self.required(key, value))
        except KeyFormatError as exc:
            # Never echo a secret: a nearly valid private key in a log is a leak.
            shown = "value" if secret else _q(value)
            raise _Problem(f"{shown} is not a valid key: {exc}") from None

    def peer_key(self, lookup: str, key_text: str, raw_value: str) -> None:
        if lookup not in _PEER_KEYS:
            raise self.unknown(key_text, lookup, "Peer")
        key = _PEER_KEYS[lookup]
        peer = self.peers[-1]
        self.once(peer.seen, key)
        value = _compact(raw_value)
        try:
            if key == "PublicKey":
                public_key = self.key(PublicKey, key, value, secret=False)
                first = self.public_keys.get(public_key)
                if first is not None:
                    raise _Problem(f"a peer with this key is already defined (line {first})")
                self.public_keys[public_key] = self.lineno
                peer.public_key = public_key
            elif key == "PresharedKey":
                peer.preshared_key = self.key(PresharedKey, key, value, secret=True)
            elif key == "AllowedIPs":
                for entry in self.required(key, value).split(","):
                    peer.allowed_ips.append(self.allowed_ip(entry))
            elif key == "Endpoint":
                peer.endpoint = _parse_endpoint(self.required(key, value))
            else:
                peer.persistent_keepalive = _parse_keepalive(self.required(key, value))
        except _Problem as exc:
            raise self.error(key, str(exc)) from None

    def allowed_ip(self, entry: str) -> IPNetwork:
        if not entry:
            raise _Problem("empty entry in the list")
        if entry[0] in "+-":
            raise _Problem(f"{_q(entry)}: +/- prefixes are for `wg set`, not for config files")
        network, host_bits = _parse_network(entry)
        if host_bits:
            self.warn("AllowedIPs", f"'{entry}' has host bits set; using {network}, as wg does")
        return network

    def finish(self) -> Config:
        for builder in self.peers:
            if builder.public_key is None:
                raise self.error("PublicKey", "[Peer] section has no PublicKey", builder.lineno)
        if self.iface.private_key is None:
            # wg accepts this (the device stays keyless until one is set), so it
            # is a note, not an error.
            self.warn(
                "PrivateKey", "no PrivateKey: the interface has no identity", self.iface.lineno
            )
        peers = [builder.build(self.filename) for builder in self.peers]
        return Config(self.iface.build(), tuple(peers), tuple(self.warnings))


def _emit(config: Config, stacklevel: int) -> None:
    for warning in config.warnings:
        warnings.warn(warning, stacklevel=stacklevel + 1)


def parse_wg_quick(text: str, filename: str = "<string>") -> Config:
    """Parse a wg-quick file (``/etc/wireguard/wg0.conf``).

    Every setconf file is also a valid wg-quick file. Hook commands and other
    notes are returned in ``Config.warnings`` and also issued with
    :func:`warnings.warn` as :class:`ConfigWarning`, so nobody believes a PostUp
    ran. Raises :class:`ConfigError` naming ``filename``, line and key.
    """
    config = _Parser(filename, wg_quick=True, strict=True).parse(text)
    _emit(config, 2)
    return config


def parse_setconf(text: str, filename: str = "<string>", *, strict: bool = True) -> Config:
    """Parse the format of ``wg setconf`` / ``wg showconf``.

    With ``strict`` (the default) a wg-quick key such as ``Address`` is an error,
    as it is for ``wg setconf``; without it such keys are dropped with a
    :class:`ConfigWarning`, as ``wg-quick strip`` would drop them.
    """
    config = _Parser(filename, wg_quick=False, strict=strict).parse(text)
    _emit(config, 2)
    return config


def load(
    path: str | os.PathLike[str],
    *,
    format: Literal["auto", "wg-quick", "setconf"] = "auto",
) -> Config:
    """Read and parse one file; errors name the path as given.

    ``"auto"`` parses as wg-quick: that syntax is a superset of setconf and
    yields the same :class:`Config` for any setconf file, so no guess is needed.
    ``"setconf"`` is strict. A file other users can reach gets wg-quick's
    warning, an :class:`AccessWarning`. With :func:`read_key_file`, this is
    the module's only I/O; :class:`OSError` passes through unchanged.
    """
    filename = os.fspath(path)
    with open(filename, "rb") as f:
        check_access(filename, f.fileno())
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError("is not UTF-8 text", filename=filename, lineno=lineno) from None
    if format == "setconf":
        config = _Parser(filename, wg_quick=False, strict=True).parse(text)
    elif format in ("auto", "wg-quick"):
        config = _Parser(filename, wg_quick=True, strict=True).parse(text)
    else:
        raise ValueError(f"format must be 'auto', 'wg-quick' or 'setconf', not {format!r}")
    _emit(config, 2)
    return config


_KEY_FILE_LIMIT = 4096


def read_key_file(
    path: str | os.PathLike[str], kind: type[_K] = PrivateKey  # type: ignore[assignment]
) -> _K:
    """The key in *path*: one base64 key, as ``wg genkey > FILE`` writes it
    (whitespace around it allowed), as a *kind* (PrivateKey, PresharedKey or
    PublicKey). A file other users can reach gets wg-quick's warning, an
    :class:`AccessWarning`, as for :func:`load`. Raises :class:`ConfigError`
    naming the file, never showing what is in it; :class:`OSError` passes
    through."""
    filename = os.fspath(path)
    with open(filename, "rb") as f:
        check_access(filename, f.fileno())
        data = f.read(_KEY_FILE_LIMIT + 1)
    if len(data) > _KEY_FILE_LIMIT:
        raise ConfigError("is too long for a key file", filename=filename)
    try:
        return kind.from_base64(data.decode("ascii"))
    except (UnicodeDecodeError, KeyFormatError):
        raise ConfigError(
            "does not hold a key (44 characters of base64, as `wg genkey` prints)",
            filename=filename,
        ) from None


# --------------------------------------------------------------------------- writers


def _format_fwmark(fwmark: int) -> str:
    return "off" if fwmark == 0 else f"0x{fwmark:x}"


def _setconf_interface_lines(iface: InterfaceConfig) -> list[str]:
    # The order and spelling of `wg showconf`. Unlike showconf, zero values that
    # were set are written ("ListenPort = 0", "FwMark = off") so a round trip
    # keeps "set to zero" apart from "not set".
    lines = []
    if iface.listen_port is not None:
        lines.append(f"ListenPort = {iface.listen_port}")
    if iface.fwmark is not None:
        lines.append(f"FwMark = {_format_fwmark(iface.fwmark)}")
    if iface.private_key is not None:
        lines.append(f"PrivateKey = {iface.private_key.to_base64()}")
    return lines


def _peer_lines(peer: PeerConfig) -> list[str]:
    lines = ["[Peer]", f"PublicKey = {peer.public_key.to_base64()}"]
    if peer.preshared_key is not None:
        lines.append(f"PresharedKey = {peer.preshared_key.to_base64()}")
    if peer.allowed_ips:
        lines.append("AllowedIPs = " + ", ".join(str(net) for net in peer.allowed_ips))
    if peer.endpoint is not None:
        lines.append(f"Endpoint = {peer.endpoint}")
    if peer.persistent_keepalive is not None:
        keepalive = peer.persistent_keepalive or "off"
        lines.append(f"PersistentKeepalive = {keepalive}")
    return lines


def _assemble(interface_lines: Iterable[str], peers: Iterable[PeerConfig]) -> str:
    out = ["[Interface]", *interface_lines, ""]
    for i, peer in enumerate(peers):
        if i:
            out.append("")
        out.extend(_peer_lines(peer))
    return "\n".join(out) + "\n"


def dump_setconf(config: Config) -> str:
    """Write ``config`` as ``wg showconf`` prints it, for ``wg setconf``.

    Like showconf, this knows nothing of wg-quick settings and leaves them out:
    ``parse_setconf(dump_setconf(c)) == strip_wg_quick(c)``.
    """
    return _assemble(_setconf_interface_lines(config.interface), config.peers)


def dump_wg_quick(config: Config) -> str:
    """Write ``config`` as a wg-quick file, in the layout ``wg-quick save`` uses:
    wg-quick settings first, then the ``wg showconf`` part.
    ``parse_wg_quick(dump_wg_quick(c)) == c``."""
    iface = config.interface
    lines = [f"Address = {addr}" for addr in iface.addresses]
    lines += [f"DNS = {server}" for server in iface.dns]
    if iface.dns_search:
        lines.append("DNS = " + ", ".join(iface.dns_search))
    if iface.mtu is not None:
        lines.append(f"MTU = {iface.mtu}")
    if iface.table is not None:
        lines.append(f"Table = {iface.table}")
    if iface.save_config:
        lines.append("SaveConfig = true")
    for key, hooks in iface._hooks():
        lines += [f"{key} = {command}" for command in hooks]
    lines += _setconf_interface_lines(iface)
    return _assemble(lines, config.peers)
