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
