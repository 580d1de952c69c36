"""Every Channel operation as a plain generator, free of I/O.

An operation yields steps (:mod:`tinytownd.steps`: Redis commands, pipelines, a
:class:`~tinytownd.steps.Pop`) and receives each reply; its return value is the
result. :class:`tinytownd.Channel` runs them with redis-py and
:class:`tinytownd.aio.Channel` with redis.asyncio, so both flavours share every
decision: which key, which command, how to encode, and what to do with bad data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Generic, TypeVar

from redis.exceptions import NoScriptError as RedisNoScriptError
from redis.exceptions import ResponseError as RedisResponseError

from . import hashform
from .errors import InvalidMessageError, StateError, UnknownAgentError
from .keys import TownKeys
from .messages import Message
from .records import Agent, Task
from .steps import (
    _MIN_BLOCK,
    RETRY_FOR,
    RETRYABLE,
    Command,
    Move,
    OnNode,
    Op,
    Pause,
    Pop,
    Primaries,
    TakeNow,
    backoff,
    give_up_at,
)
from .wire import Id, canonical_id

S = TypeVar("S", Agent, Task)
log = logging.getLogger("tinytownd.channel")


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


def decode_message(raw: bytes | str, where: str, dead: str | None = None) -> Message | None:
    """The message in ``raw``, or None if it is invalid: logged once, saying that it moved
    to the ``dead`` list (or, without one, that it was skipped)."""
    try:
        return Message.from_json(raw)
    except InvalidMessageError as err:
        fate = "skipped" if dead is None else f"moved to {dead}"
        log.warning("invalid message on %s %s: %s", where, fate, err)
        return None


#: On a Redis Cluster an agent's urgent list and inbox live in different slots, so no
#: one blocking command can wait on both: a receive waits on the inbox in slices this
#: long (seconds) and looks at the urgent list between them.
URGENT_CHECK = 1.0


def receive(
    keys: TownKeys, agent_id: Id, timeout: float | timedelta | None, retry_for: float = RETRY_FOR
) -> Op[Message | None]:
    """BLPOP the inbox; an invalid payload moves, byte for byte, to the dead-letter list and
    the wait goes on for what is left of ``timeout``. None waits forever, 0 does not wait."""
    agent = canonical_id(agent_id, "agent id")
    inbox = keys.inbox(agent)
    wait = seconds(timeout)
    deadline = None if wait is None else time.monotonic() + wait
    while True:
        if keys.cluster:
            raw = yield from _pop(keys, agent, deadline, retry_for)
        else:  # urgent first, as tinytown's agents do, in one blocking call
            raw = yield Pop(inbox, deadline, keys.urgent(agent))
        if raw is None:
            return None
        message = decode_message(raw, inbox, keys.dead(agent))
        if message is not None:
            return message
        yield ("RPUSH", keys.dead(agent), raw)
        if deadline is not None and time.monotonic() >= deadline:
            return None


def _pop(keys: TownKeys, agent: str, deadline: float | None, retry_for: float) -> Op[Any]:
    """On a cluster, the head of the agent's urgent list, else of its inbox, waiting until
    ``deadline``: the two lists live in different slots, so one at a time."""
    urgent, inbox = keys.urgent(agent), keys.inbox(agent)
    attempt, failing_since = 0, 0.0
    while True:
        try:
            raw = yield Pop(urgent, time.monotonic())
            if raw is None:
                raw = yield Pop(inbox, _slice_end(keys, deadline))
        except RETRYABLE:  # a slice's retries end with the slice; the receive's go on
            failing_since = failing_since or time.monotonic()
            delay = backoff(attempt, give_up_at(failing_since, retry_for, deadline))
            if delay is None:
                raise
            attempt += 1
            yield Pause(delay)
            continue
        if raw is not None or (deadline is not None and time.monotonic() >= deadline):
            return raw


def _slice_end(keys: TownKeys, deadline: float | None) -> float | None:
    """How long one blocking take may wait: to the deadline, or on a cluster one slice."""
    if not keys.cluster:
        return deadline
    end = time.monotonic() + URGENT_CHECK
    return end if deadline is None else min(deadline, end)


@dataclass
class Inflight:
    """What a reliable receiver holds for one agent."""

    payload: bytes | None = None  # delivered to the caller, not acknowledged yet
    source: str | None = None  # the processing list that holds ``payload``
    checked: bool = False  # the processing lists were looked at by this receiver
    retry_for: float = RETRY_FOR  # the channel's retry budget


class ChannelCore:
    """What both Channel flavours hold: the town's keys and, for reliable receivers,
    what each agent was handed and has not acknowledged yet."""

    def __init__(
        self,
        town: str,
        town_broadcast: bool,
        reliable: bool,
        state: str,
        retry_for: float = RETRY_FOR,
        cluster: bool = False,
    ) -> None:
        if state not in STATE_FORMS:
            raise ValueError(f"state must be one of {', '.join(STATE_FORMS)}, not {state!r}")
        #: Seconds a command whose connection failed is retried (``channel.retry_for``).
        self.retry_for = retry_for
        self.keys = TownKeys(town, town_broadcast, cluster)
        self.reliable = reliable
        self.state_form = state
        self._inflight: dict[str, Inflight] = {}

    def report(self, listing: Listing[S]) -> list[S]:
        """The listing's items; its problems go to the log."""
        for problem in listing.problems:
            log.warning("skipped %s", problem)
        return listing.items

    def receiving(self, agent_id: Id, timeout: float | timedelta | None) -> Op[Message | None]:
        """The receive this channel runs: reliable when it keeps ``inflight`` state."""
        inflight = self.held(agent_id)
        if inflight is None:
            return receive(self.keys, agent_id, timeout, self.retry_for)
        return receive_reliable(self.keys, agent_id, timeout, inflight)

    def held(self, agent_id: Id) -> Inflight | None:
        """The agent's reliable-receive state (None for plain receivers)."""
        if not self.reliable:
            return None
        return self._inflight.setdefault(
            canonical_id(agent_id, "agent id"), Inflight(retry_for=self.retry_for)
        )


