"""Which ``cryptography`` releases we run on: the oldest one pyproject.toml
admits works (vectors, devices, tunnels), and a release known to be slow is
said once in the log, not left for the user to find in a benchmark."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import cryptography
import pytest

import wireguard.io.tunnel as tunnel_module
from tests.conftest import need
from wireguard import crypto
from wireguard.device import Device
from wireguard.io.tunnel import Tunnel
from wireguard.keys import PrivateKey

ROOT = Path(__file__).resolve().parent.parent


def declared_floor() -> str:
    """The N of ``cryptography>=N`` in pyproject.toml's dependencies."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"cryptography\b", d)]
    found = re.fullmatch(r"cryptography>=(\d+)", spec.replace(" ", ""))
    assert found is not None, spec
    return found[1]


@pytest.mark.parametrize(
    ("version", "slow"),
    [("42.0.8", True), ("44.0.3", True), ("44.99", True), ("45.0.0", False),
     ("45.0.7", False), ("48.0.0", False), ("50.0.2", False), ("46.0.0.dev1", False),
     ("unknown", False)],
)  # fmt: skip
def test_slow_release_note(version: str, slow: bool) -> None:
    note = crypto.slow_aead_note(version)
    assert (note is not None) is slow
    if note is not None:
        assert version in note and "\n" not in note
        assert "cryptography>=45" in note


def test_backend_names_the_installed_release() -> None:
    from cryptography.hazmat.backends.openssl import backend

    shown = crypto.aead_backend()
    assert cryptography.__version__ in shown
    assert backend.openssl_version_text() in shown


def _start_and_close(count: int) -> None:
    async def main() -> None:
        for _ in range(count):
            async with Tunnel(Device(PrivateKey.generate()), listen_port=0, host="127.0.0.1"):
                pass

    asyncio.run(main())


@pytest.mark.parametrize("note", ["cryptography 1.0: slow", None])
def test_a_tunnel_says_a_slow_release_once_per_process(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, note: str | None
) -> None:
    monkeypatch.setattr(tunnel_module, "_aead_checked", False)
    monkeypatch.setattr(tunnel_module, "slow_aead_note", lambda: note)
    with caplog.at_level(logging.WARNING, logger="wireguard.io.tunnel"):
        _start_and_close(3)
    said = [r.getMessage() for r in caplog.records if r.name == "wireguard.io.tunnel"]
    assert said == ([note] if note else [])


FLOOR_CHECK = """
import asyncio, logging, cryptography
from wireguard.crypto import slow_aead_note
print("version", cryptography.__version__)
print("note", slow_aead_note() is not None)
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
from tests.test_cryptography_release import _start_and_close
_start_and_close(2)
"""


def test_the_oldest_admitted_release_works(tmp_path: Path) -> None:
    """A venv with the newest patch of the oldest ``cryptography`` pyproject
    admits: the crypto, handshake and device tests pass on it, and a tunnel
    warns about it once if it is one of the slow releases."""
    floor = declared_floor()
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a virtual environment: {made.stderr.strip()}")
    python = str(venv / "bin" / "python")
    # What the tests below import, and pyproject's addopts need (pytest-benchmark),
    # at the versions this run has: only cryptography differs.
    same = ["PyNaCl", "pytest", "pytest-benchmark", "hypothesis", "noiseprotocol"]
    wanted = [f"cryptography=={floor}.*", *(f"{name}=={version(name)}" for name in same)]
    installed = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *wanted],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    why = installed.stderr.strip()[-300:]
    need(installed.returncode == 0, f"cannot install {wanted[0]}: {why}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    checked = subprocess.run(
        [python, "-c", FLOOR_CHECK], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    found = re.search(r"^version (\S+)$", checked.stdout, re.M)
    assert found is not None and found[1].split(".")[0] == floor
    slow = crypto.slow_aead_note(found[1]) is not None
    assert f"note {slow}" in checked.stdout
    warnings = [line for line in checked.stderr.splitlines() if "ChaCha20-Poly1305 call" in line]
    assert len(warnings) == (1 if slow else 0), checked.stderr
    tests = ["tests/test_crypto.py", "tests/test_noise.py", "tests/test_handshake.py",
             "tests/test_device.py"]  # fmt: skip
    ran = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout[-3000:]


@pytest.mark.parametrize(("log_level", "said"), [(None, True), ("verbose", False)])
def test_the_daemon_says_a_slow_release_before_it_goes_to_the_background(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    log_level: str | None,
    said: bool,
) -> None:
    """``wireguard-sansio wg0`` sends its background process's output to
    /dev/null unless LOG_LEVEL is set (as wireguard-go does), so the note is
    said on the terminal first; with LOG_LEVEL the background process's own
    log says it, and the terminal does not say it twice."""
    from wireguard.cli import daemon

    class Closable:
        name, fd = "wgnote0", -1

        def close(self) -> None:
            pass

        def fileno(self) -> int:
            return -1

    monkeypatch.setattr(crypto, "slow_aead_note", lambda version=None: "cryptography 1.0: slow")
    if log_level is None:
        monkeypatch.delenv("LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LOG_LEVEL", log_level)
    monkeypatch.delenv(daemon.ENV_FOREGROUND, raising=False)
    monkeypatch.setattr(daemon, "_setup_logging", lambda name: None)
    monkeypatch.setattr(daemon, "_open_tun", lambda name: Closable())
    monkeypatch.setattr(daemon, "_open_uapi", lambda name: Closable())
    started: list[object] = []
    monkeypatch.setattr(daemon, "_daemonize", lambda *args: started.append(args))
    assert daemon.main(["wgnote0"]) == daemon.EXIT_SETUP_SUCCESS
    assert len(started) == 1
    err = capsys.readouterr().err
    assert ("Warning: cryptography 1.0: slow" in err) is said
