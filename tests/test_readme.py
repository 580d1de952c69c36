"""The README's Python example runs as written (against a fresh project)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from support import tinytownd

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_python_api_example_runs(project: Path) -> None:
    block = re.search(r"```python\n(from tinytownd import Town.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1).replace('"path/to/project"', repr(str(project)))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert tinytownd("status", "--dir", str(project)).returncode == 0


def test_the_asyncio_example_runs(project: Path) -> None:
    block = re.search(r"```python\n(import asyncio\n.*?)```", README.read_text(), re.S)
    assert block is not None
    code = block.group(1).replace('"path/to/project"', repr(str(project)))
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "deploy done" in result.stdout  # the broadcast arrived through the subscription


def test_links_work_on_the_package_index_too() -> None:
    """The index renders the README away from the repository: no relative links, and no
    heading anchors (it gives headings no ids)."""
    text = README.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)]*)\)", text)
    assert targets and all(t.startswith("https://") for t in targets), targets
