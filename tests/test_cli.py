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


def test_an_os_error_is_one_line_and_status_1(tmp_path, capsys) -> None:
    # cli/__init__.py promises an OSError is reported as the command's other
    # mistakes are: one line, status 1, no traceback.
    from wireguard.cli import main

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    assert main(["show", "--socket-dir", str(not_a_directory)]) == 1
    err = capsys.readouterr().err
    assert err == f"python -m wireguard show: {not_a_directory}: Not a directory\n", err


SECONDS_OPTIONS = [
    ("forward", "--status"),
    ("forward", "--connect-timeout"),
    ("forward", "--udp-timeout"),
    ("forward", "--reresolve-after"),
    ("forward", "--reresolve-interval"),
    ("forward", "--healthz-max-age"),
    ("proxy", "--handshake-timeout"),
    ("proxy", "--idle-timeout"),
]


@pytest.mark.parametrize(("command", "option"), SECONDS_OPTIONS)
@pytest.mark.parametrize("value", ["nan", "NaN"])
def test_a_time_that_is_not_a_number_is_refused(
    tmp_path, capsys, command: str, option: str, value: str
) -> None:
    # float() takes 'nan', and nan passes every `< 0` and `<= 0` check: a
    # --connect-timeout of nan timed every connection out at once, a
    # --udp-timeout of nan expired every flow each second. (The config is
    # missing: the option must be refused before that is found.)
    from wireguard.cli import main

    args = [command, str(tmp_path / "wg0.conf"), "-L", "8080:10.0.0.1:80", f"{option}={value}"]
    if command == "proxy":
        args += ["--socks5", "1080"]
    try:
        status = main(args)
    except SystemExit as exc:  # the parser's own exit, as for any bad argument
        status = exc.code
    assert status == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"python -m wireguard {command}: argument {option}"), lines[0]
    assert value in lines[0], lines[0]


@pytest.mark.parametrize("value", ["nan", "inf", "1e30", "-1e30"])
def test_walkthrough_refuses_a_time_outside_tai64n(value: str) -> None:
    result = _run(["walkthrough", "--seed", "x", f"--time={value}"])
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m wireguard walkthrough: "), lines[0]
    assert "--time" in lines[0], lines[0]
