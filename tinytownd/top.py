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
    """Everything the view shows, read in three round trips."""
    listing = channel.agents_listing()
    agents = sorted(listing.items, key=lambda a: (a.name, a.id))
    keys = channel.keys
    pipe = channel.redis.pipeline(transaction=False)
    for agent in agents:
        for key in (keys.inbox, keys.urgent, keys.processing, keys.dead):
            pipe.llen(key(agent.id))
    pipe.info()
    pipe.info("commandstats")
    *lengths, info, stats = pipe.execute()
    now = datetime.now(UTC)
    rows = [_row(agent, lengths[i * 4 : i * 4 + 4], now) for i, agent in enumerate(agents)]
    return Snapshot(
        town=keys.town,
        taken_at=time.time(),
        agents=rows,
        problems=listing.problems,
        memory_mb=int(info.get("used_memory_rss", 0)) / 2**20,
        clients=int(info.get("connected_clients", 0)),
        persistence={
            "rdb_changes_since_last_save": info.get("rdb_changes_since_last_save"),
            "rdb_last_bgsave_status": info.get("rdb_last_bgsave_status"),
            "aof_enabled": bool(info.get("aof_enabled")),
            "aof_last_write_status": info.get("aof_last_write_status"),
        },
        commands={
            name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))
            for name in (*_SENDS, *_RECEIVES)
        },
    )


def _row(agent: Agent, lengths: list[int], now: datetime) -> AgentRow:
    inbox, urgent, processing, dead = (int(n) for n in lengths)
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
