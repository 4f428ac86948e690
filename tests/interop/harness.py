"""The interop tests' namespaces and wireguard-go peer: a thin re-export of
:mod:`wireguard.testbed.netns` (the one copy, shared with the pytest plugin),
with :func:`need_netns` and :func:`hosts` that skip, or fail under CI=true,
where the machine lacks what they need."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.conftest import need
from wireguard.testbed.netns import (
    CLONE_NEWNET,
    UNDER_V4,
    UNDER_V6,
    WG_GO_ENV,
    Hosts,
    WireGuardGo,
    missing_netns,
    run,
    socket_in_netns,
)

__all__ = [
    "CLONE_NEWNET",
    "UNDER_V4",
    "UNDER_V6",
    "WG_GO_ENV",
    "Hosts",
    "WireGuardGo",
    "hosts",
    "need_netns",
    "run",
    "socket_in_netns",
]


def need_netns() -> None:
    reason = missing_netns()
    need(reason is None, f"interop tests: {reason}")


@contextlib.contextmanager
def hosts() -> Iterator[Hosts]:
    need_netns()
    from wireguard.testbed.netns import hosts as make_hosts

    with make_hosts() as h:
        yield h
