"""The Channel behind Sentinel: a primary, a replica and three Sentinels on 127.0.0.1,
and a forced failover under a sending and a receiving agent."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sentinels import Deployment
from support import tinytownd, town_at, wait_until

from tinytownd import Message, Town, aio

ME, YOU = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b", "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@pytest.fixture
def sentinel(tmp: Path) -> Iterator[Deployment]:
    deployment = Deployment(tmp)
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.stop()


def test_a_sentinel_url_gives_a_channel_on_the_primary(tmp: Path, sentinel: Deployment) -> None:
    root = town_at(tmp / "far", sentinel.url())
    with Town.connect(root) as town:
        channel = town.channel()
        assert channel.retry_for == 60.0  # rides out a failover by default
        channel.send(Message.task(ME, YOU, "via sentinel"))

    async def receive() -> str:
        async with await aio.Town.connect(root) as town:
            got = await town.channel().receive(YOU, timeout=5)
            assert got is not None
            return str(got.body["description"])

    assert asyncio.run(receive()) == "via sentinel"
    assert redis.Redis(port=sentinel.data[0]).llen(f"tt:far:inbox:{YOU}") == 0
    status = tinytownd("status", "--dir", str(root))
    assert status.returncode == 0 and "reachable" in status.stdout


def test_a_bad_sentinel_url_is_one_line(tmp: Path) -> None:
    root = town_at(tmp / "far", "redis+sentinel://127.0.0.1:1")
    result = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(root))
    assert result.returncode == 2 and "redis+sentinel://[:password@]host:port" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("how", ["forced", "primary killed"])
def test_a_failover_under_a_sender_and_a_receiver_reaches_no_caller(
    tmp: Path, sentinel: Deployment, how: str
) -> None:
    root = town_at(tmp / "far", sentinel.url())
    sent: list[str] = []
    received: set[str] = set()
    errors: list[BaseException] = []
    slowest = [0.0]
    done = threading.Event()

    def send() -> None:
        try:
            with Town.connect(root) as town:
                channel = town.channel()
                for i in range(400):
                    message = Message.task(ME, YOU, f"job {i}")
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
                while not (done.is_set() and len(received) >= len(sent)):
                    message = channel.receive(YOU, timeout=1)
                    if message is not None:
                        received.add(message.id)
                    elif done.is_set():
                        break
        except BaseException as error:
            errors.append(error)

    before = sentinel.primary_port()
    workers = [threading.Thread(target=send), threading.Thread(target=receive)]
    for worker in workers:
        worker.start()
    wait_until(lambda: len(sent) >= 100, timeout=30, what="100 messages sent")
    if how == "forced":
        redis.Redis(port=sentinel.sentinels[0]).execute_command("SENTINEL", "FAILOVER", "mymaster")
    else:  # kill -9: the Sentinels notice after down-after-milliseconds (1 s here)
        sentinel.processes[0].kill()
    wait_until(lambda: sentinel.primary_port() != before, timeout=30, what="a new primary")
    failed_over_at = len(sent)
    for worker in workers:
        worker.join(timeout=120)
    assert not errors, errors  # the retry budget rode it out: no caller saw an error
    assert len(sent) == 400 and slowest[0] < 60
    after = set(sent[failed_over_at + 50 :])  # acknowledged once the new primary took over
    assert after <= received
    lost = len(set(sent) - received)
    print(f"failover ({how}): slowest send {slowest[0]:.2f} s; {lost} of 400 lost in the switch")
