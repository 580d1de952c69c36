"""Start, stop and inspect a town's daemon from another process (the CLI, ``Town``)."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..config import Config, redact_url
from ..errors import (
    EXIT_ALREADY_RUNNING,
    ForeignSocketError,
    NotRunningError,
    StartupError,
    StopError,
)
from ..lazyimport import lazy
from ..paths import ProjectPaths
from .state import POSIX_ONLY, DaemonState, daemon_pid

if TYPE_CHECKING:
    import redis

    from . import redis_admin
else:  # `start` never talks to Redis itself: it spawns the daemon before paying for these
    redis = lazy("redis")
    redis_admin = lazy("tinytownd.daemon.redis_admin")

__all__ = ["daemon_pid", "redact_url", "start", "status", "stop"]


@dataclass(frozen=True)
class Liveness:
    """The one answer to "is this town running?": who holds the daemon lock, and which
    process the kernel says serves the town's socket (``identify``, never the server's
    word)."""

    daemon_pid: int | None
    redis_pid: int | None

    @property
    def running(self) -> bool:
        """Redis answers on the socket (with or without its daemon)."""
        return self.redis_pid is not None

    @property
    def anything(self) -> bool:
        """A daemon or a Redis of this town is alive: its files are in use."""
        return self.daemon_pid is not None or self.redis_pid is not None


def liveness(paths: ProjectPaths) -> Liveness:
    """Raises :class:`ForeignSocketError` when the socket is not this town's Redis."""
    return Liveness(daemon_pid(paths), redis_admin.identify(paths))


def start(
    paths: ProjectPaths, config: Config, extra_args: list[str] | None = None
) -> tuple[int, bool]:
    """Start the daemon in the background and return once Redis answers PING.

    Returns ``(daemon_pid, already_running)``.
    """
    if os.name == "nt":
        raise StartupError(POSIX_ONLY)
    paths.ensure_state_dir()
    timeout = config.supervisor.start_timeout + 10
    running = daemon_pid(paths)
    if running is not None:
        _wait_for_ping(paths, timeout)
        return daemon_pid(paths) or running, True
    paths.rotate(paths.daemon_log)  # no daemon has it open: none is running
    with tempfile.TemporaryDirectory(prefix="ttd-") as tmp:
        notify_path = os.path.join(tmp, "notify")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        listener.bind(notify_path)
        with listener, open(paths.daemon_log, "ab") as log:
            os.chmod(paths.daemon_log, 0o600)
            daemon = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tinytownd",
                    "start",
                    "--foreground",
                    "--dir",
                    str(paths.root),
                    *(extra_args or []),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
                start_new_session=True,
            )
            return _await_ready(daemon, listener, paths, timeout)


def _await_ready(
    daemon: subprocess.Popen[bytes], listener: socket.socket, paths: ProjectPaths, timeout: float
) -> tuple[int, bool]:
    status = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([listener], [], [], 0.05)[0]:
            fields = dict(
                line.split("=", 1)
                for line in listener.recv(4096).decode().splitlines()
                if "=" in line
            )
            status = fields.get("STATUS", status)
            if fields.get("READY") == "1":
                return daemon.pid, False
        code = daemon.poll()
        if code == EXIT_ALREADY_RUNNING:
            _wait_for_ping(paths, deadline - time.monotonic())
            return daemon_pid(paths) or 0, True
        if code is not None:
            detail = status.removeprefix("failed: ") or f"see {paths.daemon_log}"
            raise StartupError(f"tinytownd could not start: {detail}")
    daemon.terminate()
    raise StartupError(
        f"tinytownd did not become ready within {timeout:g}s; see {paths.daemon_log}"
    )


