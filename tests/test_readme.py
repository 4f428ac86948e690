"""The README's main command works for a new user: a fresh virtual
environment, the README's install step, the demo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent


def readme_main_command() -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh block"
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert "wireguard demo" in commands[0]
    return commands[0]


def test_demo_in_a_fresh_venv(tmp_path):
    venv = tmp_path / "venv"
    made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
    need(made.returncode == 0, f"cannot create a virtual environment: {made.stderr.strip()}")
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", VIRTUAL_ENV=str(venv))
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        ["bash", "-c", readme_main_command()],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "handshake yes" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK in ")
    # It ran from the venv, not from the developer's environment.
    assert (venv / "bin" / "python").exists()


def test_readme_lists_every_command_and_no_other():
    """The README's command list and `python -m wireguard --help` agree."""
    from wireguard.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = set(sub.choices)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Command line", 1)[1].split("```", 2)[1]
    listed = set(re.findall(r"^python -m wireguard (\w[\w-]*)", block, re.M))
    listed |= set(re.findall(r"^python -m wireguard \w+ \| (\w+)", block, re.M))
    assert listed == commands, (sorted(listed - commands), sorted(commands - listed))
