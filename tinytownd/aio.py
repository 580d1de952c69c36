"""The Channel and Town for asyncio (redis.asyncio), with the same methods, awaited.

Every decision comes from :mod:`tinytownd.ops`, shared with the blocking flavour;
only the I/O calls differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Generator, Iterable
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, PipelineCommand
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.client import NEVER_DECODE
from redis.exceptions import RedisClusterException, ResponseError

from . import ops, resp, routing, steps
from .errors import UnsupportedServerError
from .messages import Message
from .peer import check_own
from .records import Agent, Task
from .steps import RETRYABLE
from .town import (
    UNREACHABLE,
    SentinelURL,
    TownCore,
    client_options,
    cluster_unusable,
    is_cluster_node,
    is_sentinel,
    prepare,
)
from .wire import Id, canonical_id

#: Replies as Redis sent them: the operations decode what they read themselves.
_RAW = {NEVER_DECODE: True}


async def _round_trip(
    pool: aioredis.ConnectionPool, commands: list[steps.Command], reply_by: float | None
) -> list[Any]:
    """:func:`tinytownd.channel._round_trip` for asyncio: the commands redis-py passes on
    as they are (``steps.AS_SENT``), on a pooled connection, without redis-py's
    per-command wrapper; an error reply raised once every reply has been read."""
    packed = resp.request(commands, pool.connection_kwargs)
    connection = await pool.get_connection()
    try:
        if packed is not None:
            await connection.send_packed_command([packed])
        elif len(commands) == 1:
            await connection.send_packed_command(connection.pack_command(*commands[0]))
        else:
            await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        error: ResponseError | None = None
        for command in commands:
            try:
                if reply_by is None:
                    reply = await connection.read_response(disable_decoding=True)
                else:
                    # Not read_response(timeout=): past it, that returns None as if
                    # Redis had answered nil, and keeps the connection.
                    async with asyncio.timeout(max(0.0, reply_by - time.monotonic())):
                        reply = await connection.read_response(disable_decoding=True)
            except ResponseError as refused:
                error, reply = error or refused, refused
            except TimeoutError:
                raise redis.TimeoutError("Redis did not answer by the receive's deadline") from None
            replies.append(steps.shaped(command, reply))
    except BaseException:
        await connection.disconnect()  # a reply may still arrive: never reuse this one
        raise
    finally:
        await pool.release(connection)
    if error is not None:
        raise error
    return replies


class Channel(ops.ChannelCore):
    """:class:`tinytownd.Channel` for asyncio; ``client`` is a ``redis.asyncio.Redis``."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        town: str,
        *,
        town_broadcast: bool = True,
        reliable: bool = False,
        state: str = "hash",
        retry_for: float = steps.RETRY_FOR,
    ) -> None:
        cluster = isinstance(client, aioredis.RedisCluster)
        if cluster and not hasattr(aioredis.RedisCluster, "pubsub"):
            # Before 8.0, redis.asyncio's cluster client had no pub/sub, and its nodes no
            # way to hand back a connection taken for a blocking pop.
            raise UnsupportedServerError(
                f"the asyncio Channel on a Redis Cluster needs redis-py 8.0 or newer "
                f"(this is {redis.__version__}): pip install -U 'redis>=8'"
            )
        super().__init__(town, town_broadcast, reliable, state, retry_for, cluster)
        self.redis = client
        # A cluster's slot map may be out of date (or, in a client not used yet, not
        # read at all): ask for it first.
        self._stale = cluster

    async def _execute(self, step: steps.Step) -> Any:
        attempt, failing_since = 0, 0.0
        while True:
            try:
                return await self._execute_once(step)
            except RETRYABLE as error:
                self._stale = self.keys.cluster
                steps.refuse_redirect(error, self.keys.cluster)
                failing_since = failing_since or time.monotonic()
                delay = steps.retry_delay(step, attempt, failing_since, self.retry_for)
                if delay is None:
                    raise
                attempt += 1
                await asyncio.sleep(delay)

    async def _execute_once(self, step: steps.Step) -> Any:
        if isinstance(step, steps.Pause):
            await asyncio.sleep(step.seconds)
            return None
        if self._stale:
            await self._refresh()
        if isinstance(step, steps.Primaries):
            return self._cluster.get_primaries() if self.keys.cluster else [None]
        if isinstance(step, steps.OnNode):
            return (await self._send([step.command], step.node))[0]
        if isinstance(step, steps.Pop):
            return step.value(await self._pop(step))
        if isinstance(step, list):
            if not self.keys.cluster:
                return await self._send(step)
            groups = routing.route(step, self._node_of)
            answered = await asyncio.gather(
                *(self._send([step[i] for i in positions], node) for node, positions in groups)
            )
            positions = [positions for _, positions in groups]
            return routing.merge(len(step), list(zip(positions, answered, strict=True)))
        node = self._node_of(routing.key_of(step)) if self.keys.cluster else None
        return (await self._send([step], node))[0]

    async def _pop(self, step: steps.Pop) -> Any:
        """The reply to a pop's last command; past its ``reply_by``, a TimeoutError."""
        reply_by = step.reply_by()
        node = self._node_of(step.key) if self.keys.cluster else None
        if node is None:
            return (await self._send(step.commands(), reply_by=reply_by))[-1]
        if reply_by is None:
            return (await self._send(step.commands(), node))[-1]
        try:  # a cancelled command makes redis-py drop its connection
            async with asyncio.timeout(max(0.0, reply_by - time.monotonic())):
                replies = await _send_on(node, step.commands())
        except TimeoutError:
            raise redis.TimeoutError("Redis did not answer by the receive's deadline") from None
        return replies[-1]

    async def _send(
        self,
        commands: list[steps.Command],
        node: Any | None = None,
        reply_by: float | None = None,
    ) -> list[Any]:
        """Replies to ``commands``, sent in one round trip (to ``node`` of a cluster); on
        one server, past ``reply_by`` (monotonic) without an answer, a TimeoutError."""
        if node is not None:
            pipeline = [PipelineCommand(i, *c, **_RAW) for i, c in enumerate(commands)]
            await node.execute_pipeline(pipeline)
            return routing.raise_first_error([command.result for command in pipeline])
        if all(command[0] in steps.AS_SENT for command in commands):
            assert isinstance(self.redis, aioredis.Redis)
            return await _round_trip(self.redis.connection_pool, commands, reply_by)
        if len(commands) == 1:
            return [await self.redis.execute_command(*commands[0], **_RAW)]
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command, **_RAW)
        return await pipe.execute()

    # -- a Redis Cluster: every command goes to its key's primary

    @property
    def _cluster(self) -> aioredis.RedisCluster:
        assert isinstance(self.redis, aioredis.RedisCluster)
        return self.redis

    def _node_of(self, key: Any | None) -> Any:
        if key is None:
            return self._cluster.get_default_node()
        return self._cluster.get_node_from_key(key)

    async def _refresh(self) -> None:
        """Ask the cluster for its slot map again (after MOVED, or a node that failed)."""
        try:
            await self._cluster.initialize()  # reads the map once; then does nothing
            await self._cluster.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as error:
            raise redis.ConnectionError(f"Redis Cluster unreachable: {error}") from error
        self._stale = False

    async def run(self, op: steps.Op[steps.T]) -> steps.T:
        """Run an operation from :mod:`tinytownd.ops` or :mod:`tinytownd.migrate`."""
        return await steps.run_async(op, self._execute)

    async def send(self, message: Message) -> None:
        await self.run(ops.send(self.keys, message))

    async def send_many(self, messages: Iterable[Message]) -> int:
        return await self.run(ops.send_many(self.keys, messages))

    async def receive(self, agent_id: Id, timeout: float | timedelta | None = 30) -> Message | None:
        return await self.run(self.receiving(agent_id, timeout))

    async def try_receive(self, agent_id: Id) -> Message | None:
        return await self.run(self.receiving(agent_id, 0))

    async def ack(self, agent_id: Id) -> None:
        """Reliable channels: done with the last message received for ``agent_id`` (the
        next receive for that agent acknowledges it too)."""
        held = self.held(agent_id)
        if held is not None:
            await self.run(ops.acknowledge(self.keys, agent_id, held))

    async def inbox_len(self, agent_id: Id) -> int:
        return await self.run(ops.inbox_len(self.keys, agent_id))

    async def send_urgent(self, message: Message) -> None:
        """Queue ``message`` on the recipient's urgent list, which every receive (ours and
        tinytown's) takes before the inbox, newest first: ``tt send --urgent``."""
        await self.run(ops.send_urgent(self.keys, message))

    async def urgent_len(self, agent_id: Id) -> int:
        return await self.run(ops.urgent_len(self.keys, agent_id))

    async def peek(
        self, agent_id: Id, count: int = 10, *, dead: bool = False, urgent: bool = False
    ) -> list[bytes]:
        return await self.run(ops.peek(self.keys, agent_id, count, dead, urgent))

    async def broadcast(self, message: Message) -> int:
        return await self.run(ops.broadcast(self.keys, message))

    def subscribe(self) -> Subscribing:
        """Listen to the town's broadcasts: ``async with ch.subscribe() as broadcasts:``,
        or ``broadcasts = await ch.subscribe()`` (then ``await broadcasts.close()``)."""
        return Subscribing(Subscription(self.redis, self.keys.broadcast, self.retry_for))

    async def set_agent_state(self, agent: Agent) -> None:
        await self.run(ops.set_state(self.keys.agent(agent.id), agent, self.state_form))

    async def get_agent_state(self, agent_id: Id) -> Agent | None:
        return await self.run(
            ops.get_state(self.keys.agent(canonical_id(agent_id)), Agent, self.state_form)
        )

    async def set_task(self, task: Task) -> None:
        await self.run(ops.set_state(self.keys.task(task.id), task, self.state_form))

    async def get_task(self, task_id: Id) -> Task | None:
        return await self.run(
            ops.get_state(self.keys.task(canonical_id(task_id)), Task, self.state_form)
        )

    async def agents(self) -> list[Agent]:
        """Every agent of the town (hash or JSON form); unreadable ones are logged."""
        return self.report(await self.agents_listing())

    async def tasks(self) -> list[Task]:
        """Every task of the town (hash or JSON form); unreadable ones are logged."""
        return self.report(await self.tasks_listing())

    async def resolve(self, agent: Id) -> str:
        """The id of an agent given by UUID, name, nickname or a unique id prefix."""
        if not isinstance(agent, str) or ops.looks_like_uuid(agent):
            return canonical_id(agent)
        return ops.resolve_agent((await self.agents_listing()).items, agent)

    async def agents_listing(self) -> ops.Listing[Agent]:
        """Every readable agent, and a line for each key that is not one."""
        return await self.run(ops.all_states(self.keys, Agent))

    async def tasks_listing(self) -> ops.Listing[Task]:
        """Every readable task, and a line for each key that is not one."""
        return await self.run(ops.all_states(self.keys, Task))


