"""The pytest plugin (wireguard.pytest_plugin), used as a user would use it.

The example test file of docs/pytest-plugin.md, which only requests the
fixtures, is run by pytest in a subprocess with ``-p wireguard.pytest_plugin``;
each of its tests sends real traffic through one fixture (ping and a TCP
exchange, checked by ``ping``, ``curl`` and wireguard-go or the kernel on the
other side). A conftest beside it records what each fixture says it made, and
this file checks that all of it is gone afterwards. Other runs check the
skip-or-fail policy, that the entry point setuptools writes loads the plugin,
and that the plugin adds nothing but fixtures to a run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import need, need_tool

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "pytest-plugin.md"
PLUGIN = "wireguard.pytest_plugin"
MISBEHAVING = "test_misbehaving_peer_duplicates_everything[wireguard_policy0]"

# Beside the user's file, not in it: after each test, what the fixtures it
# used say they made (the pytest_runtest_call wrapper sees the fixture values).
RECORDER = '''
import json, os
import pytest

@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        with open(os.environ["PLUGIN_TEST_RECORD"], "a") as f:
            for name, value in item.funcargs.items():
                if hasattr(value, "made"):
                    made = value.made()
                    made["client_socket"] = "/var/run/wireguard/%s.sock" % value.client_interface
                    f.write(json.dumps({"test": item.name, "fixture": name, **made}) + "\\n")
'''


def example() -> str:
    text = DOC.read_text()
    section = text.split("## An example to copy", 1)[1]
    return re.search(r"^```python\n(.*?)^```", section, re.S | re.M).group(1)  # type: ignore[union-attr]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def pytest_run(
    directory: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA", *args],
        cwd=directory,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    """Test name -> (passed / failed / error / skipped, message)."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        state, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                state = "failed" if tag == "failure" else tag
                message = node.get("message", "")
        result[case.get("name", "")] = (state, message)
    return result


# --- the example from the docs, with real peers ---------------------------------------


@pytest.fixture(scope="module")
def example_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from wireguard.testbed import kernel_vm
    from wireguard.testbed.netns import missing_netns

    reason = missing_netns()
    need(reason is None, f"the plugin's fixtures: {reason}")
    kernel = kernel_vm.missing()
    need(kernel is None, f"the kernel fixture: {kernel}")
    for tool in ("wg-quick", "curl", "ping"):
        need_tool(tool)
    directory = tmp_path_factory.mktemp("plugin-user")
    (directory / "test_my_service.py").write_text(example())
    (directory / "conftest.py").write_text(RECORDER)
    record = directory / "made.jsonl"
    junit = directory / "junit.xml"
    run = pytest_run(
        directory,
        "-p",
        PLUGIN,
        f"--junitxml={junit}",
        "test_my_service.py",
        env=clean_env(PLUGIN_TEST_RECORD=str(record)),
    )
    made = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return {
        "run": run,
        "outcomes": outcomes(junit) if junit.exists() else {},
        "made": made,
    }


@pytest.mark.interop
@pytest.mark.parametrize(
    ("test", "fixture"),
    [
        ("test_wireguard_go_peer", "wireguard_go_peer"),
        ("test_kernel_peer", "wireguard_kernel_peer"),
        ("test_rootless_tunnel", "wireguard_go_peer"),  # the rootless tunnel's peer
        (MISBEHAVING, "wireguard_misbehaving_peer"),
    ],
)
def test_example_passes_with_real_traffic(example_run: dict, test: str, fixture: str) -> None:
    run = example_run["run"]
    got = example_run["outcomes"].get(test)
    assert got == ("passed", ""), f"{test}: {got}\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"
    # The peer the test used was recorded, for the next test to check it is gone.
    assert [m for m in example_run["made"] if m["test"] == test and m["fixture"] == fixture]


