"""The daemon: keep one town's redis-server running and report how it is doing.

One thread waits, with no timers spinning, on four things at once: Redis
exiting (a pidfd), signals (a wakeup fd), the answer to a ``SHUTDOWN SAVE``, and
the next health check.

What it never does: kill a Redis that is busy rather than hung, kill one that
could not save on the way out (only ``stop --force`` does), restart Redis from a
file older than the newest one (see :mod:`tinytownd.durability`), or exit because
its own I/O failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import config as config_module
from ..config import Config, Persistence
from ..errors import AlreadyRunning, ConfigError, StartupError, TinytownError
from ..lazyimport import lazy
from ..paths import ProjectPaths
from . import durability, engine, redis_admin, redis_log, redis_server, registry, restart_policy
from .engine import ServerBinary
from .notify import Notifier
from .redis_admin import ShutdownRequest
from .redis_server import RedisProcess
from .state import DaemonLock, DaemonState, TownState, daemon_pid

if TYPE_CHECKING:
    import redis
else:
    # redis-py (with asyncio) takes longer to import than Redis takes to start: the
    # daemon spawns Redis first and imports it while Redis boots.
    redis = lazy("redis")

log = logging.getLogger("tinytownd")

PersistenceOverride = Callable[[Persistence], Persistence]


def run_foreground(
    paths: ProjectPaths,
    config: Config,
    aof: bool = False,
    appendfsync: str | None = None,
    start_args: Sequence[str] = (),
) -> int:
    """``tinytownd start --foreground``: log to stderr, keep files private, supervise
    until stopped, with ``--aof`` / ``--appendfsync`` on top of tinytown.toml for this run."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s tinytownd[%(process)d] %(message)s",
    )
    os.umask(0o077)

    def override(persistence: Persistence) -> Persistence:
        return dataclasses.replace(
            persistence,
            appendonly=persistence.appendonly or aof,
            appendfsync=appendfsync or persistence.appendfsync,
        )

    return Supervisor(paths, config, override, start_args).run()


def running_settings(config: Config) -> dict[str, Any]:
    """What state.json keeps of the settings: everything but secrets."""
    settings = config_module.to_mapping(config)
    settings.get("redis", {}).pop("password", None)
    return settings


