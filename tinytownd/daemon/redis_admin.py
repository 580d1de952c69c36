"""Our own client of the town's Redis: no retries, bounded waits, and only the
commands the daemon's side needs (persistence settings, identifying the server,
asking it to stop). Light on purpose: :mod:`control` uses it, and the client side
imports :mod:`control`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import time
from typing import TYPE_CHECKING, Any

from ..config import Persistence
from ..errors import ForeignSocketError, StartupError
from ..lazyimport import lazy
from ..paths import ProjectPaths
from . import redis_log

if TYPE_CHECKING:
    import redis

    from .. import peer
else:  # the daemon launches Redis before it needs these (see supervisor)
    redis = lazy("redis")
    peer = lazy("tinytownd.peer")


def connect(paths: ProjectPaths, timeout: float | None = None) -> redis.Redis:
    """A client for the daemon's own checks: no retries, bounded waits."""
    return peer.own_socket_client(
        str(paths.client_socket),
        password=paths.read_password(),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
    )


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
            served_by = peer.check_own(probe, str(paths.socket))
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
            f"redis-server, pid {served_by.pid}?); stop it and retry"
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
    if os.path.realpath(served_dir) != os.path.realpath(paths.state_dir) or served_by.pid is None:
        raise ForeignSocketError(
            f"{paths.socket} is served by another redis-server (pid {served_by.pid}, dir "
            f"{served_dir}); stop it or use another directory"
        )
    return served_by.pid


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
        self.client = peer.own_socket_client(
            str(paths.client_socket),
            password=paths.read_password(),
            socket_timeout=None,
            socket_connect_timeout=5,
            retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0),
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
