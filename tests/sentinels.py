"""A Sentinel setup for the tests: a primary, a replica and three Sentinels on 127.0.0.1,
from the town's own server binary; every process is killed by :meth:`Deployment.stop`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis
from support import free_port, wait_until

from tinytownd.config import Config
from tinytownd.daemon.engine import find_binary


class Deployment:
    """The servers of one Sentinel setup, all stopped by :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.binary = find_binary(Config(name="x")).path
        self.root, self.processes = root, []
        self.data = [free_port(), free_port()]  # primary, replica
        self.sentinels = [free_port() for _ in range(3)]

    def _spawn(self, name: str, *args: str) -> None:
        where = self.root / name
        where.mkdir()
        self.processes.append(
            subprocess.Popen(
                [self.binary, *args, "--dir", str(where)]
                if args[0] != "sentinel.conf"
                else [self.binary, str(where / "sentinel.conf"), "--sentinel"],
                cwd=where,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        )

    def start(self) -> None:
        primary, replica = self.data
        common = ("--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
        self._spawn("primary", "--port", str(primary), *common)
        self._spawn(
            "replica", "--port", str(replica), *common, "--replicaof", "127.0.0.1", str(primary)
        )
        for n, port in enumerate(self.sentinels):
            where = self.root / f"sentinel{n}"
            where.mkdir()
            (where / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {where}\n"
                f"sentinel monitor mymaster 127.0.0.1 {primary} 2\n"
                "sentinel down-after-milliseconds mymaster 1000\n"
                "sentinel failover-timeout mymaster 10000\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [self.binary, str(where / "sentinel.conf"), "--sentinel"],
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        ask = redis.Redis(port=self.sentinels[0])
        wait_until(
            lambda: (
                len(ask.sentinel_slaves("mymaster")) == 1
                and len(ask.sentinel_sentinels("mymaster")) == 2
            ),
            timeout=30,
            what="sentinels that know the replica and each other",
        )

    def primary_port(self) -> int:
        ask = redis.Redis(port=self.sentinels[0])
        return int(ask.sentinel_get_master_addr_by_name("mymaster")[1])

    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/mymaster"

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