@pytest.mark.interop
def test_example_leaves_nothing_behind(example_run: dict) -> None:
    made = example_run["made"]
    assert {m["fixture"] for m in made} >= {
        "wireguard_go_peer",
        "wireguard_kernel_peer",
        "wireguard_misbehaving_peer",
    }, made
    namespaces = set(subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout.split())  # fmt: skip
    for m in made:
        assert m["namespaces"], m  # each peer lives in namespaces it (or the VM) made
        for ns in m["namespaces"]:
            assert ns not in namespaces, (ns, m)
        for pid in m["pids"]:
            assert not Path(f"/proc/{pid}").exists(), (pid, m)
        for path in [*m["paths"], m["client_socket"]]:
            assert not Path(path).exists(), (path, m)


# --- what the machine lacks: skipped with the reason, failed under CI=true --------------

REQUESTS_EVERY_FIXTURE = """
def test_go(wireguard_go_peer):
    assert wireguard_go_peer.client_config_text

def test_kernel(wireguard_kernel_peer):
    assert wireguard_kernel_peer.client_config_text

def test_rootless(wireguard_rootless_tunnel):
    assert wireguard_rootless_tunnel.config

def test_misbehaving(wireguard_misbehaving_peer):
    assert wireguard_misbehaving_peer.client_config_text
"""


@pytest.mark.parametrize("ci", ["", "true"], ids=["skip", "ci-fails"])
def test_missing_tools_skip_with_the_reason_or_fail_in_ci(tmp_path: Path, ci: str) -> None:
    """With nothing on PATH (no ip, wg, wireguard-go or qemu; or not root) every
    fixture skips saying why, and fails instead when CI=true."""
    (tmp_path / "test_mine.py").write_text(REQUESTS_EVERY_FIXTURE)
    (tmp_path / "bin").mkdir()
    junit = tmp_path / "junit.xml"
    env = clean_env(PATH=str(tmp_path / "bin"), CI=ci)
    run = pytest_run(tmp_path, "-p", PLUGIN, f"--junitxml={junit}", "test_mine.py", env=env)
    got = outcomes(junit)
    assert set(got) == {"test_go", "test_kernel", "test_rootless", "test_misbehaving"}, run.stdout
    root = os.geteuid() == 0
    for name, (state, message) in got.items():
        if ci:
            assert state == "error", (name, state, run.stdout)
            assert "CI=true but" in message, (name, message)
        else:
            assert state == "skipped", (name, state, run.stdout)
        want = "needs root" if not root else "is not installed"
        assert want in message, (name, message)
        fixture = "wireguard_kernel_vm" if name == "test_kernel" else "wireguard_"
        assert fixture in message, (name, message)
    if not ci:
        assert run.returncode == 0, run.stdout


# --- the entry point, and a plugin that adds nothing but fixtures ------------------------

NEEDS_A_FIXTURE = """
def test_policy(wireguard_policy):
    assert type(wireguard_policy).__name__ == "Policy" and not wireguard_policy.rules
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's metadata as setuptools writes it from pyproject.toml
    (an egg-info directory, which importlib.metadata finds on sys.path),
    for the source of this checkout: what an installation declares."""
    base = tmp_path_factory.mktemp("installed")
    src, meta = base / "src", base / "meta"
    src.mkdir()
    meta.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "wireguard", src / "wireguard",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "egg_info",
         "--egg-base", str(meta)],
        cwd=src, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    (entry_points,) = meta.glob("*.egg-info/entry_points.txt")
    assert f"[pytest11]\n{PLUGIN} = {PLUGIN}\n" in entry_points.read_text()
    return meta


