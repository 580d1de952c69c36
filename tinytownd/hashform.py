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
from typing import Any

from .errors import InvalidMessageError
from .records import Agent, AgentState, AgentType, SpawnMode, Task, TaskState
from .wire import dumps, now, parse_time

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


def hash_time(moment: datetime) -> str:
    """``2026-11-24T16:00:00.5+00:00`` as chrono writes it: fraction digits as needed."""
    moment = moment.astimezone(UTC)
    base = moment.strftime("%Y-%m-%dT%H:%M:%S")
    micros = moment.microsecond
    if micros == 0:
        fraction = ""
    elif micros % 1000 == 0:
        fraction = f".{micros // 1000:03d}"
    else:
        fraction = f".{micros:06d}"
    return f"{base}{fraction}+00:00"


def fields_of(document: Agent | Task) -> tuple[dict[str, str], list[str]]:
    """``(fields to HSET, optional fields to HDEL)`` for one agent or task."""
    always, optional = (
        (AGENT_FIELDS, AGENT_OPTIONAL)
        if isinstance(document, Agent)
        else (TASK_FIELDS, TASK_OPTIONAL)
    )
    doc = document.to_dict()
    values: dict[str, str] = {}
    absent: list[str] = []
    for name in (*always, *optional):
        value = doc.pop(name)
        if value is None:
            absent.append(name)
        else:
            values[name] = _text(name, getattr(document, name), value)
    for name, value in doc.items():  # fields a newer peer wrote: kept, as text
        if value is not None:
            values[name] = value if isinstance(value, str) else dumps(value)
    return values, absent


def _text(name: str, attribute: Any, value: Any) -> str:
    if name in _TIMES:
        return hash_time(attribute)
    if name == "tags":
        return dumps(list(value))
    return value if isinstance(value, str) else str(value)


def document_of(raw: Mapping[Any, Any], kind: type[Agent] | type[Task]) -> Any:
    """The agent or task in a hash read with HGETALL; raise :class:`InvalidMessageError`
    when its ``id`` is missing or not a UUID (everything else falls back to defaults)."""
    doc: dict[str, Any] = {
        key.decode() if isinstance(key, bytes) else key: value.decode()
        if isinstance(value, bytes)
        else value
        for key, value in raw.items()
    }
    if "id" not in doc:
        raise InvalidMessageError("no id field")
    # Timestamps stay datetimes from here on (from_dict takes them as they are): each
    # is parsed once, never formatted and parsed again.
    created = _time(doc, "created_at", None)
    for name in _TIMES & doc.keys():
        doc[name] = created if name == "created_at" else _time(doc, name, created)
    for name in _COUNTERS & doc.keys():
        text = doc[name]
        doc[name] = int(text) if text.isdigit() and int(text) <= _MAX_COUNTER else 0
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