def receive_reliable(
    keys: TownKeys, agent_id: Id, timeout: float | timedelta | None, inflight: Inflight
) -> Op[Message | None]:
    """At-least-once receive: BLMOVE into ``tt:<town>:processing:<agent>``.

    The message stays there until the receiver acknowledges it, which asking for the
    next one does. What a crashed receiver, or a reply lost with a crashing Redis,
    left there is delivered again. One reliable receiver per agent at a time.
    """
    agent = canonical_id(agent_id, "agent id")
    inbox, processing = keys.inbox(agent), keys.processing(agent)
    wait = seconds(timeout)
    deadline = None if wait is None else time.monotonic() + wait
    attempt, failing_since = 0, 0.0
    while True:
        raw = None
        if not inflight.checked:
            yield from acknowledge(keys, agent, inflight)
            for held_in in keys.processing_lists(agent):  # left behind, never acknowledged
                raw = yield ("LINDEX", held_in, 0)
                if raw is not None:
                    inflight.source = held_in
                    break
            inflight.checked = True
        if raw is None:
            try:
                raw = yield from _take_now(keys, agent, inflight)
                if raw is None and (deadline is None or deadline - time.monotonic() >= _MIN_BLOCK):
                    raw = yield Move(inbox, _slice_end(keys, deadline), target=processing)
                    inflight.source = processing
            except RETRYABLE:
                failing_since = failing_since or time.monotonic()
                delay = backoff(attempt, give_up_at(failing_since, inflight.retry_for, deadline))
                if delay is None:
                    raise
                attempt += 1
                yield Pause(delay)
                inflight.checked = False  # the move may have happened, its reply lost
                continue
        if raw is None:
            if deadline is None or deadline - time.monotonic() >= _MIN_BLOCK:
                continue  # a cluster's slice ended: look at the urgent list again
            return None
        message = decode_message(raw, inbox, keys.dead(agent))
        if message is not None:
            inflight.payload = raw
            return message
        yield [("RPUSH", keys.dead(agent), raw), ("LREM", inflight.source or processing, 1, raw)]
        if deadline is not None and time.monotonic() >= deadline:
            return None


def _take_now(keys: TownKeys, agent: str, inflight: Inflight) -> Op[Any]:
    """Without waiting: acknowledge the previous delivery and move the head of the urgent
    list, else of the inbox, to its processing list. One round trip on one server (a
    script); on a cluster, where the two lists live in different slots, one per list,
    the acknowledgement riding with the move into the same processing list."""
    urgent, inbox, processing = keys.urgent(agent), keys.inbox(agent), keys.processing(agent)
    if keys.cluster:
        raw = yield Move(urgent, time.monotonic(), target=keys.urgent_processing(agent))
        if raw is not None:
            yield from acknowledge(keys, agent, inflight)
            inflight.source = keys.urgent_processing(agent)
            return raw
        if inflight.source != processing:
            yield from acknowledge(keys, agent, inflight)
        raw = yield Move(inbox, time.monotonic(), target=processing, ack=inflight.payload)
        inflight.payload, inflight.source = None, processing
        return raw
    take = TakeNow(inbox, time.monotonic(), urgent=urgent, target=processing, ack=inflight.payload)
    try:
        raw = yield take
    except RedisNoScriptError:
        raw = yield replace(take, by_text=True)
    inflight.payload, inflight.source = None, processing
    return raw


