"""The Channel API against a real town, once with redis-py and once with redis.asyncio,
on the town's own local Redis and on a Redis Cluster (``redis.url`` naming one node).

Every case runs for both flavours through the same test body: ``channel`` is the
blocking Channel, or the asyncio one driven by an event loop. Cases marked
``local_only`` kill the town's Redis or use its socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from support import client, tinytownd

from tinytownd import Agent, AgentState, Message, Priority, StateError, Task, TaskState, Town, aio
from tinytownd.keys import TownKeys

ME = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b"


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


class Blocking:
    """Runs an asyncio object's coroutines to completion, so one test body serves both."""

    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target, self._runner = target, runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if inspect.isawaitable(result):
                result = self._runner.run(_awaited(result))
            return (
                Blocking(result, self._runner) if isinstance(result, aio.Subscription) else result
            )

        return call

    def __iter__(self) -> Iterator[Any]:
        while True:
            yield self.get()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "town" in metafunc.fixturenames:
        local_only = metafunc.definition.get_closest_marker("local_only") is not None
        kinds = ["local"] if local_only else ["local", "cluster", "sentinel", "tls"]
        metafunc.parametrize("town", kinds, indirect=True)


@pytest.fixture
def town(request: pytest.FixtureRequest, project: Path) -> Path:
    """The town "demo": running on its own Redis, or living on the session's cluster, its
    Sentinel setup's primary, or its TLS Redis."""
    url = None
    if request.param == "cluster":
        cluster = request.getfixturevalue("cluster")
        cluster.flush()
        url = cluster.url()
    elif request.param == "sentinel":
        url = request.getfixturevalue("sentinel_setup").url()
    elif request.param == "tls":
        url = request.getfixturevalue("tls_url")
    if url is not None:
        (project / "tinytown.toml").write_text(f'name = "demo"\n[redis]\nurl = "{url}"\n')
        if request.param != "cluster":
            client(project).flushall()
        return project
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    return project


def processing(town: Path, agent_id: str) -> str:
    """The name of the agent's processing list in this town (hash-tagged on a cluster)."""
    cluster = isinstance(client(town), redis.RedisCluster)
    return TownKeys("demo", cluster=cluster).processing(agent_id)


def subscribers(town: Path, channel: str) -> int:
    """How many subscribe to ``channel``: on a cluster, each node counts its own."""
    raw = client(town)
    if not isinstance(raw, redis.RedisCluster):
        return int(raw.pubsub_numsub(channel)[0][1])
    nodes = [raw.get_redis_connection(node) for node in raw.get_nodes()]
    return sum(int(node.pubsub_numsub(channel)[0][1]) for node in nodes)


@pytest.fixture(params=["sync", "asyncio"])
def channels(request: pytest.FixtureRequest, town: Path) -> Iterator[Callable[..., Any]]:
    """Makes channels of one flavour, each on its own connection, as separate processes
    would have; all are closed afterwards."""
    with contextlib.ExitStack() as stack:
        if request.param == "sync":

            def make(**options: Any) -> Any:
                return stack.enter_context(Town.connect(town)).channel(**options)

        else:
            runner = stack.enter_context(asyncio.Runner())

            def make(**options: Any) -> Any:
                connected = runner.run(aio.Town.connect(town))
                stack.callback(lambda: runner.run(connected.close()))
                return Blocking(connected.channel(**options), runner)

        yield make


@pytest.fixture
def channel(channels: Callable[..., Any]) -> Any:
    return channels()


def agent() -> str:
    return str(uuid.uuid4())


def test_messages_land_in_the_documented_inbox_key(channel: Any, town: Path) -> None:
    to = agent()
    channel.send(Message.task(ME, to, "Fix the bug in auth.rs"))
    raw = client(town).lrange(f"tt:demo:inbox:{to}", 0, -1)
    assert [json.loads(item)["description"] for item in raw] == ["Fix the bug in auth.rs"]