def _wait_for_ping(paths: ProjectPaths, timeout: float) -> None:
    client = redis_admin.connect(paths, timeout=1.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                if time.monotonic() > deadline:
                    raise StartupError(
                        f"tinytownd is running but Redis does not answer on {paths.socket}; "
                        "see `tinytownd status`"
                    ) from None
                time.sleep(0.02)
    finally:
        client.close()


def stop(paths: ProjectPaths, config: Config, force: bool = False) -> str:
    """Stop the town: Redis saves (``SHUTDOWN SAVE``), then exits, then the daemon.

    Returns what happened, for a person. Raises :class:`StopError`, with Redis still
    running and nothing lost, when Redis cannot save or is still saving after
    ``supervisor.stop_timeout``. ``force``: kill Redis without saving.
    """
    timeout = config.supervisor.stop_timeout
    pid = daemon_pid(paths)
    if pid:
        asked = time.time()
        os.kill(pid, signal.SIGUSR1 if force else signal.SIGTERM)
        # The daemon's lock goes when it exits; its pid may linger as a zombie when
        # nothing reaps orphans (containers), so the pid is the wrong thing to watch.
        deadline = time.monotonic() + timeout + 1
        while daemon_pid(paths) is not None:
            recorded = DaemonState.load(paths)
            if recorded.stop_failure and (recorded.stop_failure_at or 0) >= asked:
                raise StopError(recorded.stop_failure)
            if time.monotonic() > deadline:
                raise StopError(_not_stopped(paths, timeout))
            time.sleep(0.01)
        _confirm_stopped(paths)
        recorded = DaemonState.load(paths)
        if recorded.state == "stopped" and recorded.failure:
            raise StopError(f"{recorded.failure}; writes since its last save may be lost")
        return f"stopped (daemon pid {pid})" + (" without saving" if force else "")
    redis_pid = liveness(paths).redis_pid
    if redis_pid is None:
        return "not running"
    # A Redis that outlived its daemon: only here does control need the process code.
    from .redis_server import RedisProcess, shutdown

    process = RedisProcess(redis_pid)
    try:
        if force:
            process.kill_group()
            process.wait(5)
            return f"unsupervised redis-server (pid {redis_pid}) killed without saving"
        shutdown(paths, process, timeout)
    finally:
        process.close()
    return f"unsupervised redis-server (pid {redis_pid}) saved and stopped"


def _not_stopped(paths: ProjectPaths, timeout: float) -> str:
    """Why Redis is still up after ``timeout``, when the daemon could not tell us
    (its state file unwritable: a read-only or full disk)."""
    client = redis_admin.connect(paths, timeout=0.5)
    try:
        client.ping()
        answers = True  # a Redis still in SHUTDOWN SAVE answers nothing
    except (redis.RedisError, OSError):
        answers = False
    finally:
        client.close()
    if answers:
        return redis_admin.refused_to_stop(paths, "it answers but did not stop")
    return (
        f"redis-server is still saving after {timeout:g}s and keeps running, so nothing "
        "is lost; the daemon stops it once the save is done (see `tinytownd status`). "
        "`tinytownd stop --force` kills it now and loses the unsaved writes"
    )


def _confirm_stopped(paths: ProjectPaths) -> None:
    """The daemon is gone; make sure its Redis is too before saying "stopped"."""
    try:
        left = liveness(paths).redis_pid
    except ForeignSocketError:
        left = None  # not ours, not this town's Redis: status and start report it
    if left is not None:
        raise StopError(
            f"the daemon exited but redis-server (pid {left}) still runs, unsupervised; "
            "run `tinytownd stop` again"
        )


def unsaved(paths: ProjectPaths) -> str:
    """What ``stop --force`` would lose, in words, as far as Redis can still tell."""
    client = redis_admin.connect(paths, timeout=1.0)
    try:
        info = client.info("persistence")
    except (redis.RedisError, OSError):
        return "Redis does not answer, so whatever it has not saved is lost"
    finally:
        client.close()
    changes = info.get("rdb_changes_since_last_save", "?")
    if info.get("aof_enabled"):
        return (
            f"{changes} changes since the last snapshot; the append-only file has every "
            "write it acknowledged, so little or nothing is lost"
        )
    return f"{changes} changes since the last snapshot are lost"


def status(paths: ProjectPaths, config: Config) -> dict[str, Any]:
    """Everything ``tinytownd status`` shows, as plain data."""
    recorded = DaemonState.load(paths)
    report: dict[str, Any] = asdict(recorded)
    report.update(
        town=config.name,
        dir=str(paths.root),
        socket=str(paths.socket),
        # What clients such as `redis-cli -s` must use: a short link when the path is
        # longer than the OS allows for a unix socket address.
        client_socket=str(paths.client_socket),
        persistence=None,
    )
    if config.remote_url:
        report.update(
            state="remote",
            remote_url=redact_url(config.remote_url),
            remote_source=config.remote_source,
            socket=None,
            daemon_pid=None,
            supervised=False,
        )
        try:
            from ..town import remote_client

            remote = remote_client(
                config.remote_url, {"socket_connect_timeout": 5, "socket_timeout": 5}
            )
            report["redis_version"] = remote.info("server").get("redis_version")
            cluster = remote.info("cluster")
            if str(cluster.get("cluster_enabled", "0")) == "1":
                found = remote.execute_command("CLUSTER", "INFO")
                lines = found.decode() if isinstance(found, bytes) else str(found)
                facts = dict(line.split(":", 1) for line in lines.split() if ":" in line)
                report["cluster"] = {
                    "state": facts.get("cluster_state"),
                    "primaries": int(facts.get("cluster_size", 0)),
                    "slots_ok": int(facts.get("cluster_slots_ok", 0)),
                }
        except redis.RedisError as err:
            report["remote_error"] = str(err)
        return report
    alive = liveness(paths)
    report.update(
        daemon_pid=alive.daemon_pid,
        supervised=alive.daemon_pid is not None,
        redis_pid=alive.redis_pid,
    )
    if alive.daemon_pid is None:
        # Without a daemon, the state file is history: only the kernel's answer counts.
        report["state"] = (
            "running" if alive.running else "failed" if recorded.state == "failed" else "stopped"
        )
    if alive.running:
        # Busy or going away: the daemon's own word above stands.
        with contextlib.suppress(NotRunningError):
            report.update(_live(paths))
    return report


def _live(paths: ProjectPaths) -> dict[str, Any]:
    client = redis_admin.connect(paths, timeout=2.0)
    try:
        server = client.info("server")
        info = client.info("persistence")
        settings = redis_admin.persistence_settings(client)
    except (redis.ConnectionError, redis.TimeoutError, FileNotFoundError):
        raise NotRunningError("Redis is not answering") from None
    finally:
        client.close()
    last_save = info.get("rdb_last_save_time", 0)
    # Valkey reports the Redis version it is compatible with as redis_version.
    name = str(server.get("server_name") or "redis")
    version = server.get(f"{name}_version") or server.get("redis_version")
    return {
        "redis_version": version,
        "server": f"{name.capitalize()} {version}",
        "persistence": {
            **asdict(settings),
            "rdb_last_save": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last_save)),
            "rdb_changes_since_last_save": info.get("rdb_changes_since_last_save"),
            "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
            "aof_enabled": bool(info.get("aof_enabled")),
            "aof_last_write_status": info.get("aof_last_write_status"),
            "aof_last_bgrewrite_status": info.get("aof_last_bgrewrite_status"),
            "loading": bool(info.get("loading")),
        },
    }


