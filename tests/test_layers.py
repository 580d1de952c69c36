"""The layout's rules: the client side never loads the daemon, the core does no I/O.

Checked two ways: by reading each module's imports with ``ast`` (the table in the
README's Development section), and by importing in a fresh interpreter and looking at
what got loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import tinytownd

CLIENT = (
    "channel",
    "aio",
    "town",
    "ops",
    "steps",
    "routing",
    "resp",
    "hashform",
    "messages",
    "records",
    "migrate",
)
GROUND = ("errors", "keys", "wire", "paths", "config", "compat", "trust", "peer")
DAEMON_SIDE = {"psutil"} | {
    f"tinytownd.daemon.{name}"
    for name in ("supervisor", "redis_server", "control", "notify", "durability", "backup")
}
PROCESS_CODE = {"psutil", "tinytownd.daemon.redis_server", "tinytownd.daemon.supervisor"}


def loaded_by(statement: str) -> set[str]:
    """The modules a fresh interpreter has loaded after ``statement``."""
    script = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout.splitlines()[-1]))  # after whatever it printed


def imports_of(module: str) -> set[str]:
    """The modules a source file imports anywhere in it, relative ones resolved
    (``daemon/control`` importing ``.state`` gives ``tinytownd.daemon.state``)."""
    package = ["tinytownd", *module.split("/")[:-1]]
    path = Path(tinytownd.__file__).parent.joinpath(f"{module}.py")
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            if node.module:
                found.add(f"{base}.{node.module}" if base else node.module)
            else:
                found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


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


def test_control_loads_no_process_code_when_imported() -> None:
    assert loaded_by("from tinytownd.daemon import control") & PROCESS_CODE == set()


@pytest.mark.parametrize("module", CLIENT + GROUND)
def test_the_client_and_the_ground_floor_use_only_control_of_the_daemon(module: str) -> None:
    daemon = {m for m in imports_of(module) if m.startswith("tinytownd.daemon")}
    assert daemon <= {"tinytownd.daemon", "tinytownd.daemon.control"}
    if module in GROUND:  # the ground floor imports neither side
        assert not daemon
        assert not {f"tinytownd.{name}" for name in CLIENT} & imports_of(module)


@pytest.mark.parametrize(
    "module",
    [
        *("ops", "steps", "routing", "resp", "hashform", "messages", "records", "wire", "keys"),
        "migrate",
    ],
)
def test_the_protocol_core_does_no_io_of_its_own(module: str) -> None:
    """Operations yield commands and take replies: no sockets, no clients, no sleeping."""
    io = {"socket", "select", "asyncio", "redis", "redis.client", "redis.asyncio", "subprocess"}
    imported = imports_of(module)
    assert imported & io == set()
    assert not {m for m in imported if m.startswith("redis.") and m != "redis.exceptions"}
    drivers = {f"tinytownd.{name}" for name in ("channel", "aio", "town")}
    assert not drivers & imported
    assert not {m for m in imported if m.startswith("tinytownd.daemon")}


HEAVY = {"redis.client", "psutil", "asyncio"}


@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_load_neither_redis_py_nor_psutil(flag: str) -> None:
    statement = (
        "import contextlib\nfrom tinytownd.cli import main\n"
        f"with contextlib.suppress(SystemExit):\n    main([{flag!r}])"
    )
    assert loaded_by(statement) & HEAVY == set()


def test_import_tinytownd_is_light_and_every_public_name_resolves() -> None:
    assert loaded_by("import tinytownd") & HEAVY == set()
    for name in tinytownd.__all__:
        assert getattr(tinytownd, name) is not None
    assert set(dir(tinytownd)) >= set(tinytownd.__all__)
