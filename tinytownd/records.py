"""Agent and task records: the state each agent and task keeps in Redis.

The JSON form is Rust tinytown 0.10's serde (and the documented String layout); the
hash form it stores them in is :mod:`tinytownd.hashform`. As with messages, unknown
fields are kept in ``extra`` and ids are canonical UUID text.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Self

from .errors import InvalidMessageError
from .wire import (
    Document,
    build,
    canonical_ids,
    choice,
    coerce_enums,
    count,
    extra,
    format_time,
    ident,
    new_id,
    now,
    opt_ident,
    opt_text,
    opt_time_field,
    parse_time,
    text,
    time_field,
)


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


@dataclass(frozen=True)
class Agent(Document):
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

    def __post_init__(self) -> None:
        coerce_enums(self, spawn_mode=SpawnMode, agent_type=AgentType, state=AgentState)
        canonical_ids(self, "id", "parent_agent_id")

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
        return build(
            cls,
            dict(
                id=ident(doc, "id"),
                name=text(doc, "name"),
                nickname=opt_text(doc, "nickname"),
                role_id=opt_text(doc, "role_id"),
                parent_agent_id=opt_ident(doc, "parent_agent_id"),
                spawn_mode=choice(doc, "spawn_mode", SpawnMode, SpawnMode.FRESH),
                agent_type=choice(doc, "agent_type", AgentType, AgentType.WORKER),
                state=choice(doc, "state", AgentState, AgentState.STARTING),
                cli=text(doc, "cli"),
                current_task=opt_text(doc, "current_task"),
                created_at=time_field(doc, "created_at"),
                last_heartbeat=time_field(doc, "last_heartbeat"),
                tasks_completed=count(doc, "tasks_completed"),
                rounds_completed=count(doc, "rounds_completed", 0),
                last_active_at=now()
                if last_active is None
                else parse_time(last_active, "last_active_at"),
                extra=extra(doc, _AGENT_KNOWN),
            ),
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
class Task(Document):
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

    def __post_init__(self) -> None:
        coerce_enums(self, state=TaskState)
        object.__setattr__(self, "tags", tuple(self.tags))
        canonical_ids(self, "id", "assigned_to", "parent_id")

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
        return build(
            cls,
            dict(
                id=ident(doc, "id"),
                description=text(doc, "description"),
                state=choice(
                    {"state": "running" if state == "in_flight" else state},
                    "state",
                    TaskState,
                    TaskState.PENDING,
                ),
                assigned_to=opt_ident(doc, "assigned_to"),
                created_at=time_field(doc, "created_at"),
                updated_at=time_field(doc, "updated_at"),
                started_at=opt_time_field(doc, "started_at"),
                completed_at=opt_time_field(doc, "completed_at"),
                result=opt_text(doc, "result"),
                parent_id=opt_ident(doc, "parent_id"),
                tags=tuple(tags),
                extra=extra(doc, _TASK_KNOWN),
            ),
        )


_AGENT_KNOWN = frozenset(f.name for f in Agent.__dataclass_fields__.values()) - {"extra"}
_TASK_KNOWN = frozenset(f.name for f in Task.__dataclass_fields__.values()) - {"extra"}
