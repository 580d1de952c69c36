"""``tinytownd save`` and ``restore``: a town's data as one RDB file, moved safely.

Save never hands out a half-written file (Redis writes the snapshot, we copy it
through a temp file, fsync and rename). Restore checks the file with Redis's
own checker first, keeps the data it replaces in ``.tt/backup-<time>/`` (never
deleted by us), and puts the old data back if anything fails.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from .. import migrate
from ..channel import Channel
from ..config import Config
from ..errors import BackupError, NotRunningError, StartupError, TinytownError
from ..keys import LEGACY_KINDS
from ..migrate import MigrationReport
from ..paths import ProjectPaths
from . import control, engine, redis_admin
from .state import DaemonState


@dataclass(frozen=True)
class RdbCount:
    """What Redis's checker counted in a snapshot."""

    keys: int
    #: Keys with a TTL: some may have expired by the time the snapshot is loaded.
    expiring: int = 0

    def allows(self, loaded: int) -> bool:
        """Whether a Redis that loaded ``loaded`` keys loaded the whole snapshot."""
        return self.keys - self.expiring <= loaded <= self.keys


@dataclass(frozen=True)
class Snapshot:
    path: Path
    size: int
    keys: int
    taken_at: float


def check_rdb(paths: ProjectPaths, config: Config, path: Path) -> RdbCount:
    """Run the town's server's RDB checker on a copy of ``path`` (the original may be
    replaced while it runs); return what it counted or raise."""
    binary = engine.find_binary(config, paths)
    with tempfile.TemporaryDirectory(prefix="ttc-") as scratch:
        copy = Path(scratch) / "check.rdb"
        shutil.copyfile(path, copy)
        checked = engine.check(binary, copy)
    if checked.foreign:
        raise BackupError(
            f"{binary.name} ({binary.path}) cannot read {path}: {checked.said}; it was "
            "written by another server or a newer version (the file itself may be fine)"
        )
    if not checked.readable or checked.keys is None:
        raise BackupError(f"{path} is not a valid Redis snapshot: {checked.said}")
    return RdbCount(checked.keys, checked.expiring)


def _copy_atomically(source: Path, target: Path) -> int:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        # 0600 whatever the umask: a town's data is its owner's alone.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return target.stat().st_size


def _client(paths: ProjectPaths) -> redis.Redis:
    return redis_admin.connect(paths, timeout=30)


def save(paths: ProjectPaths, config: Config, target: Path, timeout: float = 600) -> Snapshot:
    """Snapshot the running town (BGSAVE, waiting for success) and copy it to ``target``.

    The snapshot holds every write acknowledged before this call.
    """
    client = _client(paths)
    try:
        client.ping()
    except (redis.ConnectionError, FileNotFoundError):
        raise NotRunningError(
            f"town {config.name!r} is not running; start it with `tinytownd start` first"
        ) from None
    deadline = time.monotonic() + timeout
    try:
        # A save already under way may have started before we were asked: let it end.
        while _persistence(client)["rdb_bgsave_in_progress"]:
            _tick(deadline, timeout)
        # The pool reconnects by itself: were Redis to crash and be restarted meanwhile,
        # we would be polling a new server that never heard of our snapshot.
        run_id = client.info("server")["run_id"]
        saves = int(_persistence(client)["rdb_saves"])
        try:
            client.execute_command("BGSAVE", "SCHEDULE")
        except redis.ResponseError as err:
            if "already in progress" not in str(err):  # else one began after our request
                raise BackupError(f"Redis refused to snapshot: {err}") from None
        while True:
            info = _persistence(client)
            if client.info("server")["run_id"] != run_id:
                raise redis.ConnectionError("Redis restarted during the snapshot")
            if not info["rdb_bgsave_in_progress"]:
                if int(info["rdb_saves"]) > saves:
                    break
                if info["rdb_last_bgsave_status"] != "ok":
                    raise BackupError(
                        "Redis could not write its snapshot; see `tinytownd logs --redis`"
                    )
            _tick(deadline, timeout)
        directory = str(client.config_get("dir")["dir"])
        live = Path(directory) / str(client.config_get("dbfilename")["dbfilename"])
        taken_at = float(info["rdb_last_save_time"])
    except (redis.ConnectionError, redis.TimeoutError) as err:
        raise BackupError(
            f"lost Redis during the snapshot ({err}); {target} was not written. See "
            "`tinytownd status`, then retry"
        ) from None
    finally:
        client.close()
    size = _copy_atomically(live, target)
    return Snapshot(target, size, check_rdb(paths, config, target).keys, taken_at)


