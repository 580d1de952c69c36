"""Renaming keys in bulk, safely: ``tinytownd migrate`` and ``restore --rename-town``.

Each key moves with one RENAMENX: atomic, and never over an existing key (that
is reported as a conflict and left alone). Running it again finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .keys import PREFIX, legacy_target, validate_town_name
from .ops import Op

Progress = Callable[["MigrationReport"], None]


@dataclass
class MigrationReport:
    scanned: int = 0
    moved: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def _bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")


def rename_keys(
    pattern: str,
    target: Callable[[str], str | None],
    dry_run: bool = False,
    progress: Progress | None = None,
    batch: int = 1000,
) -> Op[MigrationReport]:
    """Rename every key matching ``pattern`` to ``target(key)`` (skipping None)."""
    report = MigrationReport()
    cursor: bytes | int = 0
    while True:
        cursor, keys = yield ("SCAN", cursor, "MATCH", pattern, "COUNT", batch)
        report.scanned += len(keys)
        for key in keys:
            new = target(_text(key))
            if new is None:
                continue
            pair = (_text(key), new)
            if dry_run:
                exists = yield ("EXISTS", _bytes(new))
                (report.conflicts if exists else report.moved).append(pair)
            else:
                renamed = yield ("RENAMENX", key, _bytes(new))
                (report.moved if renamed else report.conflicts).append(pair)
        if progress is not None:
            progress(report)
        if int(cursor) == 0:
            return report


def migrate(
    town: str, dry_run: bool = False, progress: Progress | None = None
) -> Op[MigrationReport]:
    """Move every pre-0.9 key (``tt:agent:<id>``, ...) into ``town``."""
    validate_town_name(town)
    return rename_keys(f"{PREFIX}:*", lambda key: legacy_target(key, town), dry_run, progress)


def rename_town(
    old: str, new: str, dry_run: bool = False, progress: Progress | None = None
) -> Op[MigrationReport]:
    """Move every ``tt:<old>:...`` key to ``tt:<new>:...``."""
    old_prefix, new_prefix = (
        f"{PREFIX}:{validate_town_name(old)}:",
        f"{PREFIX}:{validate_town_name(new)}:",
    )
    return rename_keys(
        f"{old_prefix}*", lambda key: new_prefix + key[len(old_prefix) :], dry_run, progress
    )