async def _send_on(node: ClusterNode, commands: list[steps.Command]) -> list[Any]:
    """Replies to ``commands`` on a connection of ``node`` taken for this call alone, and
    dropped if the call is cut short (a reply may still arrive: never reuse it)."""
    connection = node.acquire_connection()
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response(disable_decoding=True))
            except ResponseError as error:
                replies.append(error)
    except BaseException:
        await connection.disconnect()
        raise
    finally:
        node.release(connection)
    return routing.raise_first_error(replies)


class Subscription:
    """Broadcast messages as an async iterator; ``async with`` closes it."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        channel: str,
        retry_for: float = steps.RETRY_FOR,
    ) -> None:
        self.channel, self.retry_for = channel, retry_for
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)

    async def start(self) -> None:
        await self._pubsub.subscribe(self.channel)

    async def get(self, timeout: float | None = None) -> Message | None:
        wait = ops.BroadcastWait(self.channel, timeout, self.retry_for)
        while True:
            try:
                event = await self._pubsub.get_message(timeout=wait.left())
            except RETRYABLE as error:
                await asyncio.sleep(wait.retry_after(error))
                continue
            done, message = wait.handle(event)
            if done:
                return message

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            message = await self.get()
            if message is not None:
                yield message

    async def close(self) -> None:
        await self._pubsub.aclose()

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Subscribing:
    """What :meth:`Channel.subscribe` returns: await it, or use it with ``async with``;
    either way the subscription is registered with Redis before you get it."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription

    async def _started(self) -> Subscription:
        await self._subscription.start()
        return self._subscription

    def __await__(self) -> Generator[Any, None, Subscription]:
        return self._started().__await__()

    async def __aenter__(self) -> Subscription:
        return await self._started()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._subscription.close()