def test_urgent_and_high_jump_the_queue_normal_and_low_wait_in_order(channel: Any) -> None:
    to = agent()
    sent = [
        Message.task(ME, to, "normal-1"),
        Message.task(ME, to, "low-1", priority=Priority.LOW),
        Message.task(ME, to, "high-1", priority=Priority.HIGH),
        Message.task(ME, to, "urgent-1", priority=Priority.URGENT),
        Message.task(ME, to, "normal-2"),
        Message.task(ME, to, "urgent-2", priority=Priority.URGENT),
    ]
    for message in sent:
        channel.send(message)
    order = [channel.try_receive(to).body["description"] for _ in sent]
    # LPUSH puts the newest front-of-queue message first: among urgent/high, last in, first out.
    assert order == ["urgent-2", "urgent-1", "high-1", "normal-1", "low-1", "normal-2"]


def test_receive_returns_none_after_about_the_timeout(channel: Any) -> None:
    started = time.monotonic()
    assert channel.receive(agent(), timeout=0.3) is None
    assert 0.29 <= time.monotonic() - started < 3.0
    started = time.monotonic()
    assert channel.receive(agent(), timeout=timedelta(milliseconds=200)) is None
    assert 0.19 <= time.monotonic() - started < 3.0


def test_try_receive_on_an_empty_inbox_is_none_at_once(channel: Any) -> None:
    assert channel.try_receive(agent()) is None
    assert channel.inbox_len(agent()) == 0


def test_inbox_len_counts_waiting_messages(channel: Any) -> None:
    to = agent()
    channel.send_many([Message.ping(ME, to) for _ in range(5)])
    assert channel.inbox_len(uuid.UUID(to)) == 5


def test_blocking_receive_wakes_when_another_process_sends(channel: Any, town: Path) -> None:
    to = agent()
    sender = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time; from tinytownd import Town, Message; time.sleep(0.3); "
                f"channel = Town.connect({str(town)!r}).channel(); "
                f"channel.send(Message.query({ME!r}, {to!r}, 'ready?'))"
            ),
        ]
    )
    try:
        received = channel.receive(to, timeout=20)
    finally:
        sender.wait(20)
    assert received is not None and received.body == {"question": "ready?"}


def test_invalid_payloads_move_to_dead_letters_byte_for_byte(channel: Any, town: Path) -> None:
    to = agent()
    raw = client(town)
    garbage = [
        b"\xff\xfe not utf-8",
        b"not json",
        b"[1,2]",
        b'{"type":"dance","id":"x"}',
        Message.ping(ME, to).to_json().encode()[:40],
    ]
    raw.rpush(f"tt:demo:inbox:{to}", *garbage)
    channel.send(Message.task(ME, to, "the real one"))
    received = channel.receive(to, timeout=5)
    assert received is not None and received.body["description"] == "the real one"
    assert raw.lrange(f"tt:demo:dead:{to}", 0, -1) == garbage
    assert channel.peek(to, 10, dead=True) == garbage


def test_only_bad_payloads_time_out_within_the_same_timeout(channel: Any, town: Path) -> None:
    to = agent()
    client(town).rpush(f"tt:demo:inbox:{to}", b"junk")
    started = time.monotonic()
    assert channel.receive(to, timeout=0.3) is None
    assert time.monotonic() - started < 3.0
    assert client(town).llen(f"tt:demo:dead:{to}") == 1


def test_broadcast_reaches_every_subscriber(channel: Any) -> None:
    first, second = channel.subscribe(), channel.subscribe()
    try:
        message = Message.informational(ME, agent(), "deploy done")
        assert channel.broadcast(message) == 2
        assert first.get(timeout=5) == message
        assert second.get(timeout=5) == message
        assert first.get(timeout=0.1) is None
    finally:
        first.close()
        second.close()


def test_agent_state_round_trips(channel: Any, town: Path) -> None:
    worker = Agent(name="worker-1", cli="claude", state=AgentState.IDLE, tasks_completed=3)
    channel.set_agent_state(worker)
    assert channel.get_agent_state(worker.id) == worker
    assert channel.get_agent_state(uuid.UUID(worker.id)) == worker
    stored = client(town).hgetall(f"tt:demo:agent:{worker.id}")  # as tinytown 0.10 keeps it
    assert stored[b"name"] == b"worker-1" and stored[b"tasks_completed"] == b"3"
    assert channel.get_agent_state(agent()) is None
    assert worker in channel.agents()


def test_task_state_round_trips(channel: Any) -> None:
    task = Task(description="Fix it", state=TaskState.RUNNING, tags=("backend",))
    channel.set_task(task)
    assert channel.get_task(task.id) == task
    assert channel.get_task(agent()) is None
    assert task in channel.tasks()


