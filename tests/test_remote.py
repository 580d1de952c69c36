"""Beyond one machine: the same Channel against an existing Redis reached by URL."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import free_port, tinytownd, wait_until

from tinytownd import Message, Town, aio
from tinytownd.config import Config
from tinytownd.daemon.engine import find_binary
from tinytownd.errors import ClusterUnusableError

PASSWORD = "s3cret-for-tests"
ME, YOU = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b", "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


@pytest.fixture
def remote_url(tmp: Path) -> Iterator[str]:
    """A second, plain redis-server on 127.0.0.1 that requires a password."""
    port = free_port()
    server = subprocess.Popen(
        [
            find_binary(Config(name="x")).path,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--requirepass",
            PASSWORD,
            "--dir",
            str(tmp),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"redis://:{PASSWORD}@127.0.0.1:{port}/0"
        wait_until(lambda: redis.Redis.from_url(url).ping(), what="remote redis")
        yield url
    finally:
        server.kill()
        server.wait()


def test_redis_url_in_tinytown_toml_points_the_channel_at_that_server(
    tmp: Path, remote_url: str
) -> None:
    (tmp / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{remote_url}"\n')
    with Town.connect(tmp) as town:
        town.channel().send(Message.ping(ME, YOU))
    assert redis.Redis.from_url(remote_url).llen(f"tt:far:inbox:{YOU}") == 1
    assert not (tmp / ".tt").exists() and not (tmp / "redis.sock").exists()


@pytest.mark.parametrize("variable", ["TINYTOWN_REDIS_URL", "REDIS_URL"])
def test_environment_urls_work_for_sync_and_asyncio(
    tmp: Path, remote_url: str, variable: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, remote_url)
    (tmp / "tinytown.toml").write_text('name = "far"\n')

    async def send() -> None:
        async with await aio.Town.connect(tmp) as town:
            await town.channel().send(Message.task(ME, YOU, "over tcp"))

    asyncio.run(send())
    with Town.connect(tmp) as town:
        received = town.channel().receive(YOU, timeout=5)
    assert received is not None and received.body == {"description": "over tcp"}


def test_wrong_password_is_an_authentication_error(tmp: Path, remote_url: str) -> None:
    (tmp / "tinytown.toml").write_text(
        f'name = "far"\n[redis]\nurl = "{remote_url.replace(PASSWORD, "wrong")}"\n'
    )
    with Town.connect(tmp) as town, pytest.raises(redis.AuthenticationError):
        town.channel().inbox_len(YOU)


def test_start_explains_there_is_nothing_local_to_supervise(tmp: Path, remote_url: str) -> None:
    (tmp / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{remote_url}"\n')
    result = tinytownd("start", "--dir", str(tmp))
    assert result.returncode == 0
    assert "nothing local to supervise" in result.stdout
    assert PASSWORD not in result.stdout  # the password is never echoed
    assert not (tmp / ".tt").exists()


def test_status_and_stop_speak_of_the_remote_server(tmp: Path, remote_url: str) -> None:
    (tmp / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{remote_url}"\n')
    shown = tinytownd("status", "--dir", str(tmp))
    assert shown.returncode == 0
    assert "remote (nothing local to supervise)" in shown.stdout and "reachable" in shown.stdout
    assert PASSWORD not in shown.stdout
    stopped = tinytownd("stop", "--dir", str(tmp))
    assert stopped.returncode == 0 and "nothing local to stop" in stopped.stdout


WINDOWS_LIKE = """
import os, sys
# What Windows lacks: POSIX-only modules and process/user calls.
for name in ("fcntl", "pwd", "grp", "termios", "resource"):
    sys.modules[name] = None
for name in ("geteuid", "getuid", "getpgid", "killpg", "pidfd_open", "fork"):
    if hasattr(os, name):
        delattr(os, name)
import asyncio
import json
from tinytownd import Message, Town, aio
me, you = {me!r}, {you!r}
with Town.connect({root!r}) as town:
    town.channel().send(Message.task(me, you, "sync"))
async def main():
    async with await aio.Town.connect({root!r}) as town:
        got = await town.channel().receive(you, timeout=5)
        print(got.body["description"])
asyncio.run(main())
print(sorted(m for m in sys.modules if m.startswith("tinytownd.daemon") or m == "psutil"))
"""


def test_the_channel_needs_nothing_the_daemon_needs(tmp: Path, remote_url: str) -> None:
    """Windows has no fcntl, pwd or process groups: only the daemon needs them."""
    (tmp / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{remote_url}"\n')
    script = WINDOWS_LIKE.format(me=ME, you=YOU, root=str(tmp))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["sync", "[]"]


@pytest.mark.parametrize(
    ("variable", "unset"),
    [("REDIS_URL", "unset REDIS_URL"), ("TINYTOWN_REDIS_URL", "unset TINYTOWN_REDIS_URL")],
)
def test_every_command_says_which_variable_chose_the_remote_redis(
    tmp: Path, remote_url: str, variable: str, unset: str
) -> None:
    (tmp / "tinytown.toml").write_text('name = "far"\n')
    env = {variable: remote_url}
    started = tinytownd("start", "--dir", str(tmp), env=env)
    assert started.returncode == 0
    assert f"(from ${variable})" in started.stdout and unset in started.stdout
    assert PASSWORD not in started.stdout  # redacted
    assert not (tmp / ".tt").exists()
    sent = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(tmp), env=env)
    assert sent.returncode == 0 and f"(from ${variable})" in sent.stderr
    shown = tinytownd("status", "--dir", str(tmp), env=env)
    assert f"(from ${variable})" in shown.stdout


def test_a_url_naming_the_towns_own_socket_is_the_local_town(project: Path) -> None:
    env = {"REDIS_URL": f"unix://{project / 'redis.sock'}"}
    assert tinytownd("start", "--dir", str(project), env=env).returncode == 0
    assert json.loads(tinytownd("status", "--json", "--dir", str(project)).stdout)["state"] == (
        "running"
    )


@pytest.fixture
def cluster_node_url(tmp: Path) -> Iterator[str]:
    """A redis-server with cluster mode on that serves no slot: a cluster not set up yet."""
    port, bus = free_port(), free_port()  # the bus port is given: port + 10000 may not exist
    node = tmp / "node"
    node.mkdir()
    server = subprocess.Popen(
        [
            *(find_binary(Config(name="x")).path, "--port", str(port), "--bind", "127.0.0.1"),
            *("--cluster-enabled", "yes", "--cluster-port", str(bus), "--dir", str(node)),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis.Redis.from_url(url).ping(), what="cluster node")
        yield url
    finally:
        server.kill()
        server.wait()


def test_a_cluster_that_serves_no_slot_is_one_line_never_a_wrong_answer(
    tmp: Path, cluster_node_url: str
) -> None:
    (tmp / "tinytown.toml").write_text(f'name = "far"\n[redis]\nurl = "{cluster_node_url}"\n')
    with pytest.raises(ClusterUnusableError, match="cannot serve the town: All slots"):
        Town.connect(tmp)

    async def connect() -> None:
        await aio.Town.connect(tmp)

    with pytest.raises(ClusterUnusableError):
        asyncio.run(connect())
    for command in (["agents"], ["send", "--to", YOU, "--type", "ping"]):
        result = tinytownd(*command, "--dir", str(tmp))
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Redis Cluster at redis://127.0.0.1" in result.stderr
        assert "CLUSTER INFO" in result.stderr
