"""The vocabulary between operations and drivers: steps, the retry policy, the drivers.

An operation (:mod:`tinytownd.ops`) yields steps: a command (a tuple of arguments), a
list of them to send as one pipeline, a :class:`Pop` (a blocking take with a deadline)
or a :class:`Pause`. A driver carries each out and sends the reply back in:
:func:`run_sync` with a blocking ``execute``, :func:`run_async` with an awaited one.
:class:`tinytownd.Channel` and :class:`tinytownd.aio.Channel` supply only ``execute``.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.exceptions import AskError as RedisAskError
from redis.exceptions import ClusterDownError as RedisClusterDownError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.exceptions import TryAgainError as RedisTryAgainError

from .errors import UnsupportedServerError

Command = tuple[Any, ...]

#: Redis counts BLPOP timeouts in seconds with millisecond resolution.
_MIN_BLOCK = 0.001
#: How long past a blocking pop's deadline a driver waits for Redis's answer before
#: taking the connection for dead: a stopped or wedged Redis never answers, and a
#: receive must not hang on it.
REPLY_GRACE = 0.5


#: The commands the operations send most, whose replies no redis-py version reshapes
#: (HGETALL's pairs become a dict here, as redis-py does). They skip redis-py's
#: per-command wrapper (its retries, which ours replace, and its metrics hooks) and go
#: straight to a pooled connection: about 6 µs of a 90 µs round trip. Every command a
#: :class:`Pop` sends is one of them, so that a driver bounds each by its deadline.
AS_SENT = frozenset(
    {
        *("RPUSH", "LPUSH", "LPOP", "LMPOP", "BLPOP", "LMOVE", "BLMOVE", "LREM", "LLEN"),
        *("LINDEX", "LRANGE", "HGETALL", "HSET", "HDEL", "GET", "DEL", "MULTI", "EXEC"),
        *("EVALSHA", "EVAL", "PUBLISH"),
    }
)


def shaped(command: Command, reply: Any) -> Any:
    """``reply`` to ``command`` as redis-py gives it: HGETALL's pairs as a dict."""
    if command[0] == "HGETALL" and isinstance(reply, list):
        return dict(zip(reply[::2], reply[1::2], strict=True))
    return reply


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.3 µs more to make
class Pop:
    """Take the head of ``key``, blocking until ``deadline`` (monotonic; None: forever).

    A step of its own rather than a fixed BLPOP, so that a driver retrying it after
    a lost connection asks only for the time that is left, and gives up once the
    deadline has passed: a receive never outlives its timeout.
    """

    key: str
    deadline: float | None
    #: A list taken before ``key`` (the agent's urgent list), in the same command.
    urgent: str | None = None

    def commands(self) -> list[Command]:
        """What to send, in one round trip; the reply to the last one is the pop's."""
        return [self.command()]

    def reply_by(self) -> float | None:
        """The monotonic time by which Redis must have answered (None: no limit)."""
        return None if self.deadline is None else self.deadline + REPLY_GRACE

    def command(self) -> Command:
        keys = (self.key,) if self.urgent is None else (self.urgent, self.key)
        if self.deadline is None:
            return ("BLPOP", *keys, 0)
        left = self.deadline - time.monotonic()
        if left >= _MIN_BLOCK:
            return ("BLPOP", *keys, f"{left:.3f}")
        return ("LPOP", self.key) if len(keys) == 1 else ("LMPOP", len(keys), *keys, "LEFT")

    @staticmethod
    def value(reply: Any) -> Any:
        """The popped payload from a BLPOP (key, value), LMPOP (key, [value]) or LPOP
        (value) reply."""
        if not isinstance(reply, list | tuple):
            return reply
        taken = reply[1]
        return taken[0] if isinstance(taken, list | tuple) else taken


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.3 µs more to make
class Move(Pop):
    """Like :class:`Pop`, but the message moves to ``target`` (BLMOVE) instead of
    vanishing, so that a reply lost with a crashing Redis loses nothing. The
    operation handles a lost connection itself; drivers do not retry this step."""

    target: str = ""
    ack: bytes | None = None  # the previous delivery, dropped from target first

    def commands(self) -> list[Command]:
        before = [] if self.ack is None else [("LREM", self.target, 1, self.ack)]
        return [*before, self.command()]

    def command(self) -> Command:
        ends = ("LEFT", "RIGHT")
        if self.deadline is None:
            return ("BLMOVE", self.key, self.target, *ends, 0)
        left = self.deadline - time.monotonic()
        if left < _MIN_BLOCK:
            return ("LMOVE", self.key, self.target, *ends)
        return ("BLMOVE", self.key, self.target, *ends, f"{left:.3f}")


