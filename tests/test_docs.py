"""The documentation shows real output: check it still is."""

from __future__ import annotations

import re
from pathlib import Path

from wireguard.crypto import seeded_random
from wireguard.walkthrough import format_walkthrough, run

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_walkthrough_page_is_the_commands_output():
    text = (DOCS / "walkthrough.md").read_text()
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    shown = next(b for b in blocks if b.startswith("WireGuard handshake walkthrough"))
    expected = format_walkthrough(run(now=1_700_000_000.0, random=seeded_random(b"docs")))
    assert shown.rstrip("\n") == expected


def test_every_docs_page_is_linked_from_the_readme_index():
    readme = (DOCS.parent / "README.md").read_text()
    index = readme.split("## Documentation", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\((docs/[\w./-]+\.md)\)", index))
    pages = {f"docs/{p.name}" for p in DOCS.glob("*.md")}
    assert pages == linked, (sorted(pages - linked), sorted(linked - pages))


def test_every_test_the_docs_name_exists():
    """A test file or test function the docs point to (``tests/x.py``,
    ``tests/x.py::test_y``, or a `test_y` in a table of the kernel tests) is
    there: a renamed file left a page pointing at nothing."""
    root = DOCS.parent
    pages = [root / "README.md", *sorted(DOCS.glob("*.md"))]
    missing = []
    for page in pages:
        text = page.read_text()
        for path, func in re.findall(r"\b(tests/[\w/]+\.py)(?:::(test_\w+))?", text):
            file = root / path
            if not file.exists():
                missing.append(f"{page.name}: {path}")
            elif func and not re.search(rf"^(async )?def {func}\(", file.read_text(), re.M):
                missing.append(f"{page.name}: {path}::{func}")
    assert missing == []


# --- docs/researchers.md: every command shown prints what the page shows -----

_KEY = re.compile(r"[A-Za-z0-9+/]{43}=")
_HEX = re.compile(r"\b[0-9a-f]{16,}\b|(?<=index )0x[0-9a-f]{8}")
_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z")
_TSHARK_DATE = re.compile(r"[A-Z][a-z]{2} [ \d]\d, \d{4} \d\d:\d\d:\d\d\.\d+ UTC")
_LS = re.compile(r"^([-rwx]{10}) +\d+ +\S+ +\S+ +(\d+) +[A-Z][a-z]{2} +\d+ +[\d:]+ +(\S+)$")


def _normal(line: str) -> str:
    """A line with what differs from run to run (keys, hex values, clock
    times, the owner in ``ls -l``) replaced by placeholders."""
    m = _LS.match(line)
    if m:
        return " ".join(m.groups())
    line = _TSHARK_DATE.sub("DATE", _ISO.sub("TIME", line))
    return _HEX.sub("HEX", _KEY.sub("KEY", line)).rstrip()


def _shown_matches(shown: list[str], printed: list[str]) -> bool:
    """*printed* is *shown* where the page abridged it (a line ``[...`` stands
    for any number of lines, including none)."""
    parts: list[list[str]] = [[]]
    abridged = False
    for line in shown:
        if line.startswith("[...") or abridged:
            if not abridged:
                parts.append([])
            abridged = not line.endswith("]")
        else:
            parts[-1].append(line)
    at = 0
    for i, part in enumerate(parts):
        if i == 0:
            if printed[: len(part)] != part:
                return False
            at = len(part)
            continue
        if i == len(parts) - 1 and part:
            return len(printed) - len(part) >= at and printed[len(printed) - len(part) :] == part
        starts = range(at, len(printed) - len(part) + 1)
        found = next((j for j in starts if printed[j : j + len(part)] == part), None)
        if found is None:
            return False
        at = found + len(part)
    return len(parts) > 1 or at == len(printed)


def test_researchers_page_commands_print_what_the_page_shows(tmp_path):
    """docs/researchers.md says every command and output on it "was run as
    shown": run its script and every ``$ `` command after it (keys, hex values
    and clock times differ from run to run, nothing else may), and its tshark
    commands open our captures without a warning. The captures of section 5
    came from a kernel in a VM and are left out."""
    import os
    import subprocess
    import sys

    from tests.conftest import need_tool

    for tool in ("tshark", "editcap"):
        need_tool(tool)
    text = (DOCS / "researchers.md").read_text()
    scripts = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    (tmp_path / "make_demo.py").write_text(next(b for b in scripts if "PcapWriter(" in b))
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(DOCS.parent), "LC_ALL": "C.UTF-8"}
    replace: dict[str, str] = {}
    failures = []
    for block in re.findall(r"^```\n(\$ .*?)^```", text, re.S | re.M):
        commands: list[tuple[str, list[str]]] = []
        for line in block.rstrip("\n").split("\n"):
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
        for command, shown in commands:
            if "kernel.pcap" in command or "ours.keys" in command:
                continue
            for doc_value, ours in replace.items():
                command = command.replace(doc_value, ours)
            wireshark = command.startswith(("tshark", "editcap"))
            done = subprocess.run(
                ["bash", "-c", "umask 022; " + command], cwd=tmp_path, env=env, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE if wireshark else subprocess.STDOUT,
                timeout=120,
            )  # fmt: skip
            printed = done.stdout.splitlines()
            if wireshark:
                warned = [
                    line for line in done.stderr.splitlines()
                    if not line.startswith('Running as user "root"')  # as root in CI
                ]  # fmt: skip
                if warned:
                    failures.append(f"$ {command}\nwarned: {warned}")
            if command == "python make_demo.py":
                doc_key, our_key = shown[0].split()[-1], printed[0].split()[-1]
                replace[doc_key] = our_key
            if not _shown_matches([_normal(s) for s in shown], [_normal(p) for p in printed]):
                failures.append(f"$ {command}\npage shows:\n" + "\n".join(shown)
                                + "\nprinted:\n" + "\n".join(printed))  # fmt: skip
    assert failures == [], "\n\n".join(failures)