def summary(paths: ProjectPaths) -> dict[str, Any]:
    """One line of ``tinytownd ls``: the town, its state, uptime, Redis's memory and
    connected clients (None where Redis does not answer quickly)."""
    recorded = DaemonState.load(paths)
    settings = recorded.settings or {}
    line: dict[str, Any] = {
        "town": settings.get("name") or paths.root.name,
        "dir": str(paths.root),
        "state": str(recorded.state),
        "daemon_pid": daemon_pid(paths),
        "uptime_s": time.time() - recorded.started_at if recorded.started_at else None,
        "memory_mb": None,
        "clients": None,
    }
    client = redis_admin.connect(paths, timeout=0.5)
    try:
        info = client.info()
        line["memory_mb"] = int(info["used_memory_rss"]) / 2**20
        line["clients"] = int(info["connected_clients"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        pass  # busy, or going away: the row says "-"
    finally:
        client.close()
    return line


def apply_live(paths: ProjectPaths, config: Config) -> bool:
    """Have the running daemon apply ``tinytown.toml`` now (SIGHUP) and wait until it says
    it has. The daemon is the only process that changes Redis's settings, so its own
    ``--aof`` flags are never undone on the way. Returns False when no daemon runs."""
    pid = daemon_pid(paths)
    if not pid:
        return False
    asked = time.time()
    os.kill(pid, signal.SIGHUP)
    timeout = config.supervisor.start_timeout + 5
    deadline = time.monotonic() + timeout
    while daemon_pid(paths) is not None:
        recorded = DaemonState.load(paths)
        if recorded.reloaded_at is not None and recorded.reloaded_at >= asked:
            if recorded.reload_error:
                raise StartupError(
                    f"the daemon could not apply it ({recorded.reload_error}); the running "
                    "town keeps its settings, see `tinytownd logs`"
                )
            return True
        if time.monotonic() > deadline:
            raise StartupError(
                f"the daemon (pid {pid}) did not confirm the new settings within {timeout:g}s; "
                "see `tinytownd logs`"
            )
        time.sleep(0.02)
    return False
