"""Agent and task state the way tinytown 0.10 stores it: one Redis hash per object.

Every value is text: ids and enum words as they are, counters in decimal, tags as
compact JSON, timestamps as RFC 3339 with ``+00:00`` and 0, 3, 6 or 9 fraction
digits (what chrono's ``to_rfc3339`` writes). A null is a missing field, never an
empty string. Reading is as lenient as upstream's: only ``id`` must parse; an
unknown enum word becomes the default, a bad timestamp now, a bad counter 0, bad
tags ``[]``. The JSON documents of :mod:`tinytownd.records` stay the in-between
form, so both layouts share one set of checks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from .errors import InvalidMessageError
from .records import Agent, AgentState, AgentType, SpawnMode, Task, TaskState
from .wire import build, dumps, is_canonical_id, now, parse_time, quick_load

#: Written on every save, in upstream's order.
AGENT_FIELDS = (
    "id",
    "name",
    "agent_type",
    "state",
    "cli",
    "created_at",
    "last_heartbeat",
    "tasks_completed",
    "rounds_completed",
    "last_active_at",
    "spawn_mode",
)
#: Written only when they have a value; removed (HDEL) when they have none.
AGENT_OPTIONAL = ("current_task", "nickname", "role_id", "parent_agent_id")
TASK_FIELDS = ("id", "description", "state", "created_at", "updated_at", "tags")
TASK_OPTIONAL = ("assigned_to", "started_at", "completed_at", "result", "parent_id")

_TIMES = frozenset(
    {"created_at", "last_heartbeat", "last_active_at", "updated_at", "started_at", "completed_at"}
)
_COUNTERS = frozenset({"tasks_completed", "rounds_completed"})
_ENUMS: dict[str, tuple[type[Any], str]] = {
    "agent_type": (AgentType, AgentType.WORKER.value),
    "spawn_mode": (SpawnMode, SpawnMode.FRESH.value),
    "task_state": (TaskState, TaskState.PENDING.value),
    "agent_state": (AgentState, AgentState.STARTING.value),
}
_MAX_COUNTER = 2**64 - 1
_MAX_COUNTER_DIGITS = len(str(_MAX_COUNTER))


def hash_time(moment: datetime) -> str:
    """``2026-11-24T16:00:00.5+00:00`` as chrono writes it: fraction digits as needed."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    micros = moment.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    # %-formatting, not strftime: three times cheaper, and on every state write.
    return "%04d-%02d-%02dT%02d:%02d:%02d%s+00:00" % (  # noqa: UP031
        moment.year,
        moment.month,
        moment.day,
        moment.hour,
        moment.minute,
        moment.second,
        fraction,
    )


def fields_of(document: Agent | Task) -> tuple[dict[str, str], list[str]]:
    """``(fields to HSET, optional fields to HDEL)`` for one agent or task, in upstream's
    order (:data:`AGENT_FIELDS`, then :data:`AGENT_OPTIONAL`; the same for tasks)."""
    if isinstance(document, Agent):
        values = {
            "id": document.id,
            "name": document.name,
            "agent_type": document.agent_type.value,
            "state": document.state.value,
            "cli": document.cli,
            "created_at": hash_time(document.created_at),
            "last_heartbeat": hash_time(document.last_heartbeat),
            "tasks_completed": str(document.tasks_completed),
            "rounds_completed": str(document.rounds_completed),
            "last_active_at": hash_time(document.last_active_at),
            "spawn_mode": document.spawn_mode.value,
        }
        optional = {
            "current_task": document.current_task,
            "nickname": document.nickname,
            "role_id": document.role_id,
            "parent_agent_id": document.parent_agent_id,
        }
    else:
        started, completed = document.started_at, document.completed_at
        values = {
            "id": document.id,
            "description": document.description,
            "state": document.state.value,
            "created_at": hash_time(document.created_at),
            "updated_at": hash_time(document.updated_at),
            "tags": dumps(list(document.tags)),
        }
        optional = {
            "assigned_to": document.assigned_to,
            "started_at": None if started is None else hash_time(started),
            "completed_at": None if completed is None else hash_time(completed),
            "result": document.result,
            "parent_id": document.parent_id,
        }
    absent: list[str] = []
    for name, value in optional.items():
        if value is None:
            absent.append(name)
        else:
            values[name] = value
    for name, value in document.extra.items():  # fields a newer peer wrote: kept, as text
        if value is not None and name not in values and name not in optional:
            values[name] = value if isinstance(value, str) else dumps(value)
    return values, absent


