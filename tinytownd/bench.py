"""``tinytownd bench``: measure the seed's latency table on this machine.

Every Channel operation is timed next to its floor, the raw redis-py command
that moves the same bytes over the same connection, so the ratio shows what
the Python layer adds. The two alternate call by call to share the noise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from . import hashform, resp, wire
from .channel import Channel
from .config import Config, load, redact_url
from .daemon import control, engine, redis_admin
from .daemon.state import daemon_pid
from .messages import Message
from .paths import ProjectPaths
from .records import Agent, Task

Progress = Callable[[str, float], None]


@dataclass
class Row:
    operation: str
    p50_us: float
    p99_us: float
    floor: str = ""
    floor_p50_us: float = 0.0
    ratio: float = 0.0


def _timed(call: Callable[[], Any], n: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for _ in range(n):
        started = clock()
        call()
        samples.append((clock() - started) / 1000)
    return samples


def _p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def compare(
    name: str, ours: Callable[[], Any], floor_name: str, floor: Callable[[], Any], n: int
) -> Row:
    """Time ``ours`` and ``floor`` call by call in turn (so both see the same machine
    state, which on a shared VM can change by 2x within seconds); p50/p99 in µs."""
    clock = time.perf_counter_ns
    _timed(ours, min(200, n))  # warm up both paths
    _timed(floor, min(200, n))
    mine: list[float] = []
    raw: list[float] = []
    for _ in range(n):
        started = clock()
        ours()
        middle = clock()
        floor()
        mine.append((middle - started) / 1000)
        raw.append((clock() - middle) / 1000)
    p50, floor_p50 = _p(mine, 0.5), _p(raw, 0.5)
    return Row(name, p50, _p(mine, 0.99), floor_name, floor_p50, p50 / floor_p50)


def channel_rows(channel: Channel, n: int, progress: Progress, label: str = "") -> list[Row]:
    r = channel.redis
    agent, sender = str(uuid.uuid4()), str(uuid.uuid4())
    message = Message.task(sender, agent, "Fix the bug in auth.rs")
    payload = message.to_json().encode()
    # Each floor key is hash-tagged with its real key's name: on a cluster both live in
    # one slot, so raw redis-py and the Channel talk to the same node.
    inbox, floor_list = channel.keys.inbox(agent), f"{{{channel.keys.inbox(agent)}}}:floor"
    reliable = Channel(r, channel.keys.town, reliable=True)
    worker = Agent(name="worker-1", cli="claude")
    task = Task(description="Fix the bug in auth.rs", tags=("backend",))
    rows: list[Row] = []
    steps: list[tuple[str, Callable[[], Any], str, Callable[[], Any], Callable[[], None]]] = [
        (
            "send",
            lambda: channel.send(message),
            "RPUSH",
            lambda: r.rpush(floor_list, payload),
            lambda: None,
        ),
        (
            "receive (waiting)",
            lambda: channel.receive(agent, timeout=1),
            "BLPOP",
            lambda: r.blpop([floor_list], timeout=1),
            lambda: _fill(r, inbox, floor_list, payload, n),
        ),
        (
            "try_receive",
            lambda: channel.try_receive(agent),
            "LPOP",
            lambda: r.lpop(floor_list),
            lambda: _fill(r, inbox, floor_list, payload, n),
        ),
        (
            "receive (reliable)",
            lambda: reliable.receive(agent, timeout=1),
            "BLPOP",
            lambda: r.blpop([floor_list], timeout=1),
            lambda: _fill(r, inbox, floor_list, payload, n),
        ),
        (
            "agent state set",
            lambda: channel.set_agent_state(worker),
            "MULTI HSET",
            _raw_hash_write(r, f"{{{channel.keys.agent(worker.id)}}}:floor", worker),
            lambda: None,
        ),
        (
            "agent state get",
            lambda: channel.get_agent_state(worker.id),
            "HGETALL",
            lambda: r.hgetall(f"{{{channel.keys.agent(worker.id)}}}:floor"),
            lambda: None,
        ),
        (
            "task state set",
            lambda: channel.set_task(task),
            "MULTI HSET",
            _raw_hash_write(r, f"{{{channel.keys.task(task.id)}}}:floor", task),
            lambda: None,
        ),
        (
            "task state get",
            lambda: channel.get_task(task.id),
            "HGETALL",
            lambda: r.hgetall(f"{{{channel.keys.task(task.id)}}}:floor"),
            lambda: None,
        ),
    ]
    try:
        for index, (name, ours, floor_name, floor, prepare) in enumerate(steps):
            progress(f"{label}{name}", index / len(steps))
            prepare()
            rows.append(compare(f"{label}{name}", ours, floor_name, floor, n))
            for key in (inbox, floor_list, *channel.keys.processing_lists(agent)):
                r.delete(key)
    finally:
        for key in (
            inbox,
            floor_list,
            *channel.keys.processing_lists(agent),
            channel.keys.agent(worker.id),
            channel.keys.task(task.id),
            f"{{{channel.keys.agent(worker.id)}}}:floor",
            f"{{{channel.keys.task(task.id)}}}:floor",
        ):
            r.delete(key)  # one by one: on a cluster they live in different slots
    return rows


def _raw_hash_write(
    r: redis.Redis | redis.RedisCluster, key: str, document: Agent | Task
) -> Callable[[], object]:
    """The same Redis work as a hash-form state write, with the fields encoded once
    beforehand: what raw redis-py would send for it."""
    values, absent = hashform.fields_of(document)
    fields = [part for pair in values.items() for part in pair]

    def write() -> object:
        pipe = r.pipeline(transaction=True)
        if absent:
            pipe.execute_command("HDEL", key, *absent)
        pipe.execute_command("HSET", key, *fields)
        return pipe.execute()

    return write


def _fill(
    r: redis.Redis | redis.RedisCluster, inbox: str, floor_list: str, payload: bytes, n: int
) -> None:
    """Enough waiting messages for warm-up and every timed round, in both lists."""
    pipe = r.pipeline(transaction=False)
    for key in (inbox, floor_list):
        for start in range(0, n + 400, 1000):
            pipe.rpush(key, *[payload] * min(1000, n + 400 - start))
    pipe.execute()


def unix_vs_tcp(unix: Channel, tcp: Channel, n: int) -> list[Row]:
    """The same server over both transports, alternating call by call."""
    agent = str(uuid.uuid4())
    message = Message.ping(agent, agent)
    key = unix.keys.inbox(agent)
    try:
        return [
            compare(
                "send over unix socket",
                lambda: unix.send(message),
                "over TCP",
                lambda: tcp.send(message),
                n,
            ),
            compare(
                "raw LLEN over unix socket",
                lambda: unix.redis.llen(key),
                "over TCP",
                lambda: tcp.redis.llen(key),
                n,
            ),
        ]
    finally:
        unix.redis.delete(key)


def send_many_rows(channel: Channel, n: int) -> dict[str, float]:
    """Throughput of Channel.send_many against raw pipelined RPUSH of the same bytes:
    1000 messages to 10 inboxes per round."""
    agents = [str(uuid.uuid4()) for _ in range(10)]
    batch = [Message.task(agents[0], agents[i % 10], f"job {i}") for i in range(1000)]
    payloads = [(channel.keys.inbox(m.to), m.to_json().encode()) for m in batch]
    inboxes = [channel.keys.inbox(agent) for agent in agents]

    def raw() -> None:
        pipe = channel.redis.pipeline(transaction=False)
        for inbox, payload in payloads:
            pipe.rpush(inbox, payload)
        pipe.execute()

    rounds = max(3, n // 1000)
    ours, floor = [], []
    try:
        for _ in range(rounds):
            ours += _timed(lambda: channel.send_many(batch), 1)
            floor += _timed(raw, 1)
            _delete(channel, inboxes)
    finally:
        _delete(channel, inboxes)
    ours_rate = 1000 / (statistics.median(ours) / 1e6)
    floor_rate = 1000 / (statistics.median(floor) / 1e6)
    return {
        "send_many_msgs_per_s": ours_rate,
        "raw_pipeline_msgs_per_s": floor_rate,
        "ratio": ours_rate / floor_rate,
    }


def _delete(channel: Channel, keys: list[str]) -> None:
    for key in keys:  # one by one: on a cluster they live in different slots
        channel.redis.delete(key)


def remote_figures(url: str, n: int, progress: Progress) -> dict[str, Any]:
    """The same Channel rows against the Redis at ``url`` (a standalone server, or any
    node of a cluster) over TCP, each next to raw redis-py on the same server."""
    from .town import url_client

    client = url_client(url, {"socket_connect_timeout": 5})
    try:
        channel = Channel(client, f"bench-{uuid.uuid4().hex[:6]}")
        rows = channel_rows(channel, n, progress, "remote ")
        pipelined = send_many_rows(channel, n)
        if isinstance(client, redis.RedisCluster):
            servers = [client.get_redis_connection(node) for node in client.get_primaries()]
            kind = f"Redis Cluster, {len(servers)} primaries"
        else:
            servers, kind = [client], "one server"
        return {
            "url": redact_url(url),
            "kind": kind,
            "redis": _server_name(servers[0].info("server")),
            "rows": [asdict(row) for row in rows],
            "send_many": pipelined,
        }
    finally:
        client.close()


def _server_name(info: dict[str, Any]) -> str:
    name = str(info.get("server_name") or "redis")  # Valkey's redis_version is 7.2.4
    return f"{name.capitalize()} {info.get(f'{name}_version') or info['redis_version']}"


_PEER = """
import asyncio, sys, time
from tinytownd import Message, Channel, aio
import redis, redis.asyncio as aioredis
path, town, me, n, mode = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
def sync():
    ch = Channel(redis.Redis(unix_socket_path=path), town)
    for _ in range(n):
        m = ch.receive(me, timeout=30)
        if m.type == "ping":
            ch.send(m.reply("pong"))
    print(time.perf_counter_ns(), flush=True)