def test_corrupt_state_is_a_clear_error_not_a_crash(channel: Any, town: Path) -> None:
    broken = agent()
    client(town).set(f"tt:demo:agent:{broken}", "{oops")
    with pytest.raises(StateError, match=f"tt:demo:agent:{broken} does not hold a valid agent"):
        channel.get_agent_state(broken)


def test_sync_and_asyncio_processes_coordinate(town: Path) -> None:
    worker = agent()
    script = f"""
import asyncio
from tinytownd import Message, aio

async def main():
    async with await aio.Town.connect({str(town)!r}) as town:
        channel = town.channel()
        task = await channel.receive({worker!r}, timeout=20)
        await channel.send(task.reply("task_done", task_id=task.id, result="fixed"))

asyncio.run(main())
"""
    helper = subprocess.Popen([sys.executable, "-c", script])
    try:
        with Town.connect(town) as connected:
            channel = connected.channel()
            task = Message.task(ME, worker, "fix the flaky test")
            channel.send(task)
            answer = channel.receive(ME, timeout=20)
    finally:
        assert helper.wait(30) == 0
    assert answer is not None
    assert (answer.type, answer.correlation_id, answer.body["result"]) == (
        "task_done",
        task.id,
        "fixed",
    )


def test_town_scoped_broadcast_channel(town: Path) -> None:
    (town / "tinytown.toml").write_text(
        (town / "tinytown.toml").read_text() + '\n[channel]\nbroadcast = "town"\n'
    )
    with Town.connect(town) as connected:
        channel = connected.channel()
        assert channel.keys.broadcast == "tt:demo:broadcast"
        with channel.subscribe() as subscription:
            assert subscribers(town, "tt:demo:broadcast") == 1
            channel.broadcast(Message.ping(ME, ME))
            assert subscription.get(timeout=5) is not None


@pytest.mark.local_only
def test_town_connect_starts_the_daemon(project: Path) -> None:
    with Town.connect(project) as connected:
        assert connected.name == "demo"
        assert connected.redis.ping()


@pytest.mark.local_only
def test_channel_accepts_any_redis_client(town: Path) -> None:
    from tinytownd import Channel

    plain = redis.Redis(unix_socket_path=str(town / "redis.sock"), decode_responses=True)
    channel = Channel(plain, town="demo")
    to = agent()
    plain.rpush(f"tt:demo:inbox:{to}", b"\xff")  # still dead-lettered byte for byte
    channel.send(Message.ping(ME, to))
    assert channel.receive(to, timeout=1) is not None
    assert client(town).lrange(f"tt:demo:dead:{to}", 0, -1) == [b"\xff"]


@pytest.mark.parametrize("name", ["a:b", "a*", "a?", "a[b", "a b", ""])
def test_every_entry_point_refuses_unsafe_town_names(name: str) -> None:
    from tinytownd import Channel as SyncChannel
    from tinytownd import ConfigError, aio

    fake = redis.Redis(unix_socket_path="/nonexistent")  # never contacted
    with pytest.raises(ConfigError, match="invalid town name"):
        SyncChannel(fake, town=name)
    with pytest.raises(ConfigError, match="invalid town name"):
        aio.Channel(aio.aioredis.Redis(unix_socket_path="/nonexistent"), town=name)


@pytest.mark.local_only
def test_receive_never_outlives_its_timeout_and_reconnects_by_itself(
    channel: Any, town: Path
) -> None:
    import os
    import signal

    from support import serving_pid, status, wait_until

    to = agent()
    daemon = status(town)["daemon_pid"]
    os.kill(daemon, signal.SIGSTOP)  # nobody restarts Redis while we look
    try:
        os.kill(serving_pid(town), signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError):
            channel.receive(to, timeout=1.0)
        assert time.monotonic() - started < 2.5  # not 1 s per retry
    finally:
        os.kill(daemon, signal.SIGCONT)
    wait_until(lambda: serving_pid(town), what="restart")
    channel.send(Message.ping(ME, to))  # the same channel, reconnected
    assert channel.receive(to, timeout=5) is not None


