"""A town on a real Redis Cluster (three primaries, each with a replica, on 127.0.0.1).

The Channel matrix runs on it in ``test_channel.py``; here: what only a cluster has.
Keys spread over every primary, tinytown's own key names, urgent lists in another slot
than the inbox, moving keys between slots, and a primary killed under a sender and a
reliable receiver.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from clusters import Cluster
from support import running, tinytownd, wait_until

from tinytownd import Agent, Message, Task, Town, aio
from tinytownd.keys import TownKeys

ME = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b"


def agent() -> str:
    return str(uuid.uuid4())


@pytest.fixture
def shared(cluster: Cluster, tmp: Path) -> Path:
    """The town "demo" on the session's cluster, flushed; its URL names one node."""
    cluster.flush()
    root = tmp / "demo"
    root.mkdir()
    (root / "tinytown.toml").write_text(f'name = "demo"\n[redis]\nurl = "{cluster.url()}"\n')
    return root


def primaries_holding(cluster: Cluster, pattern: str) -> int:
    """On how many primaries some key matches ``pattern``."""
    return sum(
        1 for port in cluster.current_primaries() if list(cluster.node(port).scan_iter(pattern))
    )


def test_a_url_naming_one_node_follows_the_whole_cluster(shared: Path, cluster: Cluster) -> None:
    names = [f"worker-{n}" for n in range(40)]  # 12 left a primary empty 2% of the time
    with Town.connect(shared) as town:
        assert isinstance(town.redis, redis.RedisCluster) and town.cluster
        channel = town.channel()
        assert channel.retry_for == 60.0  # rides out a failover by default
        for name in names:
            channel.set_agent_state(Agent(name=name, cli="claude"))
            channel.set_task(Task(description=f"for {name}"))
    assert primaries_holding(cluster, "tt:demo:agent:*") == 3  # spread over every primary
    listed = tinytownd("agents", "--json", "--dir", str(shared))
    assert listed.returncode == 0, listed.stderr
    assert sorted(a["name"] for a in json.loads(listed.stdout)["agents"]) == sorted(names)
    tasks = tinytownd("tasks", "--json", "--dir", str(shared))
    assert len(json.loads(tasks.stdout)["tasks"]) == len(names)
    status = tinytownd("status", "--dir", str(shared))
    assert status.returncode == 0, status.stderr
    assert "a Redis Cluster of 3 primaries, state ok, 16384 of 16384 slots ok" in status.stdout


def test_the_cli_sends_by_name_and_reads_an_inbox_on_a_cluster(shared: Path) -> None:
    with Town.connect(shared) as town:
        worker = Agent(name="worker-1", cli="claude")
        town.channel().set_agent_state(worker)
    sent = tinytownd("send", "--to", "worker-1", "--type", "task", "Fix it", "--dir", str(shared))
    assert sent.returncode == 0, sent.stderr
    urgent = tinytownd(
        "send", "--to", "worker-1", "--type", "task", "--urgent", "Now", "--dir", str(shared)
    )
    assert urgent.returncode == 0, urgent.stderr
    inbox = tinytownd("inbox", "worker-1", "--json", "--dir", str(shared))
    assert inbox.returncode == 0, inbox.stderr
    shown = json.loads(inbox.stdout)
    assert shown["length"] == 1 and shown["urgent"]["length"] == 1
    top = tinytownd("top", "--once", "--json", "--dir", str(shared))
    assert top.returncode == 0, top.stderr
    (row,) = json.loads(top.stdout)["agents"]
    assert (row["name"], row["inbox"], row["urgent"]) == ("worker-1", 1, 1)


def test_inboxes_keep_tinytowns_names_and_processing_lists_their_inboxs_slot(
    shared: Path, cluster: Cluster
) -> None:
    to, raw = agent(), cluster.client()
    with Town.connect(shared) as town:
        channel = town.channel(reliable=True)
        channel.send(Message.task(ME, to, "inbox"))
        channel.send_urgent(Message.task(ME, to, "urgent"))
        assert raw.llen(f"tt:demo:inbox:{to}") == 1  # what a Rust agent reads
        assert raw.llen(f"tt:demo:urgent:{to}") == 1
        first = channel.receive(to, timeout=2)
        second = channel.receive(to, timeout=2)
    assert first is not None and first.body["description"] == "urgent"
    assert second is not None and second.body["description"] == "inbox"
    keys = TownKeys("demo", cluster=True)
    assert keys.processing(to) == f"tt:demo:processing:{{tt:demo:inbox:{to}}}"
    assert raw.keyslot(keys.processing(to)) == raw.keyslot(keys.inbox(to))
    assert raw.keyslot(keys.urgent_processing(to)) == raw.keyslot(keys.urgent(to))
    assert raw.lrange(keys.processing(to), 0, -1) == [second.to_json().encode()]
    assert raw.llen(keys.urgent_processing(to)) == 0  # acknowledged by the second receive


