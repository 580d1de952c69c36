"""The daemon's published state (``.tt/state.json``) and its single-instance lock."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ..errors import StartupError
from ..paths import ProjectPaths

try:
    import fcntl
except ImportError:  # Windows: the Channel works there, the daemon does not
    fcntl = None  # type: ignore[assignment]

POSIX_ONLY = (
    "the tinytownd daemon runs on Linux and macOS only; here, point the Channel at a "
    "Redis you run (redis.url in tinytown.toml)"
)


class TownState(StrEnum):
    """Where the daemon is in its life, as ``status`` shows it."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"  # Redis died; the daemon brings it back
    STOPPING = "stopping"  # SHUTDOWN SAVE sent; Redis is saving
    STOPPED = "stopped"
    FAILED = "failed"  # gave up: too many crashes, or could not start


@dataclass
class DaemonState:
    """What ``tinytownd status`` shows; written by the daemon on every change."""

    state: TownState = TownState.STOPPED
    daemon_pid: int | None = None
    redis_pid: int | None = None
    restarts: int = 0
    redis_binary: str = ""
    redis_binary_source: str = ""
    redis_version: str = ""
    server: str = ""  # "Redis 8.2.3" or "Valkey 9.1.2"
    started_at: float | None = None
    last_exit: str | None = None
    last_exit_at: float | None = None
    failure: str | None = None
    log_tail: list[str] = field(default_factory=list)
    load_warnings: list[str] = field(default_factory=list)
    #: Why the last stop left Redis running (it could not save), and when.
    stop_failure: str | None = None
    stop_failure_at: float | None = None
    #: When the daemon last applied tinytown.toml on SIGHUP, and what went wrong if it failed.
    reloaded_at: float | None = None
    reload_error: str | None = None
    #: The ``start`` flags this run was started with (``--aof`` ...), for restore.
    start_args: list[str] = field(default_factory=list)
    #: The settings the daemon runs with (tinytown.toml as it read it, password left
    #: out), so a broken file never locks anyone out of a running town.
    settings: dict[str, Any] | None = None

    def save(self, paths: ProjectPaths) -> None:
        tmp = paths.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, paths.state_file)

    @classmethod
    def load(cls, paths: ProjectPaths) -> DaemonState:
        try:
            data: dict[str, Any] = json.loads(paths.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        loaded = cls(**{k: v for k, v in data.items() if k in known})
        try:
            loaded.state = TownState(loaded.state)
        except ValueError:
            loaded.state = TownState.STOPPED
        return loaded

    def record_exit(self, reason: str, tail: list[str]) -> None:
        self.last_exit, self.last_exit_at, self.log_tail = reason, time.time(), tail


class DaemonLock:
    """An exclusive ``flock`` on ``.tt/daemon.lock``, held for the daemon's whole life.

    The kernel drops it when the daemon dies, however it dies, so a stale pid
    file can never block a start. The fd is not inherited by redis-server.
    """

    def __init__(self, paths: ProjectPaths) -> None:
        self._path = paths.lock
        self._fd: int | None = None

    def acquire(self) -> bool:
        if fcntl is None:
            raise StartupError(POSIX_ONLY)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def daemon_pid(paths: ProjectPaths) -> int | None:
    """The pid of the live daemon holding the lock (0 if it has not written it yet),
    or None when no daemon runs."""
    if fcntl is None:
        return None
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0  # 0: held, pid not written yet
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