class OwnSocketConnection(aioredis.UnixDomainSocketConnection):
    """:class:`tinytownd.peer.OwnSocketConnection` for asyncio: refuses a server run by
    another user before anything, a password included, is sent."""

    async def _connect(self) -> None:
        # The base class sends AUTH inside _connect, so the check has to come first.
        async with asyncio.timeout(self.socket_connect_timeout):
            reader, writer = await asyncio.open_unix_connection(path=self.path)
        try:
            check_own(writer.get_extra_info("socket"), self.path)
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        await self.on_connect()


class Town(TownCore[aioredis.Redis | aioredis.RedisCluster, Channel]):
    """:class:`tinytownd.Town` for asyncio."""

    channel_class = Channel
    cluster_class = aioredis.RedisCluster

    @classmethod
    async def connect(
        cls, directory: str | Path = ".", *, start: bool = True, stop_on_exit: bool = False
    ) -> Town:
        config, paths = await asyncio.to_thread(prepare, directory, start)
        url, options = client_options(config, paths, aioredis.Redis)
        if url and is_sentinel(url):
            where = SentinelURL.parse(url)
            sentinel = AsyncSentinel(where.sentinels, socket_timeout=5, socket_connect_timeout=5)
            client = sentinel.master_for(
                where.service, db=where.db, password=where.password, **options
            )
        elif url:
            client = aioredis.Redis.from_url(url, **options)
        if url and not is_sentinel(url):
            with contextlib.suppress(*UNREACHABLE):
                if is_cluster_node(await client.info("cluster")):
                    await client.aclose()
                    client = aioredis.RedisCluster.from_url(url, **options)
                    try:
                        await client.initialize()
                    except RedisClusterException as error:
                        await client.aclose()
                        raise cluster_unusable(url, error) from None
        elif not url:
            pool = aioredis.ConnectionPool(
                connection_class=OwnSocketConnection,
                path=options.pop("unix_socket_path"),
                **options,
            )
            client = aioredis.Redis.from_pool(pool)
        return cls(config, paths, client, stop_on_exit)

    async def close(self) -> None:
        await self.redis.aclose()
        await asyncio.to_thread(self._stop_daemon)

    async def __aenter__(self) -> Town:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