#: Without waiting, acknowledge the previous delivery (ARGV[1], if any), then move the
#: head of the urgent list, else of the inbox, to the processing list: one round trip.
_TAKE_SCRIPT = """
if #ARGV > 0 then redis.call('LREM', KEYS[3], 1, ARGV[1]) end
local taken = redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT')
if taken then return taken end
return redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT')
"""
_TAKE_SHA = hashlib.sha1(_TAKE_SCRIPT.encode()).hexdigest()


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 0.3 µs more to make
class TakeNow(Move):
    """:class:`Move` without waiting, the urgent list first, as one server-side step."""

    #: Send the script's text (EVAL): Redis did not know it yet (NOSCRIPT).
    by_text: bool = False

    def commands(self) -> list[Command]:
        keys = (self.urgent, self.key, self.target)
        ack = () if self.ack is None else (self.ack,)
        if self.by_text:
            return [("EVAL", _TAKE_SCRIPT, 3, *keys, *ack)]
        return [("EVALSHA", _TAKE_SHA, 3, *keys, *ack)]


@dataclass(frozen=True)
class Pause:
    """Sleep for ``seconds`` (the driver's own sleep: blocking or asyncio)."""

    seconds: float


@dataclass(frozen=True)
class Primaries:
    """Ask which servers hold the keyspace: the reply is every primary of a Redis
    Cluster, or ``[None]`` for the one server. What a SCAN must visit."""


@dataclass(frozen=True)
class OnNode:
    """Run ``command`` on ``node`` (one of a :class:`Primaries` reply)."""

    node: Any
    command: Command


Step = Command | list[Command] | Pop | Pause | Primaries | OnNode
T = TypeVar("T")
Op = Generator[Step, Any, T]

#: The errors after which a command may be sent again: the connection broke or timed
#: out, or a Redis Cluster moved the key's slot (MOVED, ASK) or is failing over.
RETRYABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisAskError,
    RedisClusterDownError,
    RedisTryAgainError,
)

#: How long a command whose connection failed is retried: enough to ride through a
#: crash-restart of the local Redis (milliseconds), and, behind Sentinel, a failover
#: (about 30 s with Sentinel's defaults) or a Redis Cluster's failover (a few times
#: ``cluster-node-timeout``, 15 s by default). ``channel.retry_for`` sets it per town.
RETRY_FOR = 2.0
RETRY_FOR_SENTINEL = RETRY_FOR_CLUSTER = 60.0
#: The first pause, and the longest, between two retries (doubling in between).
FIRST_RETRY, LONGEST_RETRY = 0.01, 0.5


def refuse_redirect(error: Exception, cluster: bool) -> None:
    """A MOVED or ASK reaching a client of one server: it talks to one node of a Redis
    Cluster, which serves only part of the keys. Retrying cannot help; say what can."""
    if not cluster and isinstance(error, RedisAskError):
        redirect = "ASK" if type(error) is RedisAskError else "MOVED"
        raise UnsupportedServerError(
            f"Redis answered {redirect}: this client talks to one node of a "
            "Redis Cluster; give the Channel a redis.RedisCluster (Town.connect does, for "
            "a redis.url naming any node)"
        )


def retry_delay(
    step: Step, attempt: int, failing_since: float, retry_for: float = RETRY_FOR
) -> float | None:
    """How long to wait before retrying ``step`` after its ``attempt``-th connection
    failure (the first at ``failing_since``, monotonic), or None to give up and raise.
    A retried write may have been applied before the connection broke, so delivery
    is at-least-once."""
    if isinstance(step, Move):
        return None  # receive_reliable must see the failure: see Move
    deadline = step.deadline if isinstance(step, Pop) else None
    return backoff(attempt, give_up_at(failing_since, retry_for, deadline))


def give_up_at(failing_since: float, retry_for: float, deadline: float | None) -> float:
    """When retries stop: ``retry_for`` after the first failure, and never past a
    receive's own ``deadline``, so ``receive(timeout=t)`` never outlives ``t``."""
    end = failing_since + retry_for
    return end if deadline is None else min(end, deadline)


def backoff(attempt: int, deadline: float) -> float | None:
    """The pause before retry number ``attempt`` (from 0): doubling from FIRST_RETRY up
    to LONGEST_RETRY, with jitter so that many clients do not retry in step; never past
    ``deadline`` (monotonic), and None once it has passed."""
    left = deadline - time.monotonic()
    if left <= 0:
        return None
    pause = min(LONGEST_RETRY, FIRST_RETRY * 2.0 ** min(attempt, 16)) * random.uniform(0.75, 1.25)
    return min(pause, left)


async def run_async(op: Op[T], execute: Callable[[Step], Awaitable[Any]]) -> T:
    """:func:`run_sync` for asyncio: the same loop, with the step awaited."""
    try:
        step = next(op)
        while True:
            try:
                reply = await execute(step)
            except Exception as error:  # handed to the operation, which may handle it
                step = op.throw(error)
                continue
            step = op.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def run_sync(op: Op[T], execute: Callable[[Step], Any]) -> T:
    """Drive an operation with a blocking ``execute`` (which also carries out Pause steps);
    errors go back into the operation, which may handle them (receive_reliable does)."""
    try:
        step = next(op)
        while True:
            try:
                reply = execute(step)
            except Exception as error:  # handed to the operation, which may handle it
                step = op.throw(error)
                continue
            step = op.send(reply)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