async def main():
    ch = aio.Channel(aioredis.Redis(unix_socket_path=path), town)
    for _ in range(n):
        m = await ch.receive(me, timeout=30)
        if m.type == "ping":
            await ch.send(m.reply("pong"))
    print(time.perf_counter_ns(), flush=True)
sync() if mode == "sync" else asyncio.run(main())
"""


def end_to_end(channel: Channel, path: str, n: int, mode: str) -> dict[str, float]:
    """Round trips (ping -> pong) and one-way throughput between two processes."""
    me, peer = str(uuid.uuid4()), str(uuid.uuid4())
    trips = min(n, 1000)
    proc = subprocess.Popen(
        [sys.executable, "-c", _PEER, path, channel.keys.town, peer, str(trips + n), mode],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        rtts = []
        for _ in range(trips):
            started = time.perf_counter_ns()
            channel.send(Message.ping(me, peer))
            channel.receive(me, timeout=30)
            rtts.append((time.perf_counter_ns() - started) / 1000)
        started = time.perf_counter_ns()
        for i in range(n):
            channel.send(Message.task(me, peer, f"job {i}"))
        assert proc.stdout is not None
        finished = int(proc.stdout.readline())
        proc.wait(30)
    finally:
        proc.kill()
    return {
        "round_trip_p50_us": _p(rtts, 0.5),
        "round_trip_p99_us": _p(rtts, 0.99),
        "throughput_msgs_per_s": n / ((finished - started) / 1e9),
    }


@contextlib.contextmanager
def throwaway_town() -> Iterator[ProjectPaths]:
    """A town in a short temp dir, stopped and removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp" if os.path.isdir("/tmp") else None))
    paths = ProjectPaths.of(root)
    config = Config(name="bench").replace("persistence.save", "")
    try:
        control.start(paths, config)
        yield paths
    finally:
        with contextlib.suppress(Exception):
            control.stop(paths, config)
        shutil.rmtree(root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(directory: str | None, n: int, progress: Progress) -> dict[str, Any]:
    """The whole client-side benchmark; returns plain data for printing or ``--json``."""
    with contextlib.ExitStack() as stack:
        paths = ProjectPaths.of(directory or ".")
        town = load(paths.root).name if daemon_pid(paths) is not None else None
        if town is None:
            paths, town = stack.enter_context(throwaway_town()), "bench"
        unix = redis.Redis(unix_socket_path=str(paths.client_socket))
        # Our keys live in a town of their own and are deleted after each step.
        channel = Channel(unix, f"{town}-bench-{uuid.uuid4().hex[:6]}")
        rows = channel_rows(channel, n, progress)
        # With tinytownd[fast], the same rows again as without it: redis-py's own reply
        # parser instead of hiredis, the standard library's json instead of orjson.
        pure_rows, pure_many = (
            pure_python_rows(paths, channel.keys.town, n, progress) if _fast() else ([], None)
        )
        # TCP only ever on a throwaway town, bound to loopback.
        spare = stack.enter_context(throwaway_town())
        port = free_port()
        spare_client = redis.Redis(unix_socket_path=str(spare.client_socket))
        spare_client.config_set("bind", "127.0.0.1")
        spare_client.config_set("port", port)
        tcp = Channel(redis.Redis(host="127.0.0.1", port=port), channel.keys.town)
        tcp_rows = channel_rows(tcp, n, progress, "tcp ")
        progress("unix socket vs TCP", 0.85)
        transports = unix_vs_tcp(Channel(spare_client, tcp.keys.town), tcp, n)
        progress("send_many", 0.9)
        pipelined = send_many_rows(channel, n)
        progress("two processes", 0.95)
        e2e = {
            mode: end_to_end(channel, str(paths.client_socket), n, mode)
            for mode in ("sync", "asyncio")
        }
        return {
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "redis": _server_name(unix.info("server")),
                "hiredis": _has_hiredis(),
                "orjson": wire.fast_json(),
                "n": n,
            },
            "unix": [asdict(row) for row in rows],
            "unix_pure_python": [asdict(row) for row in pure_rows],
            "tcp": [asdict(row) for row in tcp_rows],
            "unix_vs_tcp": [asdict(row) for row in transports],
            "send_many": pipelined,
            "send_many_pure_python": pure_many,
            "end_to_end": e2e,
        }
    raise AssertionError("unreachable")


