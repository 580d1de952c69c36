"""``tinytownd bench --agents N``: a town under load, next to redis-benchmark.

N agents stand in a ring, each with one message in flight: an agent takes the next
message from its inbox and sends a new one to the agent after it. Every message carries
the moment it was sent (CLOCK_MONOTONIC, which all processes of a machine share), so
the receiver knows its latency from send to receive. Two ways of running the agents:

* ``asyncio``: every agent a coroutine of one process, on one ``aio.Channel``;
* ``sync``: the agents spread over a few processes, one thread and blocking
  ``Channel`` calls per agent.

Each row stands next to what redis-benchmark (the C client) does on the same socket with
as many connections: a message is one RPUSH and one pop, so its floor is the rate at
which redis-benchmark does both, one after the other.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

#: As Town.channel()'s clients: no cap of 100 connections (redis-py 8's default).
MAX_CONNECTIONS = 10_000
#: How many processes share the sync agents: enough to keep every core busy.
SYNC_PROCESSES = max(2, 2 * (os.cpu_count() or 1))
#: Seconds the workers are given to start before the warm-up begins.
STARTUP = 2.0
#: Untimed time at the start of each run (connections made, caches warm), seconds.
WARM_UP = 1.0

Progress = Callable[[str, float], None]


def agent_id(index: int) -> str:
    """The id of the ring's ``index``-th agent: the same in every process."""
    return str(uuid.UUID(int=index + 1))


def _body(sent_ns: int) -> str:
    return str(sent_ns)


# -- the agents (run in worker processes) --------------------------------------------


class Tally:
    """What one worker saw inside the timed window: latencies in µs."""

    def __init__(self, begin_ns: int, end_ns: int) -> None:
        self.begin_ns, self.end_ns = begin_ns, end_ns
        self.latencies: list[float] = []
        self.lock = threading.Lock()

    def seen(self, sent_ns: int, received_ns: int) -> None:
        if self.begin_ns <= received_ns < self.end_ns:
            with self.lock:
                self.latencies.append((received_ns - sent_ns) / 1000)


def _sync_agent(channel: Any, me: int, ring: int, start_ns: int, tally: Tally) -> None:
    from .messages import Message

    mine, after = agent_id(me), agent_id((me + 1) % ring)
    _sleep_until(start_ns - int(WARM_UP * 1e9))
    channel.send(Message.task(mine, after, _body(time.monotonic_ns())))
    while time.monotonic_ns() < tally.end_ns:
        message = channel.receive(mine, timeout=0.25)
        if message is None:
            continue
        now = time.monotonic_ns()
        tally.seen(int(message.body["description"]), now)
        channel.send(Message.task(mine, after, _body(now)))


