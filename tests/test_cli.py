"""The command line's own rules: a mistake in the command line is one line on
stderr naming the command, and status 1, as wg's and wg-quick's are (and as
docs/api.md says); --help and --version still print and exit 0."""

from __future__ import annotations

import subprocess
import sys

import pytest

CASES = [
    (["up"], "python -m wireguard up: ", "CONFIG"),  # a required argument missing
    (["forward", "wg0.conf", "--udp-flows", "many"], "python -m wireguard forward: ", "many"),
    (["proxy", "wg0.conf", "--socks5"], "python -m wireguard proxy: ", "--socks5"),
    (["genkey", "--bogus"], "python -m wireguard genkey: ", "--bogus"),  # unrecognised
    (["mesh", "-f", "x.toml", "frobnicate"], "python -m wireguard mesh: ", "frobnicate"),
    (["nosuchcommand"], "python -m wireguard: ", "nosuchcommand"),
    ([], "python -m wireguard: ", "COMMAND"),
]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wireguard", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip


@pytest.mark.parametrize(("args", "prefix", "named"), CASES, ids=lambda c: str(c)[:30])
def test_command_line_mistake_is_one_line_and_status_1(
    args: list[str], prefix: str, named: str
) -> None:
    result = _run(args)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(prefix) and named in lines[0], lines[0]
    assert "--help" in lines[0]  # where the usage is


def test_help_and_version_still_exit_0() -> None:
    helped = _run(["up", "--help"])
    assert helped.returncode == 0 and helped.stdout.startswith("usage: python -m wireguard up")
    version = _run(["--version"])
    assert version.returncode == 0 and version.stdout.startswith("wireguard-sansio ")


def test_walkthrough_with_a_seed_is_the_same_every_run() -> None:
    # --seed promises the same output every run: the TAI64N timestamp (and
    # all that follows from it) must not come from the clock then.
    first, second = _run(["walkthrough", "--seed", "x"]), _run(["walkthrough", "--seed", "x"])
    assert first.returncode == 0 and first.stdout == second.stdout
    timed = _run(["walkthrough", "--seed", "x", "--time", "1700000000"])
    assert timed.stdout == first.stdout  # the fixed time is the docs' example's
    fresh = _run(["walkthrough", "--seed", "x", "--time", "1700000001"])
    assert fresh.stdout != first.stdout  # the time is in it
