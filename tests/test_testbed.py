"""wireguard.testbed: the peers the pytest plugin gives, used directly.

Needs root and ``ip`` (network namespaces, named ``rvmb-*`` here and removed
by the peer under test); skipped elsewhere, failed under CI=true."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import need
from wireguard.misbehaviour import Drop, Policy, Rule


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


def _first_initiation_dropped(policy: Policy) -> tuple[int, list[str], set[str]]:
    from wireguard.testbed.peers import MisbehavingPeer

    with MisbehavingPeer(policy, prefix="rvmb") as peer:
        peer.start()
        made = set(peer.made()["namespaces"])

        async def initiate(tunnel) -> None:  # type: ignore[no-untyped-def]
            tunnel.tunnel.initiate_handshake(peer.client_public_key)

        peer.call(initiate)
    return policy.rules[0].applied, [e.note for e in policy.log], made


@pytest.mark.interop
def test_a_policy_reused_by_a_second_peer_starts_afresh() -> None:
    """One Policy object given to two peers (a pytest parameter shared by two
    tests, a rerun): "the first initiation" is each peer's first, and the log
    and history are the new peer's only. Was: the second peer's rule never
    fired (it had already seen its first) and the old log was still there."""
    from wireguard.testbed.netns import missing_netns

    reason = missing_netns(("ip",))
    need(reason is None, f"the misbehaving peer: {reason}")
    policy = Policy([Rule("initiation", Drop(), count=1)])
    for _ in range(2):
        applied, notes, made = _first_initiation_dropped(policy)
        assert (applied, notes) == (1, ["drop"])
        assert len(policy.history[("out", "initiation")]) == 1
        assert not made & _namespaces()  # and the peer removed its namespaces
