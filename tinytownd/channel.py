"""The Channel: Tinytown's message transport over one town's Redis (blocking flavour).

All logic lives in :mod:`tinytownd.ops`; this class only runs it with redis-py.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterable, Iterator
from datetime import timedelta
from types import TracebackType
from typing import Any

import redis
from redis.client import NEVER_DECODE
from redis.connection import AbstractConnection
from redis.exceptions import RedisClusterException

from . import ops, resp, routing, steps
from .messages import Message
from .records import Agent, Task
from .wire import Id, canonical_id

#: Replies as Redis sent them: the operations decode what they read themselves.
_RAW = {NEVER_DECODE: True}


#: redis-py 8 bounds one read by a socket timeout (``read_response(timeout=)``); before
#: that, a deadline means polling the socket first, which costs about 6 µs a reply.
_READ_TAKES_TIMEOUT = "timeout" in inspect.signature(AbstractConnection.read_response).parameters


def _round_trip(
    pool: redis.ConnectionPool, commands: list[steps.Command], reply_by: float | None
) -> list[Any]:
    """Replies to ``commands`` (all ``steps.AS_SENT``) on one pooled connection, in one
    round trip, without redis-py's per-command wrapper; an error reply is raised once
    every reply has been read, so the connection stays in step."""
    packed = resp.request(commands, pool.connection_kwargs)
    connection = pool.get_connection()
    try:
        if packed is not None:
            connection.send_packed_command([packed])
        elif len(commands) == 1:
            connection.send_packed_command(connection.pack_command(*commands[0]))
        else:
            connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        for command in commands:
            try:
                # A pop's deadline is its own, on this one read: the client's
                # socket_timeout would cut every blocking pop short.
                if reply_by is None:
                    reply = connection.read_response(disable_decoding=True)
                elif _READ_TAKES_TIMEOUT:
                    left = max(0.0, reply_by - time.monotonic())
                    reply = connection.read_response(disable_decoding=True, timeout=left)
                else:
                    reply = _polled_read(connection, reply_by)
            except redis.ResponseError as refused:
                error, reply = error or refused, refused
            replies.append(steps.shaped(command, reply))
    except BaseException:
        connection.disconnect()  # a reply may still arrive: never reuse this one
        raise
    finally:
        pool.release(connection)
    if error is not None:
        raise error
    return replies


def _polled_read(connection: AbstractConnection, reply_by: float) -> Any:
    """The next reply, or ``redis.TimeoutError`` if it has not come by ``reply_by``, on a
    redis-py whose reads take no timeout."""
    if not connection.can_read(timeout=max(0.0, reply_by - time.monotonic())):
        raise redis.TimeoutError("Redis did not answer by the receive's deadline")
    return connection.read_response(disable_decoding=True)


class Channel(ops.ChannelCore):
    """Send and receive messages and keep agent and task state for one town.

    ``client`` is any ``redis.Redis``, or a ``redis.RedisCluster``: then each command
    goes to its key's primary, listings visit every primary, and the slot map is asked
    for again after a MOVED or a failed node. Blocking receives need a client without a
    ``socket_timeout`` shorter than the receive timeout (``Town.channel()`` gives one).

    ``reliable=True`` makes receives at-least-once: a message moves to
    ``tt:<town>:processing:<agent>`` until the receiver asks for the next one (or calls
    :meth:`ack`), and one left there by a crash is delivered again. Use one reliable
    receiver per agent.
    """

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        town: str,
        *,
        town_broadcast: bool = True,
        reliable: bool = False,
        state: str = "hash",
        retry_for: float = steps.RETRY_FOR,
    ) -> None:
        cluster = isinstance(client, redis.RedisCluster)
        super().__init__(town, town_broadcast, reliable, state, retry_for, cluster)
        self.redis = client
        self._stale = False  # a cluster's slot map may be out of date: ask for it first
        self._server = client if isinstance(client, redis.Redis) else None  # one server

    def _execute(self, step: steps.Step) -> Any:
        server = self._server
        try:
            if server is not None:  # the common case first, in as few calls as we can
                if type(step) is tuple and step[0] in steps.AS_SENT:
                    return _round_trip(server.connection_pool, [step], None)[0]
                if isinstance(step, steps.Pop):  # whose commands are all steps.AS_SENT
                    replies = _round_trip(server.connection_pool, step.commands(), step.reply_by())
                    return step.value(replies[-1])
                if type(step) is list:
                    return self._send(server, step)
            return self._execute_once(step)
        except steps.RETRYABLE as error:
            failure = error
        return self._retry(step, failure)  # outside the handler: no chained traceback

    def _retry(self, step: steps.Step, error: Exception) -> Any:
        """Carry ``step`` out again after ``error`` until it succeeds or the retry policy
        gives up (then the last error is raised)."""
        attempt, failing_since = 0, time.monotonic()
        while True:
            self._stale = self.keys.cluster
            steps.refuse_redirect(error, self.keys.cluster)
            delay = steps.retry_delay(step, attempt, failing_since, self.retry_for)
            if delay is None:
                raise error
            attempt += 1
            time.sleep(delay)
            try:
                return self._execute_once(step)
            except steps.RETRYABLE as again:
                error = again

    def _execute_once(self, step: steps.Step) -> Any:
        if isinstance(step, steps.Pause):
            time.sleep(step.seconds)
            return None
        if self._stale:
            self._refresh()
        if isinstance(step, steps.Primaries):
            return self._cluster.get_primaries() if self.keys.cluster else [None]
        if isinstance(step, steps.OnNode):
            return self._client(step.node).execute_command(*step.command, **_RAW)
        if isinstance(step, steps.Pop):
            replies = self._send(self._client_of(step.key), step.commands(), step.reply_by())
            return step.value(replies[-1])
        if isinstance(step, list):
            if not self.keys.cluster:
                return self._send(self._client(None), step)
            groups = routing.route(step, self._node_of)
            answered = [
                (positions, self._send(self._client(node), [step[i] for i in positions]))
                for node, positions in groups
            ]
            return routing.merge(len(step), answered)
        client = self._client_of(routing.key_of(step))
        return client.execute_command(*step, **_RAW)

    # -- a Redis Cluster: every command goes to its key's primary, on that node's client

    @property
    def _cluster(self) -> redis.RedisCluster:
        assert isinstance(self.redis, redis.RedisCluster)
        return self.redis

    def _node_of(self, key: Any | None) -> Any:
        if key is None:
            return self._cluster.get_default_node()
        return self._cluster.get_node_from_key(key)

    def _client(self, node: Any | None) -> redis.Redis:
        """The plain client of ``node`` (None: the one server)."""
        if node is None:
            assert isinstance(self.redis, redis.Redis)
            return self.redis
        client: redis.Redis = self._cluster.get_redis_connection(node)
        return client

    def _client_of(self, key: Any | None) -> redis.Redis:
        return self._client(self._node_of(key) if self.keys.cluster else None)

    def _refresh(self) -> None:
        """Ask the cluster for its slot map again (after MOVED, or a node that failed)."""
        try:
            self._cluster.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as error:
            raise redis.ConnectionError(f"Redis Cluster unreachable: {error}") from error
        self._stale = False

    def _send(
        self, client: redis.Redis, commands: list[steps.Command], reply_by: float | None = None
    ) -> list[Any]:
        """Replies to ``commands``, sent to ``client`` in one round trip; past ``reply_by``
        (monotonic) without an answer, the connection is dropped and ``redis.TimeoutError``
        raised. An error reply is raised once every reply has been read."""
        if len(commands) == 1:
            if commands[0][0] in steps.AS_SENT:
                return _round_trip(client.connection_pool, commands, reply_by)
            return [client.execute_command(*commands[0], **_RAW)]
        if all(command[0] in steps.AS_SENT for command in commands):
            return _round_trip(client.connection_pool, commands, reply_by)
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_RAW)
        return pipe.execute()

    def run(self, op: steps.Op[steps.T]) -> steps.T:
        """Run an operation from :mod:`tinytownd.ops` or :mod:`tinytownd.migrate`."""
        return steps.run_sync(op, self._execute)

    def send(self, message: Message) -> None:
        """Queue ``message`` in its recipient's inbox (urgent/high at the front)."""
        self.run(ops.send(self.keys, message))

    def send_many(self, messages: Iterable[Message]) -> int:
        """Queue several messages in one round trip; returns how many."""
        return self.run(ops.send_many(self.keys, messages))

    def receive(self, agent_id: Id, timeout: float | timedelta | None = 30) -> Message | None:
        """The next message for ``agent_id``, waiting up to ``timeout`` (None: forever)."""
        return self.run(self.receiving(agent_id, timeout))

    def try_receive(self, agent_id: Id) -> Message | None:
        """The next message if one is waiting, else None at once."""
        return self.run(self.receiving(agent_id, 0))

    def ack(self, agent_id: Id) -> None:
        """Reliable channels: done with the last message received for ``agent_id`` (the
        next receive for that agent acknowledges it too)."""
        held = self.held(agent_id)
        if held is not None:
            self.run(ops.acknowledge(self.keys, agent_id, held))

    def inbox_len(self, agent_id: Id) -> int:
        return self.run(ops.inbox_len(self.keys, agent_id))

    def send_urgent(self, message: Message) -> None:
        """Queue ``message`` on the recipient's urgent list, which every receive (ours and
        tinytown's) takes before the inbox, newest first: ``tt send --urgent``."""
        self.run(ops.send_urgent(self.keys, message))

    def urgent_len(self, agent_id: Id) -> int:
        return self.run(ops.urgent_len(self.keys, agent_id))

    def peek(
        self, agent_id: Id, count: int = 10, *, dead: bool = False, urgent: bool = False
    ) -> list[bytes]:
        """Raw payloads at the head of the inbox (or dead-letter or urgent list), left
        in place."""
        return self.run(ops.peek(self.keys, agent_id, count, dead, urgent))

    def broadcast(self, message: Message) -> int:
        """Publish to every subscriber; returns how many received it."""
        return self.run(ops.broadcast(self.keys, message))

    def subscribe(self) -> Subscription:
        """Broadcast messages as they arrive: iterate, or :meth:`Subscription.get`."""
        return Subscription(self.redis, self.keys.broadcast, self.retry_for)

    def set_agent_state(self, agent: Agent) -> None:
        self.run(ops.set_state(self.keys.agent(agent.id), agent, self.state_form))

    def get_agent_state(self, agent_id: Id) -> Agent | None:
        return self.run(
            ops.get_state(self.keys.agent(canonical_id(agent_id)), Agent, self.state_form)
        )

    def set_task(self, task: Task) -> None:
        self.run(ops.set_state(self.keys.task(task.id), task, self.state_form))

    def get_task(self, task_id: Id) -> Task | None:
        return self.run(ops.get_state(self.keys.task(canonical_id(task_id)), Task, self.state_form))

    def agents(self) -> list[Agent]:
        """Every agent of the town (hash or JSON form); unreadable ones are logged."""
        return self.report(self.agents_listing())

    def tasks(self) -> list[Task]:
        """Every task of the town (hash or JSON form); unreadable ones are logged."""
        return self.report(self.tasks_listing())

    def resolve(self, agent: Id) -> str:
        """The id of an agent given by UUID, name, nickname or a unique id prefix."""
        if not isinstance(agent, str) or ops.looks_like_uuid(agent):
            return canonical_id(agent)
        return ops.resolve_agent(self.agents_listing().items, agent)

    def agents_listing(self) -> ops.Listing[Agent]:
        """Every readable agent, and a line for each key that is not one."""
        return self.run(ops.all_states(self.keys, Agent))

    def tasks_listing(self) -> ops.Listing[Task]:
        """Every readable task, and a line for each key that is not one."""
        return self.run(ops.all_states(self.keys, Task))

    def info(self, section: str | None = None) -> list[dict[str, Any]]:
        """``INFO`` from the server, or from each primary of a cluster."""
        nodes = self._cluster.get_primaries() if self.keys.cluster else [None]
        return [self._client(node).info(section) for node in nodes]


class Subscription:
    """Broadcast messages from one pub/sub channel; close it (or use ``with``) when done."""

    def __init__(
        self,
        client: redis.Redis | redis.RedisCluster,
        channel: str,
        retry_for: float = steps.RETRY_FOR,
    ) -> None:
        self.channel, self.retry_for = channel, retry_for
        self._pubsub: Any = client.pubsub(ignore_subscribe_messages=True)  # or ClusterPubSub
        self._pubsub.subscribe(channel)

    def get(self, timeout: float | None = None) -> Message | None:
        """The next valid broadcast, or None after ``timeout`` seconds (None: wait forever)."""
        wait = ops.BroadcastWait(self.channel, timeout, self.retry_for)
        while True:
            try:
                event = self._pubsub.get_message(timeout=wait.left())
            except steps.RETRYABLE as error:
                time.sleep(wait.retry_after(error))
                continue
            done, message = wait.handle(event)
            if done:
                return message

    def __iter__(self) -> Iterator[Message]:
        while True:
            message = self.get()
            if message is not None:
                yield message

    def close(self) -> None:
        self._pubsub.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