def document_of(raw: Mapping[Any, Any], kind: type[Agent] | type[Task]) -> Any:
    """The agent or task in a hash read with HGETALL; raise :class:`InvalidMessageError`
    when its ``id`` is missing or not a UUID (everything else falls back to defaults)."""
    usual = quick_document_of(raw, kind)
    return usual if usual is not None else lenient_document_of(raw, kind)


def quick_document_of(raw: Mapping[Any, Any], kind: type[Agent] | type[Task]) -> Any:
    """The agent or task in ``raw`` if the hash is as upstream writes it (every field
    there and valid, nothing unknown), read in one pass; None to leave it to
    :func:`lenient_document_of`, which reads anything else or says why it cannot."""
    try:
        return _usual_agent(raw) if kind is Agent else _usual_task(raw)
    except (TypeError, AttributeError, ValueError):  # not bytes, not UTF-8, not canonical
        return None


def lenient_document_of(raw: Mapping[Any, Any], kind: type[Agent] | type[Task]) -> Any:
    """:func:`document_of` without its quick path, which must agree with this."""
    doc: dict[str, Any] = {
        key.decode() if isinstance(key, bytes) else key: value.decode()
        if isinstance(value, bytes)
        else value
        for key, value in raw.items()
    }
    return _lenient(doc, kind)


def _lenient(doc: dict[str, Any], kind: type[Agent] | type[Task]) -> Any:
    if "id" not in doc:
        raise InvalidMessageError("no id field")
    # Timestamps stay datetimes from here on (from_dict takes them as they are): each
    # is parsed once, never formatted and parsed again.
    created = _time(doc, "created_at", None)
    for name in _TIMES & doc.keys():
        doc[name] = created if name == "created_at" else _time(doc, name, created)
    for name in _COUNTERS & doc.keys():
        doc[name] = _counter(doc[name])
    doc.setdefault("created_at", created)
    if kind is Agent:
        _enum(doc, "agent_type")
        _enum(doc, "spawn_mode")
        _enum(doc, "state", "agent_state")
        doc.setdefault("name", "")
        doc.setdefault("cli", "")
        if "last_heartbeat" not in doc:
            doc["last_heartbeat"] = now()
        doc.setdefault("tasks_completed", 0)
        doc.setdefault("last_active_at", doc["created_at"])
    else:
        if doc.get("state") != "in_flight":
            _enum(doc, "state", "task_state")
        doc["tags"] = _tags(doc.get("tags"))
        doc.setdefault("description", "")
        if "updated_at" not in doc:
            doc["updated_at"] = now()
    return kind.from_dict(doc)


def _counter(text: str) -> int:
    """``text`` as upstream reads a u64 counter (ASCII digits only), 0 if it is not one."""
    if not (text.isascii() and text.isdigit()):
        return 0
    digits = text.lstrip("0")  # int() refuses past 4300 digits, leading zeros too
    if len(digits) > _MAX_COUNTER_DIGITS:
        return 0
    count = int(digits or "0")
    return count if count <= _MAX_COUNTER else 0


# The quick path. Reads happen on every state get and listing, and the lenient reader
# above decodes every field into a dict and then calls a checking helper per field. A
# hash as upstream writes it (every field there and valid, nothing unknown) is read here
# in one pass from Redis's bytes instead. Anything else gives None and the lenient
# reader decides, so the two cannot disagree on it (tests/test_models.py checks both).


def _names(*groups: tuple[str, ...]) -> frozenset[bytes]:
    return frozenset(name.encode() for group in groups for name in group)


def _words(kind: type[StrEnum]) -> dict[bytes, Any]:
    return {member.value.encode(): member for member in kind}


_AGENT_ALWAYS, _AGENT_ALL = _names(AGENT_FIELDS), _names(AGENT_FIELDS, AGENT_OPTIONAL)
_TASK_ALWAYS, _TASK_ALL = _names(TASK_FIELDS), _names(TASK_FIELDS, TASK_OPTIONAL)
_SPAWN_MODES, _AGENT_TYPES = _words(SpawnMode), _words(AgentType)
_AGENT_STATES, _TASK_STATES = _words(AgentState), _words(TaskState)


