"""A real Redis Cluster on 127.0.0.1 for the tests: three primaries, each with a replica.

Built with the town's own server binary and plain cluster commands (MEET, ADDSLOTSRANGE,
REPLICATE), so it needs no redis-cli; every process is killed by :meth:`Cluster.stop`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis
from support import free_port, wait_until

from tinytownd.config import Config
from tinytownd.daemon.engine import find_binary

SLOTS = 16384


class Cluster:
    """``primaries`` primaries (and as many replicas with ``replicas=True``)."""

    def __init__(self, root: Path, primaries: int = 3, replicas: bool = True) -> None:
        self.binary = find_binary(Config(name="x")).path
        self.root = root
        count = primaries * (2 if replicas else 1)
        self.ports = [free_port() for _ in range(count)]
        self.bus = {port: free_port() for port in self.ports}  # port + 10000 may be taken
        self.primary_ports = self.ports[:primaries]
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def _spawn(self, port: int) -> None:
        where = self.root / f"n{port}"
        where.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [
                *(self.binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(where)),
                *("--cluster-enabled", "yes", "--cluster-port", str(self.bus[port])),
                *("--cluster-node-timeout", "1000", "--save", "", "--appendonly", "no"),
            ],
            cwd=where,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start(self) -> None:
        for port in self.ports:
            self._spawn(port)
        for port in self.ports:
            wait_until(lambda port=port: self.node(port).ping(), what=f"node {port}")
        first = self.node(self.ports[0])
        for port in self.ports[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", port, self.bus[port])
        share = SLOTS // len(self.primary_ports)
        for n, port in enumerate(self.primary_ports):
            last = SLOTS - 1 if n == len(self.primary_ports) - 1 else (n + 1) * share - 1
            self.node(port).execute_command("CLUSTER", "ADDSLOTSRANGE", n * share, last)
        wait_until(self._everyone_knows_everyone, timeout=30, what="nodes that all meet")
        replicas = self.ports[len(self.primary_ports) :]
        for primary, replica in zip(self.primary_ports, replicas, strict=False):
            primary_id = self.node(primary).execute_command("CLUSTER", "MYID").decode()
            wait_until(
                lambda r=replica, p=primary_id: self.node(r).execute_command(
                    "CLUSTER", "REPLICATE", p
                ),
                timeout=30,
                what=f"replica {replica}",
            )
        wait_until(self.ready, timeout=60, what="cluster_state:ok on every node")

    def _everyone_knows_everyone(self) -> bool:
        for port in self.ports:
            nodes = self.node(port).execute_command("CLUSTER", "NODES").decode().splitlines()
            if len(nodes) != len(self.ports) or any("handshake" in line for line in nodes):
                return False
        return True

    def ready(self) -> bool:
        """Every live node says the cluster is ok and every replica has synced."""
        for port in self.processes:
            if self.processes[port].poll() is not None:
                continue
            info = self.node(port).execute_command("CLUSTER", "INFO").decode()
            if "cluster_state:ok" not in info:
                return False
            replication = self.node(port).info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
        return True

    def url(self, port: int | None = None) -> str:
        return f"redis://127.0.0.1:{port or self.ports[0]}/0"

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.ports[0])

    def current_primaries(self) -> list[int]:
        alive = [p for p in self.ports if self.processes[p].poll() is None]
        return [p for p in alive if self.node(p).info("replication")["role"] == "master"]

    def flush(self) -> None:
        for port in self.current_primaries():
            self.node(port).flushall()

    def kill(self, port: int) -> None:
        self.processes[port].kill()
        self.processes[port].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
            process.wait()
