"""Messages, agents and tasks, and their JSON wire format (Rust tinytown 0.10's serde).

Reading is strict about what the format requires and lenient where peers differ
(timestamp precision and offsets, missing optional fields). Unknown fields from
newer peers are kept in ``extra`` and written back, so a read-modify-write by
us loses nothing. Ids are kept as canonical lowercase UUID text: that is what
goes on the wire, and it spares a parse and a format per id.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Self, TypeVar

from .errors import InvalidMessageError

_UUID_TEXT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

Id = str | uuid.UUID
E = TypeVar("E", bound=StrEnum)


def new_id() -> str:
    return str(uuid.uuid4())


def canonical_id(value: Id, what: str = "id") -> str:
    """Lowercase hyphenated UUID text for a ``uuid.UUID`` or any UUID string."""
    if isinstance(value, str) and _UUID_TEXT.fullmatch(value):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    try:
        return str(uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidMessageError(f"{what}: {value!r} is not a UUID") from None


def now() -> datetime:
    return datetime.now(UTC)


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, as peers expect."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: Any, what: str) -> datetime:
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        raise InvalidMessageError(f"{what}: {text!r} is not an RFC 3339 timestamp")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidMessageError(f"{what}: {text!r} is not an RFC 3339 timestamp") from None
    if moment.tzinfo is None:
        raise InvalidMessageError(f"{what}: {text!r} has no UTC offset")
    return moment.astimezone(UTC)


# -- reading helpers: each takes the document and a key, and names both in errors --


def _required(doc: Mapping[str, Any], key: str) -> Any:
    try:
        return doc[key]
    except KeyError:
        raise InvalidMessageError(f"missing field {key!r}") from None


def _str(doc: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = doc.get(key, default) if default is not None else _required(doc, key)
    if not isinstance(value, str):
        raise InvalidMessageError(f"{key}: expected a string, got {value!r:.60}")
    return value


def _opt_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidMessageError(f"{key}: expected a string or null, got {value!r:.60}")
    return value


def _id(doc: Mapping[str, Any], key: str) -> str:
    return canonical_id(_required(doc, key), key)


def _opt_id(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    return None if value is None else canonical_id(value, key)


def _time(doc: Mapping[str, Any], key: str) -> datetime:
    return parse_time(_required(doc, key), key)


def _opt_time(doc: Mapping[str, Any], key: str) -> datetime | None:
    value = doc.get(key)
    return None if value is None else parse_time(value, key)


def _count(doc: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = doc.get(key, default) if default is not None else _required(doc, key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidMessageError(f"{key}: expected an integer >= 0, got {value!r:.60}")
    return value


def _enum(doc: Mapping[str, Any], key: str, kind: type[E], default: E) -> E:
    value = doc.get(key, default)
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(kind)
        raise InvalidMessageError(f"{key}: {value!r:.60} is not one of {allowed}") from None


def _load(text: str | bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise InvalidMessageError(f"{what} is not JSON text: {err}") from None
    if not isinstance(doc, dict):
        raise InvalidMessageError(f"{what} is JSON but not an object")
    return doc


def _extra(doc: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in doc.items() if key not in known}


# -- messages ---------------------------------------------------------------


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    @property
    def jumps_queue(self) -> bool:
        """Urgent and high go to the front of the inbox (LPUSH), the rest to the back."""
        return self in (Priority.HIGH, Priority.URGENT)


ACK_TYPES = frozenset({"received", "acknowledged", "thanks", "approved", "rejected"})

#: Each message type's own fields, in wire order; ``None`` marks a nullable string.
MESSAGE_TYPES: dict[str, tuple[tuple[str, type | None], ...]] = {
    "task": (("description", str),),
    "query": (("question", str),),
    "informational": (("summary", str),),
    "confirmation": (("ack_type", dict),),
    "task_assign": (("task_id", str),),
    "task_done": (("task_id", str), ("result", str)),
    "task_failed": (("task_id", str), ("error", str)),
    "status_request": (),
    "status_response": (("state", str), ("current_task", None)),
    "ping": (),
    "pong": (),
    "shutdown": (),
    "custom": (("kind", str), ("payload", str)),
}
ACTIONABLE = frozenset(
    {"task", "query", "task_assign", "status_request", "ping", "shutdown", "custom"}
)
_MESSAGE_KNOWN = frozenset({"id", "from", "to", "type", "priority", "created_at", "correlation_id"})


def _check_ack(ack: Any) -> dict[str, Any]:
    if not isinstance(ack, dict) or ack.get("type") not in ACK_TYPES:
        raise InvalidMessageError(f"ack_type: expected {{'type': one of {sorted(ACK_TYPES)}}}")
    if ack["type"] == "rejected" and not isinstance(ack.get("reason"), str):
        raise InvalidMessageError("ack_type: a rejection needs a string 'reason'")
    return ack


def _body(kind: str, doc: Mapping[str, Any]) -> dict[str, Any]:
    try:
        spec = MESSAGE_TYPES[kind]
    except (KeyError, TypeError):
        raise InvalidMessageError(f"unknown message type {kind!r:.60}") from None
    body: dict[str, Any] = {}
    for name, expected in spec:
        if expected is None:
            body[name] = _opt_str(doc, name)
        elif expected is dict:
            body[name] = _check_ack(_required(doc, name))
        else:
            body[name] = _str(doc, name)
    return body


@dataclass(frozen=True, slots=True)
class Message:
    """One message between agents. Build it with a constructor such as :meth:`task`.

    ``body`` holds the fields of its ``type`` (``description`` for a task, ...);
    ``extra`` holds fields this version does not know, kept for round trips.
    """

    sender: str
    to: str
    type: str
    body: dict[str, Any] = field(default_factory=dict)
    priority: Priority = Priority.NORMAL
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=now)
    correlation_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        message_type: str,
        sender: Id,
        to: Id,
        /,
        priority: Priority | str = Priority.NORMAL,
        correlation_id: Id | None = None,
        **fields: Any,
    ) -> Message:
        """A new message of ``message_type``; ``fields`` are checked against that type."""
        return cls(
            sender=canonical_id(sender, "from"),
            to=canonical_id(to, "to"),
            type=message_type,
            body=_body(message_type, fields),
            priority=Priority(priority),
            correlation_id=None if correlation_id is None else canonical_id(correlation_id),
        )

    # One constructor per message type, so nobody writes JSON by hand.
    @classmethod
    def task(cls, sender: Id, to: Id, description: str, **kw: Any) -> Message:
        return cls.create("task", sender, to, description=description, **kw)

    @classmethod
    def query(cls, sender: Id, to: Id, question: str, **kw: Any) -> Message:
        return cls.create("query", sender, to, question=question, **kw)

    @classmethod
    def informational(cls, sender: Id, to: Id, summary: str, **kw: Any) -> Message:
        return cls.create("informational", sender, to, summary=summary, **kw)

    @classmethod
    def confirmation(
        cls, sender: Id, to: Id, ack: str, reason: str | None = None, **kw: Any
    ) -> Message:
        ack_type = {"type": ack} if reason is None else {"type": ack, "reason": reason}
        return cls.create("confirmation", sender, to, ack_type=ack_type, **kw)

    @classmethod
    def task_assign(cls, sender: Id, to: Id, task_id: Id, **kw: Any) -> Message:
        return cls.create("task_assign", sender, to, task_id=str(task_id), **kw)

    @classmethod
    def task_done(cls, sender: Id, to: Id, task_id: Id, result: str, **kw: Any) -> Message:
        return cls.create("task_done", sender, to, task_id=str(task_id), result=result, **kw)

    @classmethod
    def task_failed(cls, sender: Id, to: Id, task_id: Id, error: str, **kw: Any) -> Message:
        return cls.create("task_failed", sender, to, task_id=str(task_id), error=error, **kw)

    @classmethod
    def status_request(cls, sender: Id, to: Id, **kw: Any) -> Message:
        return cls.create("status_request", sender, to, **kw)

    @classmethod
    def status_response(
        cls, sender: Id, to: Id, state: str, current_task: Id | None = None, **kw: Any
    ) -> Message:
        task = None if current_task is None else str(current_task)
        return cls.create("status_response", sender, to, state=state, current_task=task, **kw)

    @classmethod
    def ping(cls, sender: Id, to: Id, **kw: Any) -> Message:
        return cls.create("ping", sender, to, **kw)

    @classmethod
    def pong(cls, sender: Id, to: Id, **kw: Any) -> Message:
        return cls.create("pong", sender, to, **kw)

    @classmethod
    def shutdown(cls, sender: Id, to: Id, **kw: Any) -> Message:
        return cls.create("shutdown", sender, to, **kw)

    @classmethod
    def custom(cls, sender: Id, to: Id, kind: str, payload: str, **kw: Any) -> Message:
        return cls.create("custom", sender, to, kind=kind, payload=payload, **kw)

    def reply(self, message_type: str, **fields: Any) -> Message:
        """A message back to the sender, correlated with this one."""
        return Message.create(message_type, self.to, self.sender, correlation_id=self.id, **fields)

    @property
    def is_actionable(self) -> bool:
        return self.type in ACTIONABLE

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"id": self.id, "from": self.sender, "to": self.to, "type": self.type}
        doc.update(self.body)
        doc["priority"] = self.priority.value
        doc["created_at"] = format_time(self.created_at)
        doc["correlation_id"] = self.correlation_id
        if self.extra:
            doc.update(self.extra)
        return doc

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Message:
        kind = _required(doc, "type")
        body = _body(kind, doc)
        known = _MESSAGE_KNOWN.union(name for name, _ in MESSAGE_TYPES[kind])
        return cls(
            id=_id(doc, "id"),
            sender=_id(doc, "from"),
            to=_id(doc, "to"),
            type=kind,
            body=body,
            priority=_enum(doc, "priority", Priority, Priority.NORMAL),
            created_at=_time(doc, "created_at"),
            correlation_id=_opt_id(doc, "correlation_id"),
            extra=_extra(doc, known),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Message:
        """Parse one message; raise :class:`InvalidMessageError` saying what is wrong."""
        return cls.from_dict(_load(text, "message"))


# -- agents and tasks -----------------------------------------------------------


class AgentState(StrEnum):
    COLD = "cold"
    STARTING = "starting"
    IDLE = "idle"
    WORKING = "working"
    PAUSED = "paused"
    DRAINING = "draining"
    STOPPED = "stopped"
    ERROR = "error"


class AgentType(StrEnum):
    SUPERVISOR = "supervisor"
    WORKER = "worker"


class SpawnMode(StrEnum):
    FRESH = "fresh"
    FORKED_CONTEXT = "forkedcontext"
    RESUMED = "resumed"


class _Document:
    """JSON text in and out for the state models."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return _dumps(self.to_dict())

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        raise NotImplementedError

    @classmethod
    def from_json(cls, text: str | bytes) -> Self:
        return cls.from_dict(_load(text, cls.__name__.lower()))

    def evolve(self, **changes: Any) -> Self:
        """A copy with some fields changed (the models are immutable)."""
        return replace(self, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class Agent(_Document):
    """An agent's state, stored at ``tt:<town>:agent:<id>``."""

    name: str
    cli: str
    id: str = field(default_factory=new_id)
    nickname: str | None = None
    role_id: str | None = None
    parent_agent_id: str | None = None
    spawn_mode: SpawnMode = SpawnMode.FRESH
    agent_type: AgentType = AgentType.WORKER
    state: AgentState = AgentState.STARTING
    current_task: str | None = None
    created_at: datetime = field(default_factory=now)
    last_heartbeat: datetime = field(default_factory=now)
    tasks_completed: int = 0
    rounds_completed: int = 0
    last_active_at: datetime = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "nickname": self.nickname,
            "role_id": self.role_id,
            "parent_agent_id": self.parent_agent_id,
            "spawn_mode": self.spawn_mode.value,
            "agent_type": self.agent_type.value,
            "state": self.state.value,
            "cli": self.cli,
            "current_task": self.current_task,
            "created_at": format_time(self.created_at),
            "last_heartbeat": format_time(self.last_heartbeat),
            "tasks_completed": self.tasks_completed,
            "rounds_completed": self.rounds_completed,
            "last_active_at": format_time(self.last_active_at),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        last_active = doc.get("last_active_at")
        return cls(
            id=_id(doc, "id"),
            name=_str(doc, "name"),
            nickname=_opt_str(doc, "nickname"),
            role_id=_opt_str(doc, "role_id"),
            parent_agent_id=_opt_id(doc, "parent_agent_id"),
            spawn_mode=_enum(doc, "spawn_mode", SpawnMode, SpawnMode.FRESH),
            agent_type=_enum(doc, "agent_type", AgentType, AgentType.WORKER),
            state=_enum(doc, "state", AgentState, AgentState.STARTING),
            cli=_str(doc, "cli"),
            current_task=_opt_str(doc, "current_task"),
            created_at=_time(doc, "created_at"),
            last_heartbeat=_time(doc, "last_heartbeat"),
            tasks_completed=_count(doc, "tasks_completed"),
            rounds_completed=_count(doc, "rounds_completed", 0),
            last_active_at=now()
            if last_active is None
            else parse_time(last_active, "last_active_at"),
            extra=_extra(doc, _AGENT_KNOWN),
        )


class TaskState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED)