def acknowledge(keys: TownKeys, agent_id: Id, inflight: Inflight) -> Op[None]:
    """Drop the delivered message from the processing list: the receiver is done with it."""
    if inflight.payload is not None:
        held_in = inflight.source or keys.processing(canonical_id(agent_id, "agent id"))
        yield ("LREM", held_in, 1, inflight.payload)
        inflight.payload = None


def send_urgent(keys: TownKeys, message: Message) -> Op[None]:
    """LPUSH onto the recipient's urgent list, as ``tt send --urgent`` does: its agents
    take that list before the inbox (newest first), whatever the message's priority."""
    yield ("LPUSH", keys.urgent(message.to), message.to_json())


def urgent_len(keys: TownKeys, agent_id: Id) -> Op[int]:
    length: int = yield ("LLEN", keys.urgent(canonical_id(agent_id, "agent id")))
    return length


def list_len(key: str) -> Op[int]:
    length: int = yield ("LLEN", key)
    return length


def inbox_len(keys: TownKeys, agent_id: Id) -> Op[int]:
    length: int = yield ("LLEN", keys.inbox(canonical_id(agent_id, "agent id")))
    return length


def peek(
    keys: TownKeys, agent_id: Id, count: int, dead: bool = False, urgent: bool = False
) -> Op[list[bytes]]:
    """The first ``count`` raw payloads of an inbox (or its dead-letter or urgent list),
    not removed."""
    agent = canonical_id(agent_id, "agent id")
    key = keys.dead(agent) if dead else keys.urgent(agent) if urgent else keys.inbox(agent)
    items: list[bytes] = yield ("LRANGE", key, 0, count - 1)
    return items


def broadcast(keys: TownKeys, message: Message) -> Op[int]:
    """PUBLISH; returns how many subscribers received it."""
    receivers: int = yield ("PUBLISH", keys.broadcast, message.to_json())
    return receivers


class BroadcastWait:
    """The decisions of one ``Subscription.get``: how long to ask pub/sub to wait, what
    to do with an event, and when to retry a lost connection (redis-py reconnects and
    resubscribes on the next call). Drivers only fetch events and sleep."""

    def __init__(self, channel: str, timeout: float | None, retry_for: float = RETRY_FOR) -> None:
        self.channel = channel
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.retry_for = retry_for
        self.attempt, self.failing_since = 0, 0.0

    def left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def retry_after(self, error: Exception) -> float:
        """The pause before asking again after ``error``; re-raises once retries run out."""
        self.failing_since = self.failing_since or time.monotonic()
        delay = backoff(self.attempt, give_up_at(self.failing_since, self.retry_for, self.deadline))
        if delay is None:
            raise error
        self.attempt += 1
        return delay

    def handle(self, event: dict[str, Any] | None) -> tuple[bool, Message | None]:
        """``(done, message)`` for one event (None: the wait ended without one)."""
        self.attempt, self.failing_since = 0, 0.0
        if event is not None and event["type"] == "message":
            message = decode_message(event["data"], self.channel)
            if message is not None:
                return True, message
            return False, None
        return self.deadline is not None and time.monotonic() >= self.deadline, None


#: How agent and task state is stored: ``hash`` as tinytown 0.10 does, or ``json``,
#: the documented String layout. Reads accept both whatever the setting.
STATE_FORMS = ("hash", "json")


def set_state(key: str, document: Agent | Task, form: str = "hash") -> Op[None]:
    """Store one agent or task; a reader never sees half an update (MULTI/EXEC)."""
    if form == "json":
        yield ("SET", key, document.to_json())
        return
    values, absent = hashform.fields_of(document)
    fields = [part for pair in values.items() for part in pair]
    hdel = [("HDEL", key, *absent)] if absent else []
    # As upstream: drop the optional fields that are null, set the rest; fields a
    # newer peer added stay. A key still in the JSON form is replaced whole.
    replies = yield [("MULTI",), *hdel, ("HSET", key, *fields), ("EXEC",)]
    if any(isinstance(reply, Exception) for reply in replies[-1] or ()):
        yield [("MULTI",), ("DEL", key), ("HSET", key, *fields), ("EXEC",)]


def get_state(key: str, kind: type[S], form: str = "hash") -> Op[S | None]:
    """One agent or task, whichever form its key holds; None when there is none."""
    first, second = ("HGETALL", "GET") if form == "hash" else ("GET", "HGETALL")
    try:
        raw = yield (first, key)
    except RedisResponseError as err:
        if not str(err).startswith("WRONGTYPE"):
            raise
        try:
            raw = yield (second, key)
        except RedisResponseError as again:
            if not str(again).startswith("WRONGTYPE"):
                raise
            kind_of = yield ("TYPE", key)
            raise StateError(
                f"{key} is a Redis {_text(kind_of)}, not an agent or task (hash or JSON string)"
            ) from None
    return None if not raw else decode_state(key, raw, kind)


