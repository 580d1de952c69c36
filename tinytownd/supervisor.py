"""The daemon: keep one town's redis-server running and report how it is doing.

One thread waits, with no timers spinning, on three things at once: Redis
exiting (a pidfd), signals (a wakeup fd), and the next health check.
"""

from __future__ import annotations

import collections
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable

import redis

from . import config as config_module
from . import redis_log, redis_server
from .config import Config, Persistence
from .errors import ConfigError, StartupError, TinytownError
from .notify import Notifier
from .paths import ProjectPaths
from .redis_server import RedisProcess, ServerBinary
from .state import DaemonLock, DaemonState, daemon_pid

log = logging.getLogger("tinytownd")

EXIT_ALREADY_RUNNING = 3
#: A Redis that ran this long before dying is restarted at once; quicker deaths
#: in a row back off (0.2 s, 0.4 s, ... up to supervisor.backoff_max).
STABLE_AFTER = 1.0
PersistenceOverride = Callable[[Persistence], Persistence]


class AlreadyRunning(TinytownError):
    exit_code = EXIT_ALREADY_RUNNING


class Supervisor:
    """Runs in the foreground until stopped; :meth:`run` returns the exit code."""

    def __init__(
        self, paths: ProjectPaths, config: Config, override: PersistenceOverride = lambda p: p
    ) -> None:
        self.paths = paths
        self.config = config
        self.override = override
        self.notifier = Notifier()
        self.state = DaemonState(daemon_pid=os.getpid())
        self.lock = DaemonLock(paths)
        self.binary: ServerBinary | None = None
        self.process: RedisProcess | None = None
        self.client: redis.Redis | None = None
        self.live = override(config.persistence)
        self.crashes: collections.deque[float] = collections.deque()
        self.streak = 0  # crashes in a row, each within STABLE_AFTER of its start
        self.redis_started = time.monotonic()
        self.health_misses = 0
        self.restart_at: float | None = None
        self.selector = selectors.DefaultSelector()
        # Signals arrive as bytes on this pair (signal.set_wakeup_fd), next to Redis's exit.
        self._wake, self._wake_write = socket.socketpair()

    @property
    def settings(self) -> config_module.SupervisorSettings:
        return self.config.supervisor

    def run(self) -> int:
        self._catch_signals()
        try:
            self._start()
        except TinytownError as err:
            self.notifier.status(f"failed: {err}")
            if self.lock.held:  # state.json belongs to whoever holds the lock
                self._publish("failed", failure=str(err))
            if self.process is not None:
                self.process.kill()
            self.lock.release()
            raise
        try:
            return self._loop()
        finally:
            self.paths.unlink_socket_link()
            self.lock.release()

    # -- start -----------------------------------------------------------

    def _start(self) -> None:
        self.paths.ensure_state_dir()
        if not self.lock.acquire():
            raise AlreadyRunning(f"tinytownd is already running (pid {daemon_pid(self.paths)})")
        self.paths.rotate(self.paths.redis_log)  # ours alone now that we hold the lock
        self.paths.link_socket()
        self.binary = redis_server.find_binary(self.config)
        self.state.redis_binary = self.binary.path
        self.state.redis_binary_source = self.binary.source
        self.state.redis_version = self.binary.version
        adopted = redis_server.identify(self.paths)
        if adopted is not None:
            log.info("adopting running redis-server (pid %d)", adopted)
            self.state.restarts = DaemonState.load(self.paths).restarts
            self._watch(RedisProcess(adopted))
            self.client = redis_server.connect(self.paths, self.settings.health_timeout)
            self.live = redis_server.persistence_settings(self.client)
        else:
            redis_server.remove_stale_socket(self.paths)
            self._launch(self.live)
        self.state.started_at = time.time()
        self._publish("running")
        self.notifier.ready(self._summary())
        log.info(
            "ready on %s (redis-server %s, pid %d)",
            self.paths.socket,
            self.binary.version,
            self.process.pid if self.process else 0,
        )

    def _launch(self, persistence: Persistence) -> None:
        assert self.binary is not None
        self._publish("starting" if self.state.state != "restarting" else "restarting")
        process = redis_server.spawn(self.binary, self.paths, persistence, self.config.redis)
        self.redis_started = time.monotonic()
        self._watch(process)
        client = redis_server.wait_ready(process, self.paths, self.settings.start_timeout)
        redis_server.apply_persistence(client, persistence, self.settings.start_timeout)
        client.close()
        warnings = redis_log.load_warnings(redis_log.lines_since(self.paths, process.log_offset))
        if warnings:
            log.warning("redis-server loaded its data with losses: %s", "; ".join(warnings))
        self.state.load_warnings = warnings
        self.client = redis_server.connect(self.paths, self.settings.health_timeout)
        self.live = persistence
        self.health_misses = 0

    def _watch(self, process: RedisProcess) -> None:
        self._unwatch()
        self.process = process
        self.selector.register(process, selectors.EVENT_READ, "exit")
        self.state.redis_pid = process.pid

    def _unwatch(self) -> None:
        if self.process is not None:
            self.selector.unregister(self.process)
            self.process.close()
            self.process = None
            self.state.redis_pid = None

    def _catch_signals(self) -> None:
        """Queue SIGTERM/SIGINT/SIGHUP for the loop from the very start, so a stop
        that arrives while Redis is still starting is handled, not fatal."""
        self._wake.setblocking(False)
        self._wake_write.setblocking(False)
        signal.set_wakeup_fd(self._wake_write.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)
        self.selector.register(self._wake, selectors.EVENT_READ, "signal")

    # -- loop ------------------------------------------------------------

    def _loop(self) -> int:
        wake_read = self._wake
        next_health = time.monotonic() + self.settings.health_interval
        watchdog = self.notifier.watchdog_interval
        next_watchdog = time.monotonic() if watchdog else float("inf")
        while True:
            now = time.monotonic()
            deadline = min(next_health, next_watchdog, self.restart_at or float("inf"))
            for key, _ in self.selector.select(max(0.0, deadline - now)):
                if key.data == "signal":
                    for received in wake_read.recv(64):  # one byte per signal
                        if received == signal.SIGHUP:
                            self._reload()
                        else:
                            return self._stop()
                elif key.data == "exit" and self.process is not None and self.process.wait(0):
                    code = self._on_exit()
                    if code is not None:
                        return code
            now = time.monotonic()
            if self.restart_at is not None and now >= self.restart_at:
                code = self._restart()
                if code is not None:
                    return code
            if now >= next_health:
                self._health_check()
                next_health = now + self.settings.health_interval
            if watchdog and now >= next_watchdog:
                if self.state.state == "running" and self.health_misses == 0:
                    self.notifier.watchdog()
                next_watchdog = now + watchdog

    def _health_check(self) -> None:
        if self.client is None or self.process is None:
            return
        try:
            self.live = redis_server.persistence_settings(self.client)
            self.health_misses = 0
        except redis.BusyLoadingError:
            self.health_misses = 0
        except redis.RedisError as err:
            self.health_misses += 1
            log.warning(
                "health check %d/%d failed: %s",
                self.health_misses,
                self.settings.health_failures,
                err,
            )
            if self.health_misses >= self.settings.health_failures and self.process:
                log.error("redis-server stopped answering; killing it to restart")
                self.process.kill()

    def _on_exit(self) -> int | None:
        assert self.process is not None
        reason = self.process.exit_reason()
        if self.health_misses >= self.settings.health_failures:
            reason = f"stopped answering PING, killed ({reason})"
        self._unwatch()
        return self._crashed(reason)

    def _crashed(self, reason: str) -> int | None:
        tail = redis_log.tail(self.paths)
        self.state.record_exit(reason, tail)
        log.error("redis-server %s", reason)
        now = time.monotonic()
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.settings.restart_window:
            self.crashes.popleft()
        if len(self.crashes) > self.settings.max_restarts:
            failure = (
                f"redis-server crashed {len(self.crashes)} times in "
                f"{self.settings.restart_window:g}s; last: {reason}"
            )
            self._publish("failed", failure=failure)
            self.notifier.status(f"failed: {failure}")
            log.error("giving up: %s", failure)
            return 1
        if now - self.redis_started >= STABLE_AFTER:
            self.streak = 0  # it had been serving: a fresh crash, not a crash loop
        delay = 0.0 if self.streak == 0 else min(self.settings.backoff_max, 0.1 * 2**self.streak)
        self.streak += 1
        self.restart_at = now + delay
        self._publish("restarting")
        self.notifier.status(f"restarting redis-server after it {reason}")
        return None

    def _restart(self) -> int | None:
        self.restart_at = None
        self.state.restarts += 1
        try:
            redis_server.remove_stale_socket(self.paths)
            self._launch(self.live)
        except StartupError as err:
            if self.process is not None:
                self.process.kill()
                self.process.wait(5)
                self._unwatch()
            return self._crashed(str(err))
        self._publish("running")
        self.notifier.status(self._summary())
        log.info("redis-server restarted (pid %d)", self.process.pid if self.process else 0)
        return None

    # -- signals -----------------------------------------------------------

    def _reload(self) -> None:
        self.notifier.reloading()
        try:
            self.config = config_module.load(self.paths.root)
            if self.client is not None and self.process is not None:
                wanted = self.override(self.config.persistence)
                redis_server.apply_persistence(self.client, wanted, self.settings.start_timeout)
                self.live = wanted
            log.info("reloaded %s", self.paths.config)
        except (ConfigError, StartupError, redis.RedisError) as err:
            log.error("reload failed, keeping the running settings: %s", err)
        self.notifier.ready(self._summary())

    def _stop(self) -> int:
        self.notifier.stopping()
        self._publish("stopping")
        outcome = "was not running"
        if self.process is not None:
            client = redis_server.connect(self.paths, self.settings.stop_timeout)
            outcome = redis_server.shutdown(client, self.process, self.settings.stop_timeout)
        log.info("redis-server %s", outcome)
        self.state.redis_pid = None
        self._publish("stopped")
        return 0

    # -- reporting -------------------------------------------------------------

    def _publish(self, state: str, failure: str | None = None) -> None:
        self.state.state = state
        self.state.failure = failure
        if self.paths.state_dir.is_dir():
            self.state.save(self.paths)

    def _summary(self) -> str:
        aof = f"AOF {self.live.appendfsync}" if self.live.appendonly else "AOF off"
        save = f"RDB save {self.live.save!r}" if self.live.save else "RDB off"
        return f"serving {self.paths.socket}; {save}; {aof}; restarts: {self.state.restarts}"