def _persistence(client: redis.Redis) -> dict[str, Any]:
    info: dict[str, Any] = client.info("persistence")
    return info


def _tick(deadline: float, timeout: float) -> None:
    if time.monotonic() > deadline:
        raise BackupError(f"the snapshot did not finish within {timeout:g}s")
    time.sleep(0.01)


@dataclass(frozen=True)
class Restored:
    keys: int
    backup: Path
    renamed: MigrationReport | None
    #: Other towns whose keys the snapshot brought (nothing of this town's sees them).
    other_towns: list[str] = field(default_factory=list)


def current_keys(paths: ProjectPaths) -> int | None:
    """How many keys the running town holds (all databases), or None if it is not running."""
    if not control.liveness(paths).running:
        return None
    client = _client(paths)
    try:
        return _total_keys(client)
    except (redis.ConnectionError, FileNotFoundError):
        return None
    finally:
        client.close()


def _total_keys(client: redis.Redis) -> int:
    return sum(int(db["keys"]) for db in client.info("keyspace").values())


def restore(
    paths: ProjectPaths,
    config: Config,
    source: Path,
    rename_from: str | None = None,
    checked: RdbCount | None = None,
) -> Restored:
    """Replace the town's data with the snapshot ``source`` and start the town on it.

    ``rename_from``: a town name whose keys to move into this town afterwards, or
    ``"*"`` to pick the one other town found in the snapshot. ``checked``: what
    :func:`check_rdb` said of ``source``, if the caller already ran it.
    """
    expected = checked or check_rdb(paths, config, source)  # a caller that showed it has checked
    was_running = current_keys(paths) is not None
    # The town comes back with the durability it ran with, `start --aof ...` included.
    start_args = DaemonState.load(paths).start_args
    control.stop(paths, config)  # SHUTDOWN SAVE: the data we set aside is complete
    paths.ensure_state_dir()
    backup = paths.new_backup_dir()
    kept = [item for item in (paths.rdb, paths.aof_dir) if item.exists()]
    for item in kept:
        os.rename(item, backup / item.name)
    try:
        _copy_atomically(source, paths.rdb)
        # No AOF on disk now, so Redis loads the snapshot; if AOF is configured the
        # daemon turns it on and waits until it is rebuilt from the restored data.
        control.start(paths, config, start_args)
        client = _client(paths)
        try:
            loaded = _total_keys(client)
            if not expected.allows(loaded):
                raise BackupError(f"Redis loaded {loaded} keys, the snapshot has {expected.keys}")
            renamed = _rename(client, config, rename_from) if rename_from else None
            others = sorted(towns_in(client) - {config.name})
        finally:
            client.close()
    except (TinytownError, OSError, redis.RedisError) as err:
        _roll_back(paths, config, backup, kept, was_running, start_args)
        raise BackupError(f"restore failed, previous data back in force: {err}") from None
    return Restored(loaded, backup, renamed, others)


def _roll_back(
    paths: ProjectPaths,
    config: Config,
    backup: Path,
    kept: list[Path],
    was_running: bool,
    start_args: list[str],
) -> None:
    with contextlib.suppress(TinytownError):
        control.stop(paths, config)
    attempt = backup / "failed-restore"
    attempt.mkdir(exist_ok=True)
    for item in (paths.rdb, paths.aof_dir):
        if item.exists():
            os.rename(item, attempt / item.name)
    for item in kept:
        os.rename(backup / item.name, item)
    if was_running:
        with contextlib.suppress(StartupError):  # the caller's error says what happened
            control.start(paths, config, start_args)


def towns_in(client: redis.Redis) -> set[str]:
    towns = set()
    for key in client.scan_iter(match="tt:*", count=1000):
        parts = key.decode("utf-8", "replace").split(":")
        if len(parts) >= 3 and not (len(parts) == 3 and parts[1] in LEGACY_KINDS):
            towns.add(parts[1])
    return towns


def _rename(client: redis.Redis, config: Config, rename_from: str) -> MigrationReport:
    if rename_from == "*":
        others = sorted(towns_in(client) - {config.name})
        if len(others) > 1:
            raise BackupError(
                f"the snapshot holds several towns ({', '.join(others)}); "
                "name one with --rename-town OLD"
            )
        if not others:
            return MigrationReport()
        rename_from = others[0]
    return Channel(client, config.name).run(migrate.rename_town(rename_from, config.name))
