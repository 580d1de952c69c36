"""The client side never loads the daemon: checked in a fresh interpreter per import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tinytownd

DAEMON_SIDE = {
    "psutil",
    "tinytownd.supervisor",
    "tinytownd.redis_server",
    "tinytownd.control",
    "tinytownd.notify",
    "tinytownd.durability",
}


def loaded_by(statement: str) -> set[str]:
    script = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


@pytest.mark.parametrize(
    "statement",
    [
        "import tinytownd",
        "from tinytownd import Town, Channel, Message, Agent, Task",
        "from tinytownd import aio",
        "import tinytownd.ops, tinytownd.hashform, tinytownd.migrate",
    ],
)
def test_the_client_side_loads_nothing_of_the_daemon(statement: str) -> None:
    assert loaded_by(statement) & DAEMON_SIDE == set()


def imports_of(module: str) -> set[str]:
    """The modules a source file imports (relative ones as ``tinytownd.<name>``)."""
    source = Path(tinytownd.__file__).with_name(f"{module}.py").read_text(encoding="utf-8")
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = f"tinytownd.{node.module or ''}".rstrip(".") if node.level else node.module
            found.update(
                f"{base}.{alias.name}" if not node.module else str(base) for alias in node.names
            )
    return found


@pytest.mark.parametrize("module", ["ops", "hashform", "models", "wire", "keys", "migrate"])
def test_the_protocol_core_does_no_io_of_its_own(module: str) -> None:
    """Operations yield commands and take replies: no sockets, no clients, no sleeping."""
    io = {"socket", "select", "asyncio", "redis", "redis.client", "redis.asyncio", "subprocess"}
    imported = imports_of(module)
    assert imported & io == set()
    assert not {m for m in imported if m.startswith("redis.") and m != "redis.exceptions"}
    daemon_or_drivers = {f"tinytownd.{name}" for name in ("channel", "aio", "town", "control")}
    assert imported & daemon_or_drivers == set()
