"""Logging as libraries do it: one logger per module under the package's,
a NullHandler on the package logger, no print in library code; the commands
show the lines on stderr, moved by -v/-q, else by wireguard-go's LOG_LEVEL."""

from __future__ import annotations

import argparse
import ast
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import need
from wireguard.cli import build_parser, log_level

PACKAGE = Path(__file__).resolve().parents[1] / "wireguard"
ROOT = PACKAGE.parent


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Attribute) and func.attr == name) or (
                isinstance(func, ast.Name) and func.id == name
            ):
                found.append(node)
    return found


def test_every_module_logs_under_its_own_name() -> None:
    wrong = []
    for path in modules():
        for call in calls(ast.parse(path.read_text()), "getLogger"):
            (arg,) = call.args or [None]
            named = isinstance(arg, ast.Name) and arg.id == "__name__"
            # The commands configure the package logger itself.
            package_logger = isinstance(arg, ast.Constant) and arg.value == "wireguard"
            if not named and not (package_logger and "cli" in path.parts):
                wrong.append(f"{path.relative_to(ROOT)}:{call.lineno}")
    assert wrong == []


def test_library_code_does_not_print() -> None:
    printing = [
        f"{path.relative_to(ROOT)}:{call.lineno}"
        for path in modules()
        if "cli" not in path.relative_to(PACKAGE).parts
        and path.name not in ("__main__.py", "walkthrough.py")  # the walkthrough is a report
        for call in calls(ast.parse(path.read_text()), "print")
    ]
    assert printing == []


def test_the_package_logger_has_a_null_handler() -> None:
    code = (
        "import logging, wireguard\n"
        "print([type(h).__name__ for h in logging.getLogger('wireguard').handlers])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "['NullHandler']"


@pytest.mark.parametrize(
    ("argv", "env", "level"),
    [
        (["genkey"], None, logging.WARNING),
        (["genkey", "-v"], None, logging.INFO),
        (["genkey", "-vv"], None, logging.DEBUG),
        (["genkey", "-q"], None, logging.ERROR),
        (["genkey", "-qq"], None, logging.CRITICAL + 10),
        (["genkey", "-vvv"], None, logging.DEBUG),
        (["up", "x.conf"], None, logging.INFO),
        (["up", "x.conf", "-v"], None, logging.DEBUG),
        (["up", "x.conf", "-q"], None, logging.WARNING),
        # wireguard-go's names (device/logger.go), when no -v/-q is given
        (["up", "x.conf"], "verbose", logging.DEBUG),
        (["up", "x.conf"], "error", logging.ERROR),
        (["up", "x.conf"], "silent", logging.CRITICAL + 10),
        (["up", "x.conf"], "nonsense", logging.INFO),
        (["up", "x.conf", "-q"], "verbose", logging.WARNING),
    ],
)
def test_log_level(monkeypatch, argv, env, level) -> None:  # type: ignore[no-untyped-def]
    if env is None:
        monkeypatch.delenv("LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("LOG_LEVEL", env)
    assert log_level(build_parser().parse_args(argv)) == level


def test_forward_says_what_it_forwards_at_info() -> None:
    args = build_parser().parse_args(["forward", "x.conf", "-q"])
    assert log_level(args) == logging.ERROR  # the library's lines
    assert log_level(args, logging.INFO) == logging.WARNING  # the forwards' own


def test_every_command_takes_verbose_and_quiet() -> None:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        assert {"-v", "-q"} <= set(command._option_string_actions), name


def test_a_command_shows_library_lines_and_quiet_hides_them() -> None:
    """``down`` of an interface that is not running removes what it left
    (here a stale socket file) and says so through the library's logger."""
    need(os.geteuid() == 0, "needs root (/var/run/wireguard)")
    name = f"wgl{uuid.uuid4().hex[:8]}"
    sock = Path("/var/run/wireguard") / f"{name}.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LOG_LEVEL", None)
    try:
        results = []
        for extra in ([], ["-q"]):
            sock.touch()
            argv = [sys.executable, "-m", "wireguard", "down", name, *extra]
            results.append(
                subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
            )
        shown, quiet = results
        assert shown.returncode == 0, shown.stderr
        assert shown.stderr == f"[#] {name} was not running; removed {sock}\n"
        assert quiet.returncode == 0 and quiet.stderr == ""
        assert not sock.exists()
    finally:
        sock.unlink(missing_ok=True)
