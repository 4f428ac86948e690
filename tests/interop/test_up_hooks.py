"""``python -m wireguard down`` and hooks that take their time.

wg-quick runs PreDown and PostDown in its own process, with no time limit
(``down`` in wireguard-tools' src/wg-quick/linux.bash). Ours runs them in the
service that ``down`` signals, so ``down`` must wait for a running hook
instead of killing the service after its stop timeout.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tests.interop.harness import hosts, run
from wireguard.io import up as upmod
from wireguard.keys import PrivateKey

UP = [sys.executable, "-m", "wireguard"]


def test_down_waits_for_a_slow_predown_hook(tmp_path: Path, monkeypatch, caplog) -> None:
    with hosts() as h:
        name = f"pys{h.tag}"
        marks = tmp_path / "marks"
        conf = tmp_path / f"{name}.conf"
        conf.write_text(
            f"[Interface]\nPrivateKey = {PrivateKey.generate()}\nAddress = 10.78.0.1/24\n"
            f"PreDown = sleep 6; echo pre-down >> {marks}\n"
            f"PostDown = echo post-down >> {marks}\n"
        )
        conf.chmod(0o600)
        started = h.exec(h.a, *UP, "up", "--log", str(tmp_path / "log"), str(conf), check=False)
        assert started.returncode == 0, started.stderr
        try:
            # A stop timeout shorter than the hook: wg-quick would wait for it,
            # and for PostDown after the teardown between the two (which the
            # 4 s leave room for on a loaded machine).
            monkeypatch.setattr(upmod, "STOP_TIMEOUT", 4.0)
            with caplog.at_level(logging.INFO, logger=upmod.__name__):
                assert upmod.down(name) == 0
            assert marks.read_text().splitlines() == ["pre-down", "post-down"]
            assert "waiting for" in caplog.text and "hooks to finish" in caplog.text
            assert run("ip", "-n", h.a, "link", "show", name, check=False).returncode != 0
        finally:
            run(*UP, "down", name, check=False)


def test_down_still_kills_a_service_that_ignores_sigterm(tmp_path: Path, monkeypatch) -> None:
    """With no hook running, the stop timeout holds: a stuck service is killed."""
    with hosts() as h:
        name = f"pyk{h.tag}"
        conf = tmp_path / f"{name}.conf"
        conf.write_text(f"[Interface]\nPrivateKey = {PrivateKey.generate()}\n")
        conf.chmod(0o600)
        started = h.exec(h.a, *UP, "up", "--log", str(tmp_path / "log"), str(conf), check=False)
        assert started.returncode == 0, started.stderr
        pid = int(Path(upmod.pid_path(name)).read_text().split()[0])
        try:
            run("kill", "-STOP", str(pid))  # it cannot act on SIGTERM now
            monkeypatch.setattr(upmod, "STOP_TIMEOUT", 1.0)
            assert upmod.down(name) == 0
            assert upmod._proc_start_time(pid) is None
        finally:
            run("kill", "-KILL", str(pid), check=False)
            run(*UP, "down", name, check=False)