@pytest.mark.parametrize(
    ("args", "autoload", "passes"),
    [
        ((), True, True),
        (("-p", PLUGIN), True, True),  # named twice: no "already registered" error
        (("-p", f"no:{PLUGIN}"), True, False),
        ((), False, False),
        (("-p", PLUGIN), False, True),
    ],
    ids=["autoloaded", "autoloaded-and-p", "p-no", "autoload-off", "autoload-off-p"],
)
def test_the_entry_point_loads_the_plugin(
    installed: Path, tmp_path: Path, args: tuple[str, ...], autoload: bool, passes: bool
) -> None:
    (tmp_path / "test_mine.py").write_text(NEEDS_A_FIXTURE)
    env = clean_env()
    env["PYTHONPATH"] = os.pathsep.join([str(installed), env["PYTHONPATH"]])
    if not autoload:
        env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    run = pytest_run(tmp_path, *args, "test_mine.py", env=env)
    if passes:
        assert run.returncode == 0 and "1 passed" in run.stdout, run.stdout + run.stderr
    else:
        assert run.returncode != 0, run.stdout
        assert "fixture 'wireguard_policy' not found" in run.stdout, run.stdout


def test_loading_the_plugin_changes_no_options_or_markers(tmp_path: Path) -> None:
    """What a run that requests no fixture sees is the same with the plugin on
    and off: options, markers, collection and outcome; only --fixtures differs."""

    def output(*args: str) -> list[str]:
        runs = [pytest_run(tmp_path, "-p", p, *args).stdout for p in (PLUGIN, f"no:{PLUGIN}")]
        # pytest-benchmark's --help shows a default with the time in it.
        # Durations differ from run to run; the header's "plugins:" line names
        # the plugin when it was loaded from an installed entry point.
        runs = [re.sub(r"\d{8}_\d{6}", "DATE_TIME", out) for out in runs]
        runs = [re.sub(r"(?m)^plugins: .*\n", "", out) for out in runs]
        return [re.sub(r" in [0-9.]+s\b", " in TIME", out) for out in runs]

    (tmp_path / "test_plain.py").write_text("def test_plain():\n    assert 1 + 1 == 2\n")
    on, off = output("--help")
    assert on == off
    on, off = output("--markers")
    assert on == off
    on, off = output("-q", "--collect-only", "test_plain.py")
    assert on == off
    on, off = output("test_plain.py")
    assert on == off and "1 passed" in on
    on, off = output("--fixtures", "test_plain.py")
    assert "wireguard_go_peer" in on and "wireguard_go_peer" not in off


def test_importing_the_plugin_loads_none_of_the_machinery() -> None:
    code = textwrap.dedent(f"""
        import sys, {PLUGIN} as plugin
        print(sorted(m for m in sys.modules if m.startswith(("wireguard.testbed", "wireguard.io",
                                                             "wireguard.misbehaviour"))))
        print(sorted(n for n in vars(plugin) if n.startswith("pytest_")))
    """)
    out = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    assert out.splitlines() == ["[]", "[]"], out


# --- cleanup when a fixture's setup fails ----------------------------------------------

VM_START_FAILS = """
import os, shutil
from wireguard.testbed import kernel_vm

kernel_vm.missing = lambda: None

def start(self, timeout=120.0):
    # As when qemu runs but its command channel cannot be connected to.
    raise ConnectionRefusedError("the guest's command channel refused")

def stop(self):
    with open(os.environ["PLUGIN_TEST_RECORD"], "a") as f:
        f.write("stopped\\n")
    shutil.rmtree(self.dir, ignore_errors=True)

kernel_vm.KernelVM.start = start
kernel_vm.KernelVM.stop = stop
"""


def test_kernel_vm_is_stopped_when_its_start_fails_with_any_error(tmp_path: Path) -> None:
    """Not only GuestError: an OSError out of KernelVM.start (after qemu was
    started) must still stop the VM, or qemu and its namespace outlive the run."""
    (tmp_path / "conftest.py").write_text(VM_START_FAILS)
    (tmp_path / "test_mine.py").write_text("def test_vm(wireguard_kernel_vm):\n    pass\n")
    record = tmp_path / "record"
    run = pytest_run(
        tmp_path, "-p", PLUGIN, "test_mine.py", env=clean_env(PLUGIN_TEST_RECORD=str(record))
    )
    assert "1 error" in run.stdout and "ConnectionRefusedError" in run.stdout, run.stdout
    assert record.exists() and record.read_text() == "stopped\n", run.stdout