def _fast() -> bool:
    """Whether tinytownd[fast] is in use (hiredis or orjson)."""
    return _has_hiredis() or wire.fast_json()


def pure_python_rows(
    paths: ProjectPaths, town: str, n: int, progress: Progress
) -> tuple[list[Row], dict[str, float]]:
    """The unix socket rows and send_many as they are without tinytownd[fast]: redis-py's
    own reply parser and packer on connections of their own, our packing in Python, and
    json from the standard library."""
    from redis._parsers import _RESP2Parser
    from redis.connection import PythonRespSerializer

    class PureConnection(redis.UnixDomainSocketConnection):
        def _construct_command_packer(self, packer: Any) -> Any:  # hiredis packs otherwise
            return PythonRespSerializer(self._buffer_cutoff, self.encoder.encode)

    pool = redis.ConnectionPool(
        connection_class=PureConnection, path=str(paths.client_socket), parser_class=_RESP2Parser
    )
    client = redis.Redis(connection_pool=pool)
    try:
        with wire.standard_json(), resp.python_packing():
            channel = Channel(client, town)
            return channel_rows(channel, n, progress, "pure "), send_many_rows(channel, n)
    finally:
        client.close()
        pool.disconnect()


def _has_hiredis() -> bool:
    from redis.utils import HIREDIS_AVAILABLE

    return bool(HIREDIS_AVAILABLE)


