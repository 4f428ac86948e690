from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
IN_CI = os.environ.get("CI", "").lower() == "true"


def load_vector(name: str) -> Any:
    with open(VECTORS / name, encoding="utf-8") as f:
        return json.load(f)


def need(condition: bool, reason: str) -> None:
    """Skip a test whose environment is missing, except in CI, where a missing
    environment is a failure: interop must run there."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"`{name}` is not installed")
    assert path is not None
    return path


async def until(condition: Callable[[], bool], limit: float = 60.0) -> None:
    """Wait for *condition* (polled; the limit only stops a hang)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        assert loop.time() < deadline, "the condition never held"
        await asyncio.sleep(0.02)
