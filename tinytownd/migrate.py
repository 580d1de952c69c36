"""Changing keys in bulk, safely: ``tinytownd migrate`` and ``restore --rename-town``.

Each key moves with one RENAMENX: atomic, and never over an existing key (that
is reported as a conflict and left alone); on a Redis Cluster, where the old and new
names live in different slots, with :func:`move_across_slots`. ``migrate --state``
rewrites agent and task state between the hash and JSON forms, each key in one compare-and-swap.
Running either again finds nothing to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from redis.exceptions import ResponseError as RedisResponseError

from . import hashform
from .errors import StateError
from .keys import PREFIX, TownKeys, legacy_target, validate_town_name
from .ops import STATE_FORMS, decode_state, scan
from .records import Agent, Task
from .steps import OnNode, Op, Primaries

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
    """Rename every key matching ``pattern`` to ``target(key)`` (skipping None), on
    every primary of a cluster."""
    report = MigrationReport()
    nodes = yield Primaries()
    cluster = nodes != [None]
    for node in nodes:
        cursor: bytes | int = 0
        while True:
            cursor, keys = yield OnNode(node, ("SCAN", cursor, "MATCH", pattern, "COUNT", batch))
            report.scanned += len(keys)
            for key in keys:
                new = target(_text(key))
                if new is None:
                    continue
                pair = (_text(key), new)
                moved: bool | None
                if dry_run:
                    exists = yield ("EXISTS", _bytes(new))
                    moved = not exists
                elif cluster:
                    moved = yield from move_across_slots(key, _bytes(new))
                    if moved is None:
                        continue  # emptied or deleted since SCAN saw it
                else:
                    moved = yield ("RENAMENX", key, _bytes(new))
                (report.moved if moved else report.conflicts).append(pair)
            if progress is not None:
                progress(report)
            if int(cursor) == 0:
                break
    return report


#: Delete KEYS[1] only while it still holds the value DUMP gave (ARGV[1]): 1 deleted,
#: 0 gone already, -1 changed since.
_DELETE_IF_SAME = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('DUMP', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('DEL', KEYS[1])
return 1
"""


def move_across_slots(old: bytes, new: bytes, attempts: int = 10) -> Op[bool | None]:
    """Move ``old`` to ``new`` where one RENAMENX cannot: in a Redis Cluster the two
    names usually hash to different slots. True once moved; False for a conflict (a
    different ``new`` exists, or ``old`` kept changing); None when ``old`` vanished.

    DUMP, RESTORE (never over an existing key), then DEL of ``old`` only while it still
    holds what was copied. Nothing is ever lost: ``old`` goes only once ``new`` holds
    the same value. Nothing is duplicated: a key that changed, or vanished, while it
    moved has its copy taken back (only if the copy is still untouched) and is tried
    again. A run stopped between RESTORE and DEL is finished by the next run, which
    finds ``new`` holding exactly ``old``'s value.
    """
    for _ in range(attempts):
        payload = yield ("DUMP", old)
        if payload is None:
            return None  # gone since SCAN saw it
        ttl = yield ("PTTL", old)
        try:
            yield ("RESTORE", new, max(int(ttl), 0), payload)
        except RedisResponseError as err:
            if not str(err).startswith("BUSYKEY"):
                raise
            if (yield ("DUMP", new)) != payload:
                return False  # a different key by the new name: a conflict, left alone
        deleted = yield ("EVAL", _DELETE_IF_SAME, 1, old, payload)
        if deleted == 1:
            return True
        if (yield ("EVAL", _DELETE_IF_SAME, 1, new, payload)) == -1:
            return False  # the copy was written to meanwhile: keep both, report it
        if deleted == 0:
            return None  # ``old`` was emptied meanwhile (a popped inbox): nothing to move
    return False


def count_keys(town: str, batch: int = 1000) -> Op[int]:
    """How many ``tt:<town>:...`` keys there are (SCAN, never KEYS)."""
    return len((yield from scan(f"{PREFIX}:{town}:*", batch)))


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
        try:
            raw = yield ("HGETALL" if found == "hash" else "GET", name)
        except RedisResponseError as err:
            if not str(err).startswith("WRONGTYPE"):
                raise
            continue  # rewritten in the other form since TYPE answered: look again
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