def _usual_time(raw: bytes) -> datetime | None:
    """The moment in ``raw`` if it is RFC 3339 in UTC, as upstream writes it."""
    if len(raw) < 20 or raw[10] not in b"Tt ":
        return None
    moment = datetime.fromisoformat(raw.decode())  # ValueError: the long way
    return moment if moment.tzinfo is UTC else None


def _usual_count(raw: bytes) -> int | None:
    if len(raw) > _MAX_COUNTER_DIGITS or not raw.isdigit():  # bytes: ASCII digits only
        return None
    count = int(raw)
    return count if count <= _MAX_COUNTER else None


def _usual_id(raw: bytes | None) -> str | None:
    """``raw`` as text if it is a canonical UUID (None: absent); ValueError if not."""
    if raw is None:
        return None
    text = raw.decode()
    if not is_canonical_id(text):
        raise ValueError(text)  # the long way canonicalizes it, or says why it cannot
    return text


def _optional_text(raw: bytes | None) -> str | None:
    return None if raw is None else raw.decode()


def _usual_agent(raw: Mapping[Any, Any]) -> Agent | None:
    if not _AGENT_ALWAYS <= raw.keys() <= _AGENT_ALL:
        return None
    get = raw.get
    values = {
        "id": _usual_id(raw[b"id"]),
        "name": raw[b"name"].decode(),
        "nickname": _optional_text(get(b"nickname")),
        "role_id": _optional_text(get(b"role_id")),
        "parent_agent_id": _usual_id(get(b"parent_agent_id")),
        "spawn_mode": _SPAWN_MODES.get(raw[b"spawn_mode"]),
        "agent_type": _AGENT_TYPES.get(raw[b"agent_type"]),
        "state": _AGENT_STATES.get(raw[b"state"]),
        "cli": raw[b"cli"].decode(),
        "current_task": _optional_text(get(b"current_task")),
        "created_at": _usual_time(raw[b"created_at"]),
        "last_heartbeat": _usual_time(raw[b"last_heartbeat"]),
        "tasks_completed": _usual_count(raw[b"tasks_completed"]),
        "rounds_completed": _usual_count(raw[b"rounds_completed"]),
        "last_active_at": _usual_time(raw[b"last_active_at"]),
        "extra": {},
    }
    if None in (
        values["spawn_mode"],
        values["agent_type"],
        values["state"],
        values["created_at"],
        values["last_heartbeat"],
        values["tasks_completed"],
        values["rounds_completed"],
        values["last_active_at"],
    ):
        return None
    return build(Agent, values)


def _usual_task(raw: Mapping[Any, Any]) -> Task | None:
    if not _TASK_ALWAYS <= raw.keys() <= _TASK_ALL:
        return None
    get = raw.get
    tags = quick_load(raw[b"tags"])
    started, completed = get(b"started_at"), get(b"completed_at")
    values = {
        "id": _usual_id(raw[b"id"]),
        "description": raw[b"description"].decode(),
        "state": _TASK_STATES.get(raw[b"state"]),
        "assigned_to": _usual_id(get(b"assigned_to")),
        "created_at": _usual_time(raw[b"created_at"]),
        "updated_at": _usual_time(raw[b"updated_at"]),
        "started_at": None if started is None else _usual_time(started),
        "completed_at": None if completed is None else _usual_time(completed),
        "result": _optional_text(get(b"result")),
        "parent_id": _usual_id(get(b"parent_id")),
        "tags": tags,
        "extra": {},
    }
    if (
        values["state"] is None
        or values["created_at"] is None
        or values["updated_at"] is None
        or (started is not None and values["started_at"] is None)
        or (completed is not None and values["completed_at"] is None)
        or type(tags) is not list
        or not all(type(tag) is str for tag in tags)
    ):
        return None
    values["tags"] = tuple(tags)
    return build(Task, values)


def _time(doc: Mapping[str, Any], name: str, fallback: datetime | None) -> datetime:
    try:
        return parse_time(doc.get(name), name)
    except InvalidMessageError:
        return fallback or now()


def _enum(doc: dict[str, Any], name: str, kind: str | None = None) -> None:
    enum, default = _ENUMS[kind or name]
    if doc.get(name) not in enum._value2member_map_:
        doc[name] = default


def _tags(text: Any) -> list[str]:
    try:
        tags = json.loads(text) if isinstance(text, str) else []
    except ValueError:
        return []
    return tags if isinstance(tags, list) and all(isinstance(t, str) for t in tags) else []
