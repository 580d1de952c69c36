"""tinytownd: a supervised per-town Redis and the Tinytown Channel API.

>>> from tinytownd import Town, Message
>>> with Town.connect(".") as town:
...     town.channel().send(Message.ping(me, them))

The names below load on first use, so ``tinytownd --help`` and ``--version`` never pay
for importing redis-py (and asyncio with it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from .channel import Channel, Subscription
    from .errors import (
        ConfigError,
        InvalidMessageError,
        NotRunningError,
        StartupError,
        StateError,
        TinytownError,
    )
    from .messages import Message, Priority
    from .records import Agent, AgentState, AgentType, SpawnMode, Task, TaskState
    from .town import Town

_HOME = {
    "Channel": "channel",
    "Subscription": "channel",
    "ConfigError": "errors",
    "InvalidMessageError": "errors",
    "NotRunningError": "errors",
    "StartupError": "errors",
    "StateError": "errors",
    "TinytownError": "errors",
    "Message": "messages",
    "Priority": "messages",
    "Agent": "records",
    "AgentState": "records",
    "AgentType": "records",
    "SpawnMode": "records",
    "Task": "records",
    "TaskState": "records",
    "Town": "town",
}

__all__ = [
    "Agent",
    "AgentState",
    "AgentType",
    "Channel",
    "ConfigError",
    "InvalidMessageError",
    "Message",
    "NotRunningError",
    "Priority",
    "SpawnMode",
    "StartupError",
    "StateError",
    "Subscription",
    "Task",
    "TaskState",
    "TinytownError",
    "Town",
    "__version__",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'tinytownd' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