@pytest.mark.parametrize("flavour", ["sync", "asyncio"])
def test_an_urgent_message_reaches_a_receiver_already_waiting_on_the_inbox(
    shared: Path, flavour: str
) -> None:
    to = agent()

    def urgent_later() -> None:
        time.sleep(0.3)
        with Town.connect(shared) as town:
            town.channel().send_urgent(Message.task(ME, to, "drop everything"))

    sender = threading.Thread(target=urgent_later)
    sender.start()
    try:
        if flavour == "sync":
            with Town.connect(shared) as town:
                got = town.channel().receive(to, timeout=10)
        else:

            async def receive() -> Message | None:
                async with await aio.Town.connect(shared) as town:
                    return await town.channel(reliable=True).receive(to, timeout=10)

            got = asyncio.run(receive())
    finally:
        sender.join()
    assert got is not None and got.body["description"] == "drop everything"


def test_rename_town_moves_every_key_across_slots_and_finishes_a_stopped_run(
    shared: Path, cluster: Cluster
) -> None:
    raw = cluster.client()
    old = TownKeys("old")
    ids = [agent() for _ in range(30)]
    for n, agent_id in enumerate(ids):
        raw.rpush(old.inbox(agent_id), f"message {n}", "second")
        raw.hset(old.agent(agent_id), mapping={"name": f"a{n}", "state": "idle"})
    # A run stopped between RESTORE and DEL left a copy of one key already in place...
    raw.restore(TownKeys("demo").inbox(ids[0]), 0, raw.dump(old.inbox(ids[0])))
    # ...and a different key already holds the new name of another: a conflict.
    raw.rpush(TownKeys("demo").inbox(ids[1]), "somebody else's")
    result = tinytownd("migrate", "--rename-town", "old", "--force", "--json", "--dir", str(shared))
    assert result.returncode in (0, 1), result.stderr
    report = json.loads(result.stdout)
    assert len(report["moved"]) == 59 and len(report["conflicts"]) == 1
    new = TownKeys("demo")
    for n, agent_id in enumerate(ids[2:], start=2):
        assert raw.lrange(new.inbox(agent_id), 0, -1) == [f"message {n}".encode(), b"second"]
        assert raw.hgetall(new.agent(agent_id))[b"name"] == f"a{n}".encode()
    assert raw.lrange(new.inbox(ids[0]), 0, -1) == [b"message 0", b"second"]  # once only
    assert raw.lrange(new.inbox(ids[1]), 0, -1) == [b"somebody else's"]  # left alone
    assert raw.lrange(old.inbox(ids[1]), 0, -1) == [b"message 1", b"second"]  # and kept
    assert [k for k in raw.scan_iter("tt:old:*", target_nodes=raw.PRIMARIES)] == [
        old.inbox(ids[1]).encode()
    ]
    again = tinytownd("migrate", "--rename-town", "old", "--force", "--json", "--dir", str(shared))
    assert json.loads(again.stdout)["moved"] == []  # idempotent


def test_migrate_state_converts_every_key_on_every_primary(shared: Path, cluster: Cluster) -> None:
    with Town.connect(shared) as town:
        channel = town.channel()
        for n in range(10):
            channel.set_agent_state(Agent(name=f"w{n}", cli="claude"))
    result = tinytownd("migrate", "--state", "json", "--force", "--json", "--dir", str(shared))
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)["converted"]) == 10
    raw = cluster.client()
    types = {raw.type(k) for k in raw.scan_iter("tt:demo:agent:*", target_nodes=raw.PRIMARIES)}
    assert types == {b"string"}


@pytest.fixture
def own_cluster(tmp: Path) -> Iterator[Cluster]:
    """A cluster of this test's own, for killing one of its primaries."""
    (tmp / "cluster").mkdir()
    with running(Cluster(tmp / "cluster")) as servers:
        yield servers


