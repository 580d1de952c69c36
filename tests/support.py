"""Helpers for tests that run real tinytownd daemons and redis-server processes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tinytownd.paths import ProjectPaths


def tinytownd(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 90,
    user: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a child process."""
    command = [sys.executable, "-m", "tinytownd", *args]
    if user:
        command = ["runuser", "-u", user, "--", *command]
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(root: Path) -> dict[str, Any]:
    result = tinytownd("status", "--json", "--dir", str(root))
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def client(root: Path, **kwargs: Any) -> Any:
    """A plain redis-py client on the town's socket (or of the cluster its ``redis.url``
    names); no retries, so tests see what is."""
    url = remote_url(root)
    if url:
        from tinytownd.town import url_client

        return url_client(url, kwargs)  # behind Sentinel: the primary; a whole cluster
    return redis.Redis(
        unix_socket_path=str(ProjectPaths.of(root).client_socket),
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )


def remote_url(root: Path) -> str | None:
    """The ``redis.url`` in the town's tinytown.toml, if any."""
    toml = root / "tinytown.toml"
    if not toml.exists():
        return None
    url: str | None = tomllib.loads(toml.read_text()).get("redis", {}).get("url")
    return url


def wait_until(predicate: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError, OSError, ValueError, KeyError):
            value = predicate()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def serving_pid(root: Path) -> int:
    """Wait until Redis answers and return its pid."""
    return int(
        wait_until(
            lambda: client(root, socket_timeout=1).info("server")["process_id"],
            what="redis to answer",
        )
    )


def processes_of(root: Path) -> list[psutil.Process]:
    """Every daemon or redis-server that belongs to the project at ``root``."""
    found = []
    marker = str(root)
    for proc in psutil.process_iter(["cmdline", "cwd"]):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(proc.info["cmdline"] or [])
            cwd = proc.info["cwd"] or ""
            if proc.pid != os.getpid() and (marker in cmdline or cwd.startswith(marker)):
                found.append(proc)
    return found


def kill_everything(root: Path) -> None:
    """Last-resort cleanup: SIGCONT (for SIGSTOP tests) and SIGKILL all our processes."""
    for proc in processes_of(root):
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
    psutil.wait_procs(processes_of(root), timeout=5)


@contextlib.contextmanager
def project_dir(base: Path, name: str = "town", config: str | None = None) -> Iterator[Path]:
    root = base / name
    root.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (root / "tinytown.toml").write_text(config)
    try:
        yield root
    finally:
        with contextlib.suppress(Exception):
            tinytownd("stop", "--dir", str(root), timeout=30)
        kill_everything(root)
        ProjectPaths.of(root).unlink_socket_link()


def redis_cli() -> str | None:
    return shutil.which("redis-cli")


def town_at(root: Path, url: str) -> Path:
    """A project directory whose town ("far") uses the Redis at ``url``."""
    root.mkdir(exist_ok=True)
    (root / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{url}"\n')
    return root


class Servers(Protocol):
    def start(self) -> None: ...
    def stop(self) -> None: ...


S = TypeVar("S", bound=Servers)


@contextlib.contextmanager
def running(servers: S) -> Iterator[S]:
    """``servers`` started, and stopped afterwards even when starting them failed."""
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@contextlib.contextmanager
def short_dir(prefix: str) -> Iterator[Path]:
    """A temp dir under /tmp (unix socket paths stay short), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