def supervisor_figures(
    progress: Progress, keys: tuple[int, ...] = (100_000, 1_000_000)
) -> dict[str, Any]:
    """Start-to-ready, kill -9 to serving again (empty, RDB, AOF), idle CPU and RSS."""
    import psutil

    figures: dict[str, Any] = {}
    starts = []
    for i in range(5):
        progress("start to ready", i / 20)
        root = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        paths, config = ProjectPaths.of(root), Config(name="bench")
        try:
            began = time.perf_counter()
            control.start(paths, config)
            starts.append((time.perf_counter() - began) * 1000)
        finally:
            control.stop(paths, config)
            shutil.rmtree(root, ignore_errors=True)
    figures["start_to_ready_ms_p50"] = statistics.median(starts)
    for label, appendonly, count in (
        ("empty", False, 0),
        *((f"{form}_{_short(n)}", form == "aof", n) for n in keys for form in ("rdb", "aof")),
    ):
        progress(f"kill -9 recovery ({label})", 0.3)
        with throwaway_town() as paths:
            client = redis_admin.connect(paths, timeout=5)  # no retries: we time the gap
            if appendonly:
                redis_admin.apply_persistence(
                    client, Config(name="x").persistence.__class__(save="", appendonly=True), 30
                )
            _load(client, count)
            if not appendonly:
                client.save()
            rounds = 3 if count >= 1_000_000 else 7  # a big load is steadier, and slow
            figures[f"kill9_to_serving_ms_{label}"] = _recovery(paths, client, rounds)
            figures[f"bare_load_ms_{label}"] = _bare_load(paths, appendonly, rounds)
    progress("idle daemon (30 s)", 0.8)
    with throwaway_town() as paths:
        daemon = psutil.Process(daemon_pid(paths))
        before = daemon.cpu_times()
        time.sleep(30)
        after = daemon.cpu_times()
        used = (after.user + after.system) - (before.user + before.system)
        figures["idle_cpu_percent"] = used / 30 * 100
        figures["idle_rss_mb"] = daemon.memory_info().rss / 2**20
    return figures


