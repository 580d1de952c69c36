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
from .messages import Message, Priority
from .records import Agent, AgentState, AgentType, SpawnMode, Task, TaskState
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
