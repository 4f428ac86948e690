"""The README's main command works for a new user: a fresh virtual
environment, the README's install step, the demo."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import need

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    """The README's two commands: the main job (the demo), then the tests."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", text, re.S)
    assert block, "README has no sh block"
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2 and "wireguard demo" in commands[0], commands
    return commands


def test_ci_runs_the_readme_test_command():
    """.ci/run calls the README's test command, as it is written there."""
    ci = [line.rstrip(" |") for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert readme_commands()[1] in ci


def _copy_of_the_tree(target: Path) -> None:
    """The project's files as a fresh clone has them (no venv, no caches)."""
    shutil.copytree(
        ROOT, target,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", "build"
        ),
    )  # fmt: skip


def test_demo_on_a_fresh_copy_with_debians_python(tmp_path):
    """The README's main command, run as written in a fresh copy of the tree,
    with `python3` being Debian's /usr/bin/python3 where there is one (which
    refuses `pip install` outside a venv, PEP 668), else this interpreter."""
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    probe = subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True, text=True)
    need(probe.returncode == 0, f"{python} has no venv module (Debian: python3-venv)")
    tree = tmp_path / "wireguard-sansio"
    _copy_of_the_tree(tree)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(python)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{bin_dir}:/usr/sbin:/usr/bin:/sbin:/bin"
    result = subprocess.run(
        ["bash", "-c", readme_commands()[0]],
        cwd=tree, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "handshake yes" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("OK in ")
    # It ran from the venv the command made, on that interpreter.
    venv_python = tree / ".venv" / "bin" / "python"
    assert venv_python.exists()
    version = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert f"\nversion = {version}\n" in (tree / ".venv" / "pyvenv.cfg").read_text()


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