def _short(count: int) -> str:
    return f"{count // 1_000_000}m" if count >= 1_000_000 else f"{count // 1000}k"


def command_figures(progress: Progress, rounds: int = 10) -> dict[str, float]:
    """Wall time of CLI commands, as a shell runs them, next to a bare interpreter
    start measured in the same run (the floor no command can beat)."""
    cli = [sys.executable, "-m", "tinytownd"]

    def wall(argv: list[str], cwd: Path) -> float:
        began = time.perf_counter()
        subprocess.run(argv, cwd=cwd, check=True, capture_output=True, timeout=120)
        return (time.perf_counter() - began) * 1000

    figures: dict[str, float] = {}
    with throwaway_town() as paths:
        for label, argv in (
            ("python -c pass", [sys.executable, "-c", "pass"]),
            ("tinytownd --help", [*cli, "--help"]),
            ("tinytownd --version", [*cli, "--version"]),
            ("tinytownd status", [*cli, "status"]),
        ):
            progress(label, 0.5)
            figures[label] = statistics.median(wall(argv, paths.root) for _ in range(rounds))
    starts = []
    for i in range(rounds // 2):
        progress("tinytownd start", 0.5 + i / rounds)
        root = Path(tempfile.mkdtemp(prefix="ttb-", dir="/tmp"))
        try:
            starts.append(wall([*cli, "start"], root))  # returns once Redis answers PING
        finally:
            subprocess.run([*cli, "stop"], cwd=root, capture_output=True, timeout=120)
            shutil.rmtree(root, ignore_errors=True)
    figures["tinytownd start (to ready)"] = statistics.median(starts)
    return figures


def agents_figures(counts: list[int], seconds: float, progress: Progress) -> dict[str, Any]:
    """The scale table (:mod:`tinytownd.loadbench`) on a throwaway town of its own."""
    from . import loadbench

    with throwaway_town() as paths:
        return loadbench.agents_figures(str(paths.client_socket), counts, seconds, progress)


def _load(client: redis.Redis, count: int) -> None:
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        pipe.set(f"key:{i}", "x" * 100)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _bare_load(paths: ProjectPaths, appendonly: bool, rounds: int = 5) -> float:
    """The floor for a restart: the same server binary alone, spawned on a copy of the
    town's files, until it answers PING (median of ``rounds``)."""
    binary = engine.find_binary(load(paths.root), paths).path
    times = []
    with tempfile.TemporaryDirectory(prefix="ttf-", dir="/tmp") as scratch:
        for name in ("dump.rdb", "appendonlydir"):
            source = paths.state_dir / name
            if source.is_dir():
                shutil.copytree(source, Path(scratch) / name)
            elif source.exists():
                shutil.copy(source, Path(scratch) / name)
        sock = str(Path(scratch) / "s.sock")
        for _ in range(rounds):
            began = time.perf_counter()
            aof = "yes" if appendonly else "no"
            server = subprocess.Popen(
                [
                    binary,
                    "--port",
                    "0",
                    "--unixsocket",
                    sock,
                    "--dir",
                    scratch,
                    "--save",
                    "",
                    "--appendonly",
                    aof,
                ],
                stdout=subprocess.DEVNULL,
            )
            try:
                client = redis.Redis(unix_socket_path=sock)
                while True:
                    try:
                        if client.ping():
                            break
                    except (redis.ConnectionError, redis.BusyLoadingError):
                        time.sleep(0.0005)
                times.append((time.perf_counter() - began) * 1000)
                client.close()
            finally:
                server.kill()
                server.wait()
    return statistics.median(times)


def _recovery(paths: ProjectPaths, client: redis.Redis, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        time.sleep(1.1)  # past restart_policy.STABLE_AFTER: each kill is a fresh crash, no backoff
        pid = int(client.info("server")["process_id"])
        began = time.perf_counter()
        os.kill(pid, 9)
        while True:
            try:
                if client.ping() and int(client.info("server")["process_id"]) != pid:
                    break
            except (redis.ConnectionError, redis.BusyLoadingError):
                time.sleep(0.0005)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)