@pytest.mark.local_only
def test_a_subscription_survives_a_redis_crash(channel: Any, town: Path) -> None:
    import os
    import signal

    from support import serving_pid, wait_until

    subscription = channel.subscribe()
    try:
        old = serving_pid(town)
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: serving_pid(town) != old, what="restart")
        assert subscription.get(timeout=0.5) is None  # reconnects and resubscribes
        wait_until(
            lambda: client(town).pubsub_numsub("tt:demo:broadcast")[0][1] == 1,
            what="resubscribed",
        )
        message = Message.ping(ME, agent())
        channel.broadcast(message)
        assert subscription.get(timeout=5) == message
    finally:
        subscription.close()


def test_a_10_mb_message_round_trips(channel: Any) -> None:
    to = agent()
    big = Message.custom(ME, to, "blob", "x" * 10_000_000)
    channel.send(big)
    assert channel.receive(to, timeout=10) == big


def test_reliable_receive_keeps_a_message_until_the_next_receive(
    channels: Callable[..., Any], town: Path
) -> None:
    to, raw = agent(), client(town)
    first = channels(reliable=True)
    first.send(Message.task(ME, to, "one"))
    first.send(Message.task(ME, to, "two"))
    one = first.receive(to, timeout=5)
    assert one.body["description"] == "one"
    assert raw.lrange(processing(town, to), 0, -1) == [one.to_json().encode()]
    two = first.receive(to, timeout=5)  # asking for the next acknowledges "one"
    assert two.body["description"] == "two"
    assert raw.llen(processing(town, to)) == 1
    first.ack(to)
    assert raw.llen(processing(town, to)) == 0
    assert first.receive(to, timeout=0.1) is None


def test_reliable_receive_redelivers_what_a_crashed_receiver_held(
    channels: Callable[..., Any],
) -> None:
    to = agent()
    crashed = channels(reliable=True)
    crashed.send(Message.task(ME, to, "half done"))
    crashed.send(Message.task(ME, to, "next"))
    taken = crashed.receive(to, timeout=5)
    # that receiver dies without asking for more; a new one starts for the same agent
    again = channels(reliable=True)
    assert again.receive(to, timeout=5) == taken
    assert again.receive(to, timeout=5).body["description"] == "next"
    assert again.try_receive(to) is None


def test_reliable_receive_dead_letters_bad_payloads_too(
    channels: Callable[..., Any], town: Path
) -> None:
    to, raw = agent(), client(town)
    reliable = channels(reliable=True)
    raw.rpush(f"tt:demo:inbox:{to}", b"\xffjunk")
    reliable.send(Message.ping(ME, to))
    assert reliable.receive(to, timeout=5).type == "ping"
    assert raw.lrange(f"tt:demo:dead:{to}", 0, -1) == [b"\xffjunk"]
    assert raw.lrange(processing(town, to), 0, -1) != [b"\xffjunk"]


def test_an_error_reply_leaves_the_connection_in_step(channel: Any, town: Path) -> None:
    """A refused command in the middle of a pipeline raises once every reply is read, so
    the next command gets its own reply, not one left over."""
    to, wrong = agent(), f"{{{agent()}}}:a-list"
    client(town).rpush(wrong, "x")

    def refused_between_two() -> Any:
        return (yield [("LLEN", wrong), ("HGETALL", wrong), ("LLEN", wrong)])

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        channel.run(refused_between_two())
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        channel.run(_one(("HGETALL", wrong)))
    assert channel.inbox_len(to) == 0
    channel.send(Message.ping(ME, to))
    assert channel.inbox_len(to) == 1
    client(town).delete(wrong)


def _one(command: tuple[Any, ...]) -> Any:
    return (yield command)


@pytest.mark.local_only
def test_one_process_can_wait_on_more_inboxes_than_redis_py_pools_by_default(
    town: Path,
) -> None:
    """redis-py 8 caps a connection pool at 100, and each waiting receive holds a
    connection: Town's clients lift the cap, so 150 agents can wait in one process."""

    async def wait_on_many() -> list[Any]:
        async with await aio.Town.connect(town) as connected:
            channel = connected.channel()
            agents = [agent() for _ in range(150)]
            waiting = [asyncio.create_task(channel.receive(a, timeout=20)) for a in agents]
            await asyncio.sleep(0.5)  # every receive is waiting now
            await channel.send_many([Message.ping(ME, a) for a in agents])
            return await asyncio.gather(*waiting)

    received = asyncio.run(wait_on_many())
    assert len(received) == 150 and all(m is not None and m.type == "ping" for m in received)