class Supervisor:
    """Runs in the foreground until stopped; :meth:`run` returns the exit code."""

    def __init__(
        self,
        paths: ProjectPaths,
        config: Config,
        override: PersistenceOverride = lambda p: p,
        start_args: Sequence[str] = (),
    ) -> None:
        self.paths = paths
        self.config = config
        self.override = override
        self.notifier = Notifier()
        self.state = DaemonState(daemon_pid=os.getpid(), start_args=list(start_args))
        self.lock = DaemonLock(paths)
        self.binary: ServerBinary | None = None
        self.process: RedisProcess | None = None
        self.client: redis.Redis | None = None
        self.live = override(config.persistence)
        self.crashes: list[float] = []  # recent crash times (monotonic)
        self.streak = 0  # quick crashes in a row (see restart_policy)
        self.redis_started = time.monotonic()
        self.health_misses = 0
        self.restart_at: float | None = None
        self.tracker = durability.AofTracker(paths)
        self.shutdown: ShutdownRequest | None = None
        self.state_unsaved = False
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
                self._publish(TownState.FAILED, failure=str(err))
            if self.process is not None:
                self.process.kill_group()
            self.lock.release()
            raise
        try:
            return self._loop()
        finally:
            registry.unregister(self.paths)
            self.paths.unlink_socket_link()
            self.paths.unlink_tt_socket()
            self.lock.release()

    # -- start -----------------------------------------------------------

    def _start(self) -> None:
        self.paths.ensure_state_dir()
        if not self.lock.acquire():
            raise AlreadyRunning(f"tinytownd is already running (pid {daemon_pid(self.paths)})")
        self.paths.rotate(self.paths.redis_log)  # ours alone now that we hold the lock
        self.paths.link_socket()
        self.paths.link_tt_socket()
        self.state.settings = running_settings(self.config)
        self.binary = engine.find_binary(self.config, self.paths)
        self.state.redis_binary = self.binary.path
        self.state.redis_binary_source = self.binary.source
        self.state.redis_version = self.binary.version
        self.state.server = self.binary.name
        adopted = redis_admin.identify(self.paths)
        if adopted is not None:
            log.info("adopting running redis-server (pid %d)", adopted)
            self.state.restarts = DaemonState.load(self.paths).restarts
            self._watch(RedisProcess(adopted))
            self.client = redis_admin.connect(self.paths, self.settings.health_timeout)
            self.live = redis_admin.persistence_settings(self.client)
        else:
            redis_server.remove_stale_socket(self.paths)
            self._launch(self.override(self.config.persistence))
            engine.write_record(self.paths, self.binary)
        registry.register(self.paths)
        self.state.started_at = time.time()
        self._publish(TownState.RUNNING)
        self.notifier.ready(self._summary())
        log.info(
            "ready on %s (redis-server %s, pid %d)",
            self.paths.socket,
            self.binary.version,
            self.process.pid if self.process else 0,
        )

    def _launch(self, wanted: Persistence, crash_restart: bool = False) -> None:
        assert self.binary is not None
        self._publish(
            TownState.STARTING if self.state.state != TownState.RESTARTING else TownState.RESTARTING
        )
        plan = durability.plan(self.paths)
        if plan.load_aof or plan.turned_on:
            self.tracker.aof_on()
        if crash_restart and plan.turned_on and not wanted.appendonly:
            # A runtime `CONFIG SET appendonly yes` we had not seen yet: keep it.
            wanted = dataclasses.replace(wanted, appendonly=True)
        engine.ensure_can_load(self.binary, self.paths)
        removed = durability.remove_leftovers(self.paths)
        if removed:
            log.info("removed partial files of a killed save: %s", ", ".join(removed))
        process = redis_server.spawn(
            self.binary, self.paths, wanted, self.config.redis, load_aof=plan.load_aof
        )
        self.redis_started = time.monotonic()
        self._watch(process)
        client = redis_server.wait_ready(process, self.paths, self.settings.start_timeout)
        try:
            if wanted.appendonly:
                self.tracker.aof_on()  # before Redis writes a single AOF byte
            redis_admin.apply_persistence(client, wanted, self.settings.start_timeout)
        finally:
            client.close()
        if not wanted.appendonly and not plan.load_aof:
            # Redis loaded the snapshot, which no AOF on disk is newer than: any later
            # change to the manifest means AOF was switched on behind our back.
            self.tracker.aof_off()
        warnings = redis_log.load_warnings(redis_log.lines_since(self.paths, process.log_offset))
        if warnings:
            log.warning("redis-server loaded its data with losses: %s", "; ".join(warnings))
        self.state.load_warnings = warnings
        self.client = redis_admin.connect(self.paths, self.settings.health_timeout)
        self.live = wanted
        self.health_misses = 0
        process.made_progress()  # the baseline for telling busy from hung

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
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
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
                code: int | None = None
                if key.data == "signal":
                    code = self._on_signals(wake_read.recv(64))  # one byte per signal
                elif key.data == "shutdown":
                    self._on_shutdown_answer()
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
                if self.state_unsaved:
                    self._save_state()
                next_health = now + self.settings.health_interval
            if watchdog and now >= next_watchdog:
                if (
                    self.state.state in (TownState.RUNNING, TownState.STOPPING)
                    and self.health_misses == 0
                ):
                    self.notifier.watchdog()
                next_watchdog = now + watchdog

    def _on_signals(self, received: bytes) -> int | None:
        for signum in received:
            if signum == signal.SIGUSR1:
                return self._force_stop()
            if signum == signal.SIGHUP:
                self._reload()
            elif self.state.state != TownState.STOPPING:
                code = self._begin_stop()
                if code is not None:
                    return code
        return None

    def _health_check(self) -> None:
        if self.client is None or self.process is None or self.state.state == TownState.STOPPING:
            return
        if self.process.wait(0):
            return  # it has exited: the exit event, next, says why
        try:
            self.live = redis_admin.persistence_settings(self.client)
            if self.live.appendonly:
                self.tracker.aof_on()
            elif self.tracker.needs_snapshot_info:
                self.tracker.observe(self.client.info("persistence"))
            self.health_misses = 0
            self.process.made_progress()
            return
        except redis.BusyLoadingError:
            self.health_misses = 0
            return
        except redis.ResponseError as err:
            if not str(err).startswith("BUSY"):
                log.warning("health check: %s", err)
                return
            failure: Exception = err  # a long script: busy, judged by progress below
        except (redis.RedisError, OSError) as err:
            failure = err
        try:
            busy = self.process.made_progress()
        except Exception:  # psutil on an exotic platform: never a reason to kill
            log.exception("cannot read redis-server's activity")
            busy = True
        if busy:
            if self.health_misses == 0:
                log.info("redis-server is busy (%s) but running; not a hang", failure)
            self.health_misses = 0
            return
        self.health_misses += 1
        log.warning(
            "health check %d/%d failed and redis-server made no progress: %s",
            self.health_misses,
            self.settings.health_failures,
            failure,
        )
        if self.health_misses >= self.settings.health_failures:
            log.error("redis-server neither answers nor runs; killing it to restart")
            self.process.kill_group()

    def _on_exit(self) -> int | None:
        assert self.process is not None
        reason = self.process.exit_reason()
        if self.health_misses >= self.settings.health_failures:
            reason = f"stopped answering PING and making progress, killed ({reason})"
        # Its save or rewrite child must not outlive it and rename a file later.
        self.process.kill_group()
        popen = self.process.popen
        # An adopted Redis is not our child: its exit status is its parent's to read,
        # but a clean SHUTDOWN always ends its log with "ready to exit, bye bye".
        clean = popen.returncode == 0 if popen is not None else redis_log.said_goodbye(self.paths)
        self._unwatch()
        self._drop_shutdown()
        if self.state.state == TownState.STOPPING:
            return self._stopped(None if clean else f"redis-server {reason} while stopping")
        return self._crashed(reason)

    def _crashed(self, reason: str) -> int | None:
        tail = redis_log.tail(self.paths)
        self.state.record_exit(reason, tail)
        log.error("redis-server %s", reason)
        now = time.monotonic()
        decision = restart_policy.after_crash(
            self.crashes, now, now - self.redis_started, self.streak, self.settings
        )
        self.crashes = list(decision.recent)
        if decision.delay is None:
            failure = (
                f"redis-server crashed {len(self.crashes)} times in "
                f"{self.settings.restart_window:g}s; last: {reason}"
            )
            self._publish(TownState.FAILED, failure=failure)
            self.notifier.status(f"failed: {failure}")
            log.error("giving up: %s", failure)
            return 1
        self.streak = decision.streak
        self.restart_at = now + decision.delay
        self._publish(TownState.RESTARTING)
        self.notifier.status(f"restarting redis-server after it {reason}")
        return None

    def _restart(self) -> int | None:
        self.restart_at = None
        self.state.restarts += 1
        try:
            redis_server.remove_stale_socket(self.paths)
            self._launch(self.live, crash_restart=True)
        except Exception as err:
            # Anything that keeps Redis from coming back (it died again, a full disk, a
            # socket in the way) is one more crash, retried with backoff: never our end.
            reason = f"failed to restart: {err}"
            if self.process is not None:
                if self.process.wait(0.5):  # it died while starting: say how, not what broke
                    reason = f"{self.process.exit_reason()} while restarting ({err})"
                self.process.kill_group()
                self.process.wait(5)
                self._unwatch()
            return self._crashed(reason)
        self._publish(TownState.RUNNING)
        self.notifier.status(self._summary())
        log.info("redis-server restarted (pid %d)", self.process.pid if self.process else 0)
        return None

    # -- signals -----------------------------------------------------------

    def _reload(self) -> None:
        """SIGHUP (``config set``, ``systemctl reload``): apply tinytown.toml, with this
        run's ``--aof`` flags on top, and say in state.json that it is done."""
        self.notifier.reloading()
        error = None
        try:
            self.config = config_module.load(self.paths.root)
            self.state.settings = running_settings(self.config)
            if self.client is not None and self.process is not None:
                wanted = self.override(self.config.persistence)
                if wanted.appendonly:
                    self.tracker.aof_on()
                redis_admin.apply_persistence(self.client, wanted, self.settings.start_timeout)
                self.live = wanted
            log.info("reloaded %s", self.paths.config)
        except (ConfigError, StartupError, redis.RedisError) as err:
            log.error("reload failed, keeping the running settings: %s", err)
            error = str(err)
        self.state.reloaded_at, self.state.reload_error = time.time(), error
        self._save_state()
        self.notifier.ready(self._summary())

    def _begin_stop(self) -> int | None:
        """Ask Redis to save and exit; the loop waits for its answer or its exit."""
        if self.process is None:
            return self._stopped(None)
        self.notifier.stopping()
        self._publish(TownState.STOPPING)
        try:
            self.shutdown = ShutdownRequest(self.paths)
        except (redis.RedisError, OSError, TinytownError) as err:
            self._stop_refused(f"cannot ask redis-server to save and stop: {err}")
            return None
        self.selector.register(self.shutdown, selectors.EVENT_READ, "shutdown")
        return None

    def _on_shutdown_answer(self) -> None:
        assert self.shutdown is not None
        refusal = self.shutdown.refusal()
        self._drop_shutdown()
        if refusal is not None:  # else it is exiting: its exit ends the stop
            self._stop_refused(redis_admin.refused_to_stop(self.paths, refusal))

    def _stop_refused(self, why: str) -> None:
        log.error("not stopping: %s", why)
        self.state.stop_failure, self.state.stop_failure_at = why, time.time()
        self._publish(TownState.RUNNING)
        self.notifier.ready(self._summary())

    def _drop_shutdown(self) -> None:
        if self.shutdown is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(self.shutdown)
            self.shutdown.close()
            self.shutdown = None

    def _force_stop(self) -> int:
        """``tinytownd stop --force``: the user accepted losing what Redis has not saved."""
        self.notifier.stopping()
        if self.process is not None:
            log.warning("stop --force: killing redis-server (pid %d) unsaved", self.process.pid)
            self.process.kill_group()
            self.process.wait(5)
            self.state.record_exit("killed by `tinytownd stop --force`", [])
            self._unwatch()
        self._drop_shutdown()
        return self._stopped(None, how="killed unsaved by `stop --force`")

    def _stopped(self, failure: str | None, how: str = "saved and stopped") -> int:
        if failure:
            log.error("%s", failure)
        else:
            log.info("redis-server %s", how)
        durability.remove_leftovers(self.paths)
        self.state.redis_pid = None
        self._publish(TownState.STOPPED, failure=failure)
        return 1 if failure else 0

    # -- reporting -------------------------------------------------------------

    def _publish(self, state: TownState, failure: str | None = None) -> None:
        self.state.state = state
        self.state.failure = failure
        self._save_state()

    def _save_state(self) -> None:
        """Write state.json; a failure (a full disk, a read-only directory) is logged
        and retried at the next health check, never the end of supervision."""
        try:
            if self.paths.state_dir.is_dir():
                self.state.save(self.paths)
            self.state_unsaved = False
        except OSError as err:
            if not self.state_unsaved:
                log.error("cannot write %s (will retry): %s", self.paths.state_file, err)
            self.state_unsaved = True

    def _summary(self) -> str:
        aof = f"AOF {self.live.appendfsync}" if self.live.appendonly else "AOF off"
        save = f"RDB save {self.live.save!r}" if self.live.save else "RDB off"
        return f"serving {self.paths.socket}; {save}; {aof}; restarts: {self.state.restarts}"
