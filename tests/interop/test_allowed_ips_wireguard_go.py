"""The UAPI's allowed-IPs fast paths (issue 15, item 5) next to wireguard-go:
the same requests to both, the same answers and the same get, prefix order
within each peer included.

wireguard-go is the reference for the two things the fast paths could get
wrong: which prefix texts are accepted (our inet_pton path with the
ipaddress fallback, against Go's net/netip), and the order of a peer's
allowed IPs in get after prefixes were re-added, removed and moved between
peers (wireguard-go's allowedips keeps a per-peer list; re-adding a prefix
moves it to the end).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.interop import test_wg_control
from tests.interop.test_wg_control import Served, config_of, raw, request_for
from tests.test_scale import _POOL, prefix_texts
from wireguard.keys import PrivateKey

pytestmark = pytest.mark.interop

KEYS = [PrivateKey(bytes([n]) * 32).public_key.to_hex() for n in (1, 2, 3)]
PRIVATE = PrivateKey(bytes([9]) * 32).clamped().to_hex()
FIXTURES = [HealthCheck.function_scoped_fixture]

# The fixtures of test_wg_control: our control socket, wireguard-go's.
wg = test_wg_control.wg
served = test_wg_control.served
wireguard_go = test_wg_control.wireguard_go


def reset(paths: list[str]) -> None:
    for path in paths:
        assert raw(path, request_for([f"private_key={PRIVATE}", "replace_peers=true"])) == (
            b"errno=0\n\n"
        )


# A prefix length with a sign or a leading zero is a known difference with a
# wireguard-go built with Go < 1.22 (see test_wg_control.KNOWN_DIFFERENCES).
_OLD_GO_LENGTH = re.compile(r"/[+-]?0[0-9]|/\+")


@settings(max_examples=300, deadline=None, suppress_health_check=FIXTURES)
@given(texts=st.lists(prefix_texts(), min_size=1, max_size=4))
def test_prefix_texts_accepted_and_refused_as_wireguard_go(
    served: Served, wireguard_go: str, texts: list[str]
) -> None:
    texts = [t for t in texts if not _OLD_GO_LENGTH.search(t) and "\n" not in t]
    paths = [served.path, wireguard_go]
    reset(paths)
    lines = [f"public_key={KEYS[0]}", *(f"allowed_ip={t}" for t in texts)]
    ours, theirs = (raw(path, request_for(lines)) for path in paths)
    assert ours == theirs, texts
    assert config_of(served.path) == config_of(wireguard_go), texts


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURES)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.sampled_from(["add", "add", "add", "remove", "replace"]),
            st.sampled_from(_POOL),
        ),
        min_size=1,
        max_size=30,
    ),
    split=st.integers(1, 10),
)
def test_get_order_after_re_adding_and_moving_as_wireguard_go(
    served: Served, wireguard_go: str, steps: list[tuple[int, str, str]], split: int
) -> None:
    paths = [served.path, wireguard_go]
    reset(paths)
    # "allowed_ip=-PREFIX" (removing one prefix) is newer than Debian's
    # wireguard-go 0.0.20220316, which refuses it: left out against a build
    # without it.
    probe = request_for([f"public_key={KEYS[0]}", "allowed_ip=-10.0.0.0/8"])
    if raw(wireguard_go, probe) != b"errno=0\n\n":
        steps = [step for step in steps if step[1] != "remove"]
    reset(paths)
    for start in range(0, len(steps), split):
        lines = []
        for peer, op, text in steps[start : start + split]:
            lines.append(f"public_key={KEYS[peer]}")
            if op == "replace":
                lines.append("replace_allowed_ips=true")
            else:
                lines.append(f"allowed_ip={'-' if op == 'remove' else ''}{text}")
        for path in paths:
            assert raw(path, request_for(lines)) == b"errno=0\n\n"
    # Peers in any order (wireguard-go walks a Go map), each peer's lines,
    # allowed IPs in order, exactly.
    assert config_of(served.path) == config_of(wireguard_go)
