"""Every Channel operation as a plain generator, free of I/O.

An operation yields Redis commands (a tuple of arguments, or a list of them to
send as one pipeline) and receives each reply; its return value is the result.
:class:`tinytownd.Channel` runs them with redis-py and
:class:`tinytownd.aio.Channel` with redis.asyncio, so both flavours share every
decision: which key, which command, how to encode, and what to do with bad data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator, Iterable
from datetime import timedelta
from typing import Any, TypeVar

from .errors import InvalidMessageError, StateError
from .keys import TownKeys
from .models import Agent, Id, Message, Task, canonical_id

log = logging.getLogger("tinytownd.channel")

Command = tuple[Any, ...]
Step = Command | list[Command]
T = TypeVar("T")
Op = Generator[Step, Any, T]
S = TypeVar("S", Agent, Task)

#: Redis counts BLPOP timeouts in seconds with millisecond resolution.
_MIN_BLOCK = 0.001


def seconds(timeout: float | timedelta | None) -> float | None:
    if isinstance(timeout, timedelta):
        return timeout.total_seconds()
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0 (or None to wait forever)")
    return timeout


def send_command(keys: TownKeys, message: Message) -> Command:
    """Urgent and high priority go to the front of the inbox, normal and low to the back."""
    verb = "LPUSH" if message.priority.jumps_queue else "RPUSH"
    return (verb, keys.inbox(message.to), message.to_json())


def send(keys: TownKeys, message: Message) -> Op[int]:
    length: int = yield send_command(keys, message)
    return length


def send_many(keys: TownKeys, messages: Iterable[Message]) -> Op[int]:
    """Send in one round trip; returns how many were sent.

    Messages for the same inbox and end go out as one variadic LPUSH/RPUSH. The
    inboxes end up exactly as after one send() per message, because every LPUSH
    lands in front of all RPUSHes whatever the interleaving; only the number of
    commands Redis parses shrinks.
    """
    groups: dict[tuple[str, str], list[str]] = {}
    sent = 0
    for message in messages:
        verb, key, payload = send_command(keys, message)
        groups.setdefault((verb, key), []).append(payload)
        sent += 1
    if groups:
        yield [(verb, key, *payloads) for (verb, key), payloads in groups.items()]
    return sent


def decode_message(raw: bytes | str, where: str, fate: str) -> Message | None:
    """The message in ``raw``, or None (logged once, saying its ``fate``) if it is invalid."""
    try:
        return Message.from_json(raw)
    except InvalidMessageError as err:
        log.warning("invalid message on %s %s: %s", where, fate, err)
        return None


def receive(keys: TownKeys, agent_id: Id, timeout: float | timedelta | None) -> Op[Message | None]:
    """BLPOP the inbox; an invalid payload moves, byte for byte, to the dead-letter list and
    the wait goes on for what is left of ``timeout``. None waits forever, 0 does not wait."""
    agent = canonical_id(agent_id, "agent id")
    inbox = keys.inbox(agent)
    wait = seconds(timeout)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        if deadline is None:
            reply = yield ("BLPOP", inbox, 0)
            raw = reply[1] if reply else None
        else:
            left = deadline - time.monotonic()
            if left < _MIN_BLOCK:
                raw = yield ("LPOP", inbox)
            else:
                reply = yield ("BLPOP", inbox, f"{left:.3f}")
                raw = reply[1] if reply else None
        if raw is None:
            return None
        message = decode_message(raw, inbox, "moved to " + keys.dead(agent))
        if message is not None:
            return message
        yield ("RPUSH", keys.dead(agent), raw)
        if deadline is not None and time.monotonic() >= deadline:
            return None


def try_receive(keys: TownKeys, agent_id: Id) -> Op[Message | None]:
    return (yield from receive(keys, agent_id, 0))


def inbox_len(keys: TownKeys, agent_id: Id) -> Op[int]:
    length: int = yield ("LLEN", keys.inbox(canonical_id(agent_id, "agent id")))
    return length


def peek(keys: TownKeys, agent_id: Id, count: int, dead: bool = False) -> Op[list[bytes]]:
    """The first ``count`` raw payloads of an inbox (or its dead-letter list), not removed."""
    agent = canonical_id(agent_id, "agent id")
    key = keys.dead(agent) if dead else keys.inbox(agent)
    items: list[bytes] = yield ("LRANGE", key, 0, count - 1)
    return items


def broadcast(keys: TownKeys, message: Message) -> Op[int]:
    """PUBLISH; returns how many subscribers received it."""
    receivers: int = yield ("PUBLISH", keys.broadcast, message.to_json())
    return receivers


def set_state(key: str, document: Agent | Task) -> Op[None]:
    yield ("SET", key, document.to_json())


def get_state(key: str, kind: type[S]) -> Op[S | None]:
    raw = yield ("GET", key)
    return None if raw is None else decode_state(key, raw, kind)


def decode_state(key: str, raw: bytes, kind: type[S]) -> S:
    try:
        return kind.from_json(raw)
    except InvalidMessageError as err:
        raise StateError(f"{key} does not hold a valid {kind.__name__.lower()}: {err}") from None


def scan(pattern: str, count: int = 1000) -> Op[list[bytes]]:
    """Every key matching ``pattern``, by SCAN (never KEYS, which blocks Redis)."""
    found: list[bytes] = []
    cursor: Any = 0
    while True:
        cursor, batch = yield ("SCAN", cursor, "MATCH", pattern, "COUNT", count)
        found.extend(batch)
        if int(cursor) == 0:
            return found


def all_states(keys: TownKeys, kind: type[S]) -> Op[list[S]]:
    """Every agent (or task) of the town, skipping keys that vanish meanwhile."""
    names: list[bytes] = yield from scan(keys.pattern(kind.__name__.lower()))
    if not names:
        return []
    values = yield ("MGET", *names)
    return [
        decode_state(name.decode(), raw, kind)
        for name, raw in zip(names, values, strict=True)
        if raw is not None
    ]


def run_sync(op: Op[T], execute: Callable[[Step], Any]) -> T:
    """Drive an operation with a blocking ``execute``."""
    try:
        step = next(op)
        while True:
            step = op.send(execute(step))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
