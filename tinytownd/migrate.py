"""Changing keys in bulk, safely: ``tinytownd migrate`` and ``restore --rename-town``.

Each key moves with one RENAMENX: atomic, and never over an existing key (that
is reported as a conflict and left alone). ``migrate --state`` rewrites agent and
task state between the hash and JSON forms, each key in one compare-and-swap.
Running either again finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import hashform
from .errors import StateError
from .keys import PREFIX, TownKeys, legacy_target, validate_town_name
from .ops import STATE_FORMS, decode_state, scan
from .records import Agent, Task
from .steps import Op

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


def count_keys(town: str, batch: int = 1000) -> Op[int]:
    """How many ``tt:<town>:...`` keys there are (SCAN, never KEYS)."""
    count, cursor = 0, b"0"
    while True:
        cursor, keys = yield ("SCAN", cursor, "MATCH", f"{PREFIX}:{town}:*", "COUNT", batch)
        count += len(keys)
        if int(cursor) == 0:
            return count


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


# -- agent and task state: hash <-> JSON string ------------------------------------

#: Replace one state key with its other form, atomically, only if it still holds what
#: we read (compare-and-swap): an agent writing meanwhile is never overwritten.
_SWAP_SCRIPT = """
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
local current
if kind == 'string' then
  current = redis.call('GET', key)
elseif kind == 'hash' then
  local parts = {}
  for i, item in ipairs(redis.call('HGETALL', key)) do parts[i] = #item .. ':' .. item end
  current = table.concat(parts)
else
  return -1
end
if current ~= ARGV[1] then return 0 end
redis.call('DEL', key)
if ARGV[2] == 'json' then
  redis.call('SET', key, ARGV[3])
else
  redis.call('HSET', key, unpack(ARGV, 3))
end
return 1
"""
_FORM_TYPE = {"hash": "hash", "json": "string"}


@dataclass
class ConversionReport:
    scanned: int = 0
    converted: list[str] = field(default_factory=list)
    already: int = 0
    problems: list[str] = field(default_factory=list)


def _fingerprint(raw: bytes | dict[bytes, bytes]) -> bytes:
    """What the swap script compares: a string as is, a hash as length-prefixed items."""
    if isinstance(raw, bytes):
        return raw
    return b"".join(b"%d:%s" % (len(item), item) for pair in raw.items() for item in pair)


def convert_state(
    keys: TownKeys, form: str, dry_run: bool = False, progress: Progress | None = None
) -> Op[ConversionReport]:
    """Rewrite every agent and task key of the town in ``form`` (``hash`` or ``json``).

    Each key changes in one server-side step, only if it still holds what was read, so
    agents may keep running; a key written meanwhile is read again. Idempotent.
    """
    if form not in STATE_FORMS:
        raise ValueError(f"form must be one of {', '.join(STATE_FORMS)}")
    report = ConversionReport()
    for kind in (Agent, Task):
        names = yield from scan(keys.pattern(kind.__name__.lower()))
        report.scanned += len(names)
        for name in names:
            yield from _convert_one(_text(name), kind, form, dry_run, report)
        if progress is not None:
            progress(MigrationReport(scanned=report.scanned))
    return report


def _convert_one(
    name: str, kind: type[Agent] | type[Task], form: str, dry_run: bool, report: ConversionReport
) -> Op[None]:
    for _ in range(10):
        reply = yield ("TYPE", name)
        found = reply.decode() if isinstance(reply, bytes) else str(reply)
        if found == "none":
            return  # deleted meanwhile
        if found == _FORM_TYPE[form]:
            report.already += 1
            return
        if found not in _FORM_TYPE.values():
            report.problems.append(f"{name}: a Redis {found}, not an agent or task")
            return
        raw = yield ("HGETALL" if found == "hash" else "GET", name)
        if not raw:
            continue
        try:
            document: Agent | Task = (
                decode_state(name, raw, Agent) if kind is Agent else decode_state(name, raw, Task)
            )
        except StateError as err:
            report.problems.append(str(err))
            return
        if dry_run:
            report.converted.append(name)
            return
        if form == "json":
            value = [document.to_json()]
        else:
            fields, _ = hashform.fields_of(document)
            value = [part for pair in fields.items() for part in pair]
        swapped = yield ("EVAL", _SWAP_SCRIPT, 1, name, _fingerprint(raw), form, *value)
        if swapped == 1:
            report.converted.append(name)
            return
    report.problems.append(f"{name}: changed on every attempt; run migrate again")