def run_sync_worker(socket: str, town: str, agents: list[int], ring: int, times: Tally) -> None:
    """Blocking agents, one thread each, on one client (a connection per agent)."""
    import redis

    from .channel import Channel

    # As Town.channel() makes them: no socket timeout (receives wait for themselves).
    client = redis.Redis(
        unix_socket_path=socket, socket_timeout=None, max_connections=MAX_CONNECTIONS
    )
    channel = Channel(client, town)
    threads = [
        threading.Thread(target=_sync_agent, args=(channel, i, ring, times.begin_ns, times))
        for i in agents
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()


async def _async_agent(channel: Any, me: int, ring: int, tally: Tally) -> None:
    from .messages import Message

    mine, after = agent_id(me), agent_id((me + 1) % ring)
    await channel.send(Message.task(mine, after, _body(time.monotonic_ns())))
    while time.monotonic_ns() < tally.end_ns:
        message = await channel.receive(mine, timeout=0.25)
        if message is None:
            continue
        now = time.monotonic_ns()
        tally.seen(int(message.body["description"]), now)
        await channel.send(Message.task(mine, after, _body(now)))


async def run_async_worker(socket: str, town: str, ring: int, times: Tally) -> None:
    """Every agent a coroutine on one asyncio client."""
    import redis.asyncio as aioredis

    from .aio import Channel

    client = aioredis.Redis(
        unix_socket_path=socket, socket_timeout=None, max_connections=MAX_CONNECTIONS
    )
    channel = Channel(client, town)
    await asyncio.sleep(max(0.0, (times.begin_ns - time.monotonic_ns()) / 1e9 - WARM_UP))
    await asyncio.gather(*(_async_agent(channel, i, ring, times) for i in range(ring)))
    await client.aclose()


def _sleep_until(moment_ns: int) -> None:
    time.sleep(max(0.0, (moment_ns - time.monotonic_ns()) / 1e9))


def worker_main(argv: list[str]) -> None:
    """``python -m tinytownd.loadbench MODE SOCKET TOWN RING BEGIN_NS END_NS [AGENT...]``:
    run the given agents, then print their latencies as JSON."""
    mode, socket, town, ring, begin, end, *agents = argv
    tally = Tally(int(begin), int(end))
    if mode == "asyncio":
        asyncio.run(run_async_worker(socket, town, int(ring), tally))
    else:
        run_sync_worker(socket, town, [int(a) for a in agents], int(ring), tally)
    print(json.dumps(tally.latencies))


# -- the parent: start the workers, watch Redis, compare -----------------------------


def _percentile(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ring_run(socket: str, town: str, ring: int, mode: str, seconds: float) -> dict[str, float]:
    """One run of ``ring`` agents for ``seconds`` (after the warm-up): end-to-end msgs/s,
    latency from send to receive, and the CPU Redis used (% of one core)."""
    import psutil
    import redis

    server = redis.Redis(unix_socket_path=socket)
    redis_process = psutil.Process(int(server.info("server")["process_id"]))
    # Time for the workers to start (importing, a thread per agent), with room for a
    # loaded machine: a worker that started after the window would count nothing.
    begin = time.monotonic_ns() + int((STARTUP + ring / 400 + WARM_UP) * 1e9)
    end = begin + int(seconds * 1e9)
    shares: list[list[int]]
    if mode == "asyncio":
        shares = [[]]
    else:
        processes = min(ring, SYNC_PROCESSES)
        shares = [list(range(ring))[p::processes] for p in range(processes)]
    command = [sys.executable, "-m", "tinytownd.loadbench", mode, socket, town, str(ring)]
    workers = [
        subprocess.Popen(
            [*command, str(begin), str(end), *map(str, share)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    try:
        _sleep_until(begin)
        cpu_before = sum(redis_process.cpu_times()[:2])
        _sleep_until(end)
        cpu_used = sum(redis_process.cpu_times()[:2]) - cpu_before
        latencies: list[float] = []
        for worker in workers:
            out, _ = worker.communicate(timeout=120)
            if worker.returncode != 0:
                raise RuntimeError(f"a {mode} bench worker failed (exit {worker.returncode})")
            latencies += json.loads(out.splitlines()[-1])
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
        _clear(server, town)
        server.close()
    return {
        "msgs_per_s": len(latencies) / seconds,
        "latency_p50_us": _percentile(latencies, 0.5),
        "latency_p99_us": _percentile(latencies, 0.99),
        "redis_cpu_percent": cpu_used / seconds * 100,
    }


def _clear(server: Any, town: str) -> None:
    """Drop what the run left in the town's lists (one message per agent in flight)."""
    names = list(server.scan_iter(match=f"tt:{town}:*", count=1000))
    for start in range(0, len(names), 500):
        server.delete(*names[start : start + 500])


def benchmark_binary() -> str | None:
    """redis-benchmark (or valkey-benchmark) on PATH, if any."""
    return shutil.which("redis-benchmark") or shutil.which("valkey-benchmark")


def c_client_floor(binary: str, socket: str, clients: int, size: int) -> dict[str, float]:
    """What redis-benchmark does with ``clients`` connections on the same socket: RPUSH
    and LPOP of ``size``-byte values, and the message rate both make (1/(1/a + 1/b))."""
    requests = max(20_000, 100 * clients)
    load = ["-c", str(clients), "-n", str(requests), "-d", str(size), "-t", "rpush,lpop"]
    done = subprocess.run(
        [binary, "-s", socket, *load, "--csv"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rates: dict[str, float] = {}
    p50: dict[str, float] = {}
    for line in done.stdout.splitlines():
        cells = [cell.strip('"') for cell in line.split(",")]
        if cells[0] in ("RPUSH", "LPOP"):
            rates[cells[0]] = float(cells[1])
            p50[cells[0]] = float(cells[4]) * 1000
    both = 1 / (1 / rates["RPUSH"] + 1 / rates["LPOP"])
    return {
        "rpush_per_s": rates["RPUSH"],
        "lpop_per_s": rates["LPOP"],
        "msgs_per_s": both,
        "rpush_p50_us": p50["RPUSH"],
        "lpop_p50_us": p50["LPOP"],
    }


def agents_figures(
    socket: str, counts: list[int], seconds: float, progress: Progress
) -> dict[str, Any]:
    """The scale table: for each agent count, both ways of running agents, each next to
    redis-benchmark with as many connections."""
    from .messages import Message

    binary = benchmark_binary()
    size = len(Message.task(agent_id(0), agent_id(1), _body(time.monotonic_ns())).to_json())
    rows = []
    for step, ring in enumerate(counts):
        row: dict[str, Any] = {"agents": ring}
        for half, mode in enumerate(("asyncio", "sync")):
            progress(f"{ring} agents, {mode}", (2 * step + half) / (2 * len(counts)))
            row[mode] = ring_run(socket, f"load-{uuid.uuid4().hex[:6]}", ring, mode, seconds)
        if binary is not None:
            row["redis_benchmark"] = c_client_floor(binary, socket, ring, size)
        rows.append(row)
    return {
        "seconds": seconds,
        "message_bytes": size,
        "sync_processes": SYNC_PROCESSES,
        "redis_benchmark": binary,
        "rows": rows,
    }


if __name__ == "__main__":
    worker_main(sys.argv[1:])
