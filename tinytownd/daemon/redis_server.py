"""One redis-server process: find the binary, launch it, wait until it answers,
apply persistence settings, and stop it without losing data."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import select
import signal
import stat
import subprocess
import threading
import time
from typing import TYPE_CHECKING

from ..config import Persistence, RedisSettings
from ..errors import ForeignSocketError, StartupError, StopError
from ..lazyimport import lazy
from ..paths import ProjectPaths
from . import redis_log
from .engine import ServerBinary
from .redis_admin import ShutdownRequest, connect, refused_to_stop

if TYPE_CHECKING:
    import psutil
    import redis
else:  # imported while the new Redis boots, not before it is spawned
    psutil = lazy("psutil")
    redis = lazy("redis")

log = logging.getLogger("tinytownd")


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
        self._fd = self._exit_fd(pid, popen)

    @staticmethod
    def _exit_fd(pid: int, popen: subprocess.Popen[bytes] | None) -> int:
        """A file descriptor that becomes readable when the process exits. Only our
        child's Popen may reap it: whoever reaps a child takes its exit status."""
        if hasattr(os, "pidfd_open"):
            return os.pidfd_open(pid)
        # macOS: a thread turns the exit into a readable pipe. Our own child is reaped by
        # its Popen, which keeps the status for exit_reason(); an adopted Redis is not
        # our child, so psutil can only poll for it (and nobody here can reap it).
        read_end, write_end = os.pipe()
        # Resolved here, not in the thread: psutil may still be a lazy module, and
        # Python 3.11 does not load lazy modules safely from two threads at once.
        no_such_process = psutil.NoSuchProcess

        def wait() -> None:
            if popen is not None:
                popen.wait()
            else:
                with contextlib.suppress(no_such_process):
                    psutil.Process(pid).wait()
            os.write(write_end, b"x")
            os.close(write_end)

        threading.Thread(target=wait, name=f"exit-of-{pid}", daemon=True).start()
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
    # The same request the daemon sends from its loop: one way to stop Redis.
    deadline = time.monotonic() + timeout
    try:
        request = ShutdownRequest(paths)
    except (redis.RedisError, OSError) as err:
        raise StopError(f"cannot ask redis-server to save and stop: {err}") from None
    try:
        answered, _, _ = select.select([request.fileno(), process.fileno()], [], [], timeout)
        if request.fileno() in answered:
            refusal = request.refusal()
            if refusal is not None:
                raise StopError(refused_to_stop(paths, refusal))
    finally:
        request.close()
    if not process.wait(max(0.0, deadline - time.monotonic())):
        raise StopError(
            f"redis-server (pid {process.pid}) is still saving after {timeout:g}s and keeps "
            "running, so nothing is lost; it exits once the save is done (see `tinytownd "
            "status`). `tinytownd stop --force` kills it and loses the unsaved writes"
        )
