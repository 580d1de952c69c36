"""``tinytownd migrate``: move pre-0.9 keys (``tt:agent:<id>``...) under ``tt:<town>:``.

Each key moves with one RENAMENX: atomic, and never over an existing key (that
is reported as a conflict and left alone). Running it again finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .keys import PREFIX, legacy_target, validate_town_name
from .ops import Op


@dataclass
class MigrationReport:
    scanned: int = 0
    moved: list[tuple[str, str]] = field(default_factory=list)
    conflicts: list[tuple[str, str]] = field(default_factory=list)


def _text(key: bytes) -> str:
    return key.decode("utf-8", "surrogateescape")


def migrate(
    town: str,
    dry_run: bool = False,
    progress: Callable[[MigrationReport], None] | None = None,
    batch: int = 1000,
) -> Op[MigrationReport]:
    """Rename every legacy key of the keyspace into ``town`` (or only report, ``dry_run``)."""
    validate_town_name(town)
    report = MigrationReport()
    cursor: bytes | int = 0
    while True:
        cursor, keys = yield ("SCAN", cursor, "MATCH", f"{PREFIX}:*", "COUNT", batch)
        report.scanned += len(keys)
        for key in keys:
            target = legacy_target(_text(key), town)
            if target is None:
                continue
            pair = (_text(key), target)
            if dry_run:
                exists = yield ("EXISTS", target.encode("utf-8", "surrogateescape"))
                (report.conflicts if exists else report.moved).append(pair)
            else:
                renamed = yield ("RENAMENX", key, target.encode("utf-8", "surrogateescape"))
                (report.moved if renamed else report.conflicts).append(pair)
        if progress is not None:
            progress(report)
        if int(cursor) == 0:
            return report
