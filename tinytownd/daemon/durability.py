"""Which of Redis's files holds the newest data, decided from facts rather than mtimes.

Redis loads only the append-only file when started with ``appendonly yes`` and only
the RDB snapshot otherwise, so after a crash the daemon must pick. File times cannot
tell: a BGSAVE forks at T0 and renames ``dump.rdb`` at T2, so a snapshot can look
newer than the AOF while lacking every write acknowledged between T0 and T2.

The facts we use instead:

- ``.tt/aof.json`` records, durably, whether AOF may hold writes the snapshot lacks
  (``on``). It turns on as soon as AOF is seen on (by config, flag or a runtime
  ``CONFIG SET``), and turns off only once Redis reports AOF off *and* a snapshot
  taken after that has completed; it then remembers the AOF manifest as it was.
- A manifest different from the remembered one means AOF was turned on (and its
  first rewrite finished) since we last looked.
- A ``temp-*.incr`` file in ``appendonlydir`` means AOF was being turned on when
  Redis died.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..paths import ProjectPaths, write_durably

log = logging.getLogger("tinytownd")


@dataclass(frozen=True)
class AofRecord:
    """What ``.tt/aof.json`` holds."""

    on: bool
    #: The manifest's text when AOF was confirmed off (None: there was none).
    manifest_when_off: str | None = None


@dataclass(frozen=True)
class LoadPlan:
    """How to launch Redis so that it loads the newest data."""

    #: Start with ``appendonly yes``: the AOF holds the newest data.
    load_aof: bool
    #: AOF was switched on since the record last saw it off: keep it on.
    turned_on: bool


def record_path(paths: ProjectPaths) -> Path:
    return paths.state_dir / "aof.json"


def read_record(paths: ProjectPaths) -> AofRecord | None:
    try:
        data = json.loads(record_path(paths).read_text(encoding="utf-8"))
        return AofRecord(on=bool(data["on"]), manifest_when_off=data.get("manifest_when_off"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable: assume the worst, that the AOF holds writes the snapshot lacks.
        log.warning("%s is unreadable; treating the AOF as current", record_path(paths))
        return AofRecord(on=True)


def write_record(paths: ProjectPaths, record: AofRecord) -> None:
    """Write the record durably; raises OSError."""
    write_durably(record_path(paths), json.dumps(asdict(record)) + "\n")


def manifest_text(paths: ProjectPaths) -> str | None:
    """The AOF manifest's contents, or None when there is no AOF to load."""
    try:
        manifests = sorted(paths.aof_dir.glob("*.manifest"))
        return manifests[0].read_text(encoding="utf-8", errors="replace") if manifests else None
    except OSError:
        return None


def _turning_on(paths: ProjectPaths) -> bool:
    """Redis opens a temp incr file while AOF is being switched on at run time."""
    with contextlib.suppress(OSError):
        return any(paths.aof_dir.glob("temp-*.incr"))
    return False


def plan(paths: ProjectPaths) -> LoadPlan:
    """Decide how to launch Redis from what is on disk and in the record."""
    manifest = manifest_text(paths)
    turning_on = _turning_on(paths)
    if manifest is None or turning_on:
        # No complete AOF: the snapshot is all there is. (While AOF is being switched
        # on, any manifest on disk predates the snapshot: the rewrite never finished.)
        return LoadPlan(load_aof=False, turned_on=turning_on)
    record = read_record(paths)
    if record is None or record.on:
        return LoadPlan(load_aof=True, turned_on=False)
    changed = manifest != record.manifest_when_off
    return LoadPlan(load_aof=changed, turned_on=changed)


def remove_leftovers(paths: ProjectPaths) -> list[str]:
    """Delete the partial files a killed save or rewrite leaves; only call this once
    no process of the old Redis is alive. Returns the names removed."""
    removed = []
    patterns = [
        (paths.state_dir, "temp-*.rdb"),
        (paths.state_dir, "temp-rewriteaof-*.aof"),
        (paths.aof_dir, "temp-*"),
    ]
    for directory, pattern in patterns:
        with contextlib.suppress(OSError):
            for leftover in directory.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
                    removed.append(leftover.name)
    return removed


class AofTracker:
    """Keeps ``.tt/aof.json`` in step with what Redis reports, conservatively."""

    def __init__(self, paths: ProjectPaths) -> None:
        self.paths = paths
        self.record = read_record(paths)
        #: ``rdb_saves`` when AOF was first seen off: a later snapshot confirms it.
        self._off_at_saves: int | None = None

    def _write(self, record: AofRecord) -> None:
        if record == self.record:
            return
        try:
            write_record(self.paths, record)
        except OSError as err:
            # Keep going: the old record errs on the side of loading the AOF, and
            # the next health check tries again.
            log.error("cannot write %s: %s", record_path(self.paths), err)
            return
        self.record = record

    def aof_on(self) -> None:
        """AOF is (or is about to be) on: its files are the newest data from now on."""
        self._off_at_saves = None
        self._write(AofRecord(on=True))

    def aof_off(self) -> None:
        """AOF is off and the snapshot holds everything: remember the manifest as it is."""
        self._off_at_saves = None
        self._write(AofRecord(on=False, manifest_when_off=manifest_text(self.paths)))

    def observe(self, info: dict[str, Any]) -> None:
        """Feed ``INFO persistence``. AOF is recorded off only once Redis reports it off
        and a snapshot that began after that has succeeded (one already running may
        have forked before AOF went off, and lack writes only the AOF holds)."""
        if info.get("aof_enabled"):
            self.aof_on()
            return
        if self.record is not None and not self.record.on:
            return
        saves = int(info.get("rdb_saves", 0))
        if self._off_at_saves is None:
            if not info.get("rdb_bgsave_in_progress"):
                self._off_at_saves = saves
        elif saves > self._off_at_saves and info.get("rdb_last_bgsave_status") == "ok":
            self.aof_off()

    @property
    def needs_snapshot_info(self) -> bool:
        """Whether :meth:`observe` still waits for a snapshot to confirm AOF off."""
        return self.record is None or self.record.on
