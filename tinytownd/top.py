"""``tinytownd top``: one town at a glance, refreshed in place.

The view is built from plain data (:func:`snapshot`), so ``--once --json`` and the
screen show the same numbers; the screen is plain text redrawn with two ANSI codes
(home, clear), which every terminal and SSH session understands.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import ops
from .channel import Channel
from .records import Agent

#: Commands counted as messages in (sends) and out (receives), from INFO commandstats.
_SENDS = ("rpush", "lpush")
_RECEIVES = ("blpop", "lpop", "blmove", "lmove", "evalsha", "eval")


@dataclass
class AgentRow:
    name: str
    id: str
    state: str
    heartbeat_age_s: float
    inbox: int
    urgent: int
    processing: int
    dead: int


@dataclass
class Snapshot:
    town: str
    taken_at: float
    agents: list[AgentRow]
    problems: list[str]
    memory_mb: float
    clients: int
    persistence: dict[str, Any]
    commands: dict[str, int] = field(default_factory=dict)  # calls so far, for rates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def snapshot(channel: Channel) -> Snapshot:
    """Everything the view shows, read in a few round trips (per primary on a cluster)."""
    listing = channel.agents_listing()
    agents = sorted(listing.items, key=lambda a: (a.name, a.id))
    keys = channel.keys
    lengths = channel.run(ops.queue_lengths(keys, [agent.id for agent in agents]))
    servers = channel.info()
    stats = channel.info("commandstats")
    now = datetime.now(UTC)
    rows = [_row(agent, counts, now) for agent, counts in zip(agents, lengths, strict=True)]
    first = servers[0]

    def total(field: str) -> int:
        return sum(int(info.get(field, 0)) for info in servers)

    return Snapshot(
        town=keys.town,
        taken_at=time.time(),
        agents=rows,
        problems=listing.problems,
        memory_mb=total("used_memory_rss") / 2**20,
        clients=total("connected_clients"),
        persistence={
            "rdb_changes_since_last_save": total("rdb_changes_since_last_save"),
            "rdb_last_bgsave_status": _worst(servers, "rdb_last_bgsave_status"),
            "aof_enabled": bool(first.get("aof_enabled")),
            "aof_last_write_status": _worst(servers, "aof_last_write_status"),
        },
        commands={
            name: sum(int(info.get(f"cmdstat_{name}", {}).get("calls", 0)) for info in stats)
            for name in (*_SENDS, *_RECEIVES)
        },
    )


def _worst(servers: list[dict[str, Any]], field: str) -> Any:
    """One server's status for all: the first that is not ``ok``, else ``ok``."""
    found = [info.get(field) for info in servers]
    return next((status for status in found if status != "ok"), found[0])


def _row(agent: Agent, lengths: tuple[int, int, int, int], now: datetime) -> AgentRow:
    inbox, urgent, processing, dead = lengths
    return AgentRow(
        name=agent.name,
        id=agent.id,
        state=str(agent.state.value),
        heartbeat_age_s=max(0.0, (now - agent.last_heartbeat).total_seconds()),
        inbox=inbox,
        urgent=urgent,
        processing=processing,
        dead=dead,
    )


def rates(before: Snapshot | None, after: Snapshot) -> tuple[float, float]:
    """Messages per second in (sends) and out (receives) between two snapshots."""
    if before is None or after.taken_at <= before.taken_at:
        return 0.0, 0.0
    seconds = after.taken_at - before.taken_at

    def delta(names: tuple[str, ...]) -> float:
        return sum(after.commands[n] - before.commands.get(n, 0) for n in names) / seconds

    return max(0.0, delta(_SENDS)), max(0.0, delta(_RECEIVES))
