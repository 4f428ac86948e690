"""A small run of tests/fuzz_device.py: random and mutated datagrams of all
four kinds into two talking Devices raise nothing and, when refused, change
nothing. The closing figures come from the big run
(``python -m tests.fuzz_device --count 1000000``)."""

from __future__ import annotations

import pytest

from tests.fuzz_device import run


@pytest.mark.parametrize("seed", [1, 2])
def test_fuzzed_datagrams_raise_nothing_and_change_nothing(seed: int) -> None:
    report = run(3000, seed=seed)
    assert report.exceptions == []
    assert report.changed == []
    # The forgeries reached the deep checks, not just the cheap ones.
    for reason in ("handshake_invalid", "decryption_failed", "unknown_index", "malformed"):
        assert report.drops[reason] > 0, reason