def decode_state(key: str, raw: bytes | dict[bytes, bytes], kind: type[S]) -> S:
    try:
        if isinstance(raw, dict):
            document: S = hashform.document_of(raw, kind)
            return document
        return kind.from_json(raw)
    except (InvalidMessageError, UnicodeDecodeError) as err:
        raise StateError(f"{key} does not hold a valid {kind.__name__.lower()}: {err}") from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def scan(pattern: str, count: int = 1000) -> Op[list[bytes]]:
    """Every key matching ``pattern``, by SCAN (never KEYS, which blocks Redis), on every
    primary of a cluster."""
    found: dict[bytes, None] = {}  # SCAN may return a key twice (while Redis rehashes)
    for node in (yield Primaries()):
        cursor: Any = 0
        while True:
            cursor, batch = yield OnNode(node, ("SCAN", cursor, "MATCH", pattern, "COUNT", count))
            found.update(dict.fromkeys(batch))
            if int(cursor) == 0:
                break
    return list(found)


def queue_lengths(keys: TownKeys, agent_ids: list[str]) -> Op[list[tuple[int, int, int, int]]]:
    """Each agent's inbox, urgent, processing and dead-letter lengths, in one round trip."""
    per_agent = [
        [keys.inbox(a), keys.urgent(a), *keys.processing_lists(a), keys.dead(a)] for a in agent_ids
    ]
    if not per_agent:
        return []
    replies = iter((yield [("LLEN", key) for lists in per_agent for key in lists]))
    lengths = []
    for lists in per_agent:
        inbox, urgent, *processing, dead = (int(next(replies)) for _ in lists)
        lengths.append((inbox, urgent, sum(processing), dead))
    return lengths


@dataclass(frozen=True)
class Listing(Generic[S]):
    """Every agent (or task) that could be read, and one line per key that could not."""

    items: list[S]
    problems: list[str]


_READ_BY_TYPE = {b"hash": "HGETALL", b"string": "GET", "hash": "HGETALL", "string": "GET"}


def all_states(keys: TownKeys, kind: type[S]) -> Op[Listing[S]]:
    """Every agent (or task) of the town, hash and JSON string alike; keys that vanish
    meanwhile are skipped, and a bad one is reported without hiding the others."""
    names: list[bytes] = yield from scan(keys.pattern(kind.__name__.lower()))
    if not names:
        return Listing([], [])
    types = yield [("TYPE", name) for name in names]
    reads = [(name, _READ_BY_TYPE.get(found)) for name, found in zip(names, types, strict=True)]
    problems = [
        f"{name.decode()}: a Redis {_text(found)}, not an agent or task"
        for (name, command), found in zip(reads, types, strict=True)
        if command is None and _text(found) != "none"
    ]
    readable = [(name, command) for name, command in reads if command is not None]
    values = (yield [(command, name) for name, command in readable]) if readable else []
    items: list[S] = []
    for (name, _), raw in zip(readable, values, strict=True):
        if not raw:
            continue  # deleted between SCAN and the read
        try:
            items.append(decode_state(name.decode(), raw, kind))
        except StateError as err:
            problems.append(str(err))
    return Listing(items, problems)


def looks_like_uuid(text: str) -> bool:
    try:
        canonical_id(text)
    except InvalidMessageError:
        return False
    return True


def resolve_agent(agents: Iterable[Agent], text: str) -> str:
    """The id of the agent ``text`` names, as tinytown resolves it: a full UUID as it
    is; otherwise the agent whose name or nickname is exactly ``text``, else the one whose
    id starts with it (a short id). None or several is :class:`UnknownAgentError`."""
    if looks_like_uuid(text):
        return canonical_id(text)
    agents = list(agents)
    wanted = text.strip()
    for matches in (
        [a for a in agents if wanted in (a.name, a.nickname)],
        [a for a in agents if len(wanted) >= 4 and a.id.startswith(wanted.lower())],
    ):
        if len(matches) == 1:
            return matches[0].id
        if matches:
            listed = ", ".join(f"{a.name} ({a.id[:8]})" for a in matches[:6])
            raise UnknownAgentError(
                f"{text!r} names {len(matches)} agents: {listed}; use a longer id"
            )
    raise UnknownAgentError(
        f"no agent named {text!r} (by name, nickname or id prefix) in this town; "
        "`tinytownd agents` lists them"
    )