@dataclass(frozen=True)
class Task(_Document):
    """A task's state, stored at ``tt:<town>:task:<id>``."""

    description: str
    id: str = field(default_factory=new_id)
    state: TaskState = TaskState.PENDING
    assigned_to: str | None = None
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: str | None = None
    parent_id: str | None = None
    tags: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "description": self.description,
            "state": self.state.value,
            "assigned_to": self.assigned_to,
            "created_at": format_time(self.created_at),
            "updated_at": format_time(self.updated_at),
            "started_at": None if self.started_at is None else format_time(self.started_at),
            "completed_at": None if self.completed_at is None else format_time(self.completed_at),
            "result": self.result,
            "parent_id": self.parent_id,
            "tags": list(self.tags),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Self:
        tags = doc.get("tags") or []
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise InvalidMessageError(f"tags: expected a list of strings, got {tags!r:.60}")
        state = doc.get("state", "pending")
        return cls(
            id=_id(doc, "id"),
            description=_str(doc, "description"),
            state=_enum(
                {"state": "running" if state == "in_flight" else state},
                "state",
                TaskState,
                TaskState.PENDING,
            ),
            assigned_to=_opt_id(doc, "assigned_to"),
            created_at=_time(doc, "created_at"),
            updated_at=_time(doc, "updated_at"),
            started_at=_opt_time(doc, "started_at"),
            completed_at=_opt_time(doc, "completed_at"),
            result=_opt_str(doc, "result"),
            parent_id=_opt_id(doc, "parent_id"),
            tags=tuple(tags),
            extra=_extra(doc, _TASK_KNOWN),
        )


_AGENT_KNOWN = frozenset(f.name for f in Agent.__dataclass_fields__.values()) - {"extra"}
_TASK_KNOWN = frozenset(f.name for f in Task.__dataclass_fields__.values()) - {"extra"}
