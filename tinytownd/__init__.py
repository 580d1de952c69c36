"""tinytownd: a supervised per-town Redis and the Tinytown Channel API.

>>> from tinytownd import Town, Message
>>> with Town.connect(".") as town:
...     town.channel().send(Message.ping(me, them))
"""

from .channel import Channel, Subscription
from .errors import (
    ConfigError,
    InvalidMessageError,
    NotRunningError,
    StartupError,
    StateError,
    TinytownError,
)
from .models import (
    Agent,
    AgentState,
    AgentType,
    Message,
    Priority,
    SpawnMode,
    Task,
    TaskState,
)
from .town import Town

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
]