def test_a_primary_killed_under_a_sender_and_a_reliable_receiver_reaches_no_caller(
    tmp: Path, own_cluster: Cluster
) -> None:
    root = tmp / "far"
    root.mkdir()
    (root / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{own_cluster.url()}"\n')
    receivers = [agent() for _ in range(6)]  # inboxes on every primary
    sent: list[str] = []
    received: set[str] = set()
    errors: list[BaseException] = []
    slowest = [0.0]
    done = threading.Event()

    def send() -> None:
        try:
            with Town.connect(root) as town:
                channel = town.channel()
                for i in range(300):
                    message = Message.task(ME, receivers[i % 6], f"job {i}")
                    began = time.monotonic()
                    channel.send(message)
                    slowest[0] = max(slowest[0], time.monotonic() - began)
                    sent.append(message.id)
                    time.sleep(0.01)
        except BaseException as error:
            errors.append(error)
        finally:
            done.set()

    def receive() -> None:
        try:
            with Town.connect(root) as town:
                channel = town.channel(reliable=True)
                idle = 0
                while idle < 3:
                    got = [channel.receive(who, timeout=0.2) for who in receivers]
                    received.update(m.id for m in got if m is not None)
                    idle = idle + 1 if done.is_set() and not any(got) else 0
                for who in receivers:
                    channel.ack(who)
        except BaseException as error:
            errors.append(error)

    workers = [threading.Thread(target=send), threading.Thread(target=receive)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(sent) >= 60, timeout=30, what="60 messages sent")
    victim = own_cluster.primary_ports[1]
    own_cluster.kill(victim)  # kill -9; its replica takes over after cluster-node-timeout
    killed_at = len(sent)
    wait_until(own_cluster.ready, timeout=60, what="the replica promoted")
    for worker in workers:
        worker.join(timeout=180)
    assert not errors, errors  # the retry budget rode the failover out
    assert len(sent) == 300 and slowest[0] < 60
    # Replication is asynchronous: what the dead primary acknowledged in its last
    # moments may not have reached its replica. Everything sent after it is there.
    assert set(sent[killed_at + 30 :]) <= received
    lost = len(set(sent) - received)
    print(f"cluster failover: slowest send {slowest[0]:.2f} s; {lost} of 300 lost in the switch")


def test_bench_puts_the_cluster_next_to_the_local_socket(tmp: Path, cluster: Cluster) -> None:
    result = tinytownd(
        "bench", "--n", "100", "--url", cluster.url(), "--json", "--dir", str(tmp), timeout=300
    )
    assert result.returncode == 0, result.stderr
    remote = json.loads(result.stdout)["remote"]
    assert remote["kind"] == "Redis Cluster, 3 primaries"
    assert [row["operation"] for row in remote["rows"]][:2] == [
        "remote send",
        "remote receive (waiting)",
    ]
    assert all(row["p50_us"] > 0 and row["ratio"] > 0 for row in remote["rows"])
    assert not list(
        cluster.client().scan_iter("tt:bench-*", target_nodes=redis.RedisCluster.PRIMARIES)
    )


@pytest.mark.parametrize("command", [["save"], ["restore", "tinytown.toml"]])
def test_backups_of_a_remote_town_are_refused_in_one_line(shared: Path, command: list[str]) -> None:
    result = tinytownd(*command, "--dir", str(shared))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "only a town it runs here" in result.stderr


def test_a_plain_client_of_one_node_gets_one_line_not_moved_tracebacks(cluster: Cluster) -> None:
    from tinytownd import Channel
    from tinytownd.errors import UnsupportedServerError

    cluster.flush()
    one_node = redis.Redis(port=cluster.primary_ports[0])
    channel = Channel(one_node, "demo", retry_for=600)  # retrying would outlast the test
    raw = cluster.client()
    elsewhere = next(  # an agent whose inbox another primary serves
        a
        for a in (agent() for _ in range(100))
        if raw.get_node_from_key(f"tt:demo:inbox:{a}").port != cluster.primary_ports[0]
    )
    with pytest.raises(UnsupportedServerError, match="Redis answered MOVED: this client talks"):
        channel.send(Message.ping(ME, elsewhere))  # at once: never retried
    one_node.close()


def test_the_asyncio_channel_on_a_cluster_names_the_redis_py_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from redis.asyncio import RedisCluster

    from tinytownd.errors import UnsupportedServerError

    client = RedisCluster(host="127.0.0.1", port=1)  # never contacted
    monkeypatch.delattr(RedisCluster, "pubsub")  # as in redis-py before 8.0
    with pytest.raises(UnsupportedServerError, match=r"needs redis-py 8\.0 or newer"):
        aio.Channel(client, "demo")
