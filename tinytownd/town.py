"""``Town.connect``: find a project's town, make sure its Redis runs, hand out channels."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from . import config as config_module
from . import steps
from .channel import Channel
from .config import Config, redact_url
from .errors import ClusterUnusableError, ConfigError
from .paths import ProjectPaths, find_town
from .peer import own_socket_client

ClientT = TypeVar("ClientT")
ChannelT = TypeVar("ChannelT")


def prepare(directory: str | Path, start: bool) -> tuple[Config, ProjectPaths]:
    """Find the town at or above ``directory`` (else ``directory`` itself), read its
    config and, for a local town, start its daemon if needed."""
    paths = ProjectPaths(find_town(directory) or Path(os.path.abspath(directory)))
    config = config_module.load(paths.root)
    if not config.remote_url and start:
        from .daemon import control  # the one daemon module the client uses, and only here

        if control.daemon_pid(paths) is None:
            control.start(paths, config)
    return config, paths


def is_cluster_node(info: dict[str, Any]) -> bool:
    """Whether ``INFO cluster`` came from a node of a Redis Cluster, which holds a part of
    the keyspace only: a plain client on it gets MOVED for most keys, and its SCAN sees
    one node's agents. Town.connect follows the whole cluster instead."""
    return str(info.get("cluster_enabled", "0")) == "1"


def cluster_unusable(url: str, error: Exception) -> ClusterUnusableError:
    """The one line for a cluster that does not serve every slot (or no slot map at all)."""
    reason = str(error).rstrip(".")
    return ClusterUnusableError(
        f"the Redis Cluster at {redact_url(url)} cannot serve the town: {reason}; "
        "`CLUSTER INFO` on any of its nodes shows its state"
    )


#: Connection failures are left to the first operation, which reports them as usual.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError, redis.AuthenticationError)


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the
    Sentinels to ask, the service (master) name, and the password and db of the primary."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    password: str | None

    SCHEME = "redis+sentinel"

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        parts = urlsplit(url)
        where = parts.netloc.rsplit("@", 1)[-1]
        path = [piece for piece in parts.path.split("/") if piece]
        try:
            sentinels = [
                (host or "127.0.0.1", int(port or 26379))
                for host, _, port in (
                    item.rpartition(":") if ":" in item else (item, "", "")
                    for item in where.split(",")
                )
            ]
            db = int(path[1]) if len(path) > 1 else 0
        except ValueError:
            sentinels, db = [], 0
        if not sentinels or not path:
            raise ConfigError(
                f"{redact_url(url)}: expected redis+sentinel://[:password@]host:port[,host:port"
                "...]/SERVICE[/DB], e.g. redis+sentinel://127.0.0.1:26379/mymaster"
            )
        return cls(sentinels, unquote(path[0]), db, unquote(parts.password or "") or None)


def remote_client(url: str, options: dict[str, Any]) -> redis.Redis:
    """A client of the Redis at ``url``; behind Sentinel, of whichever server is the
    primary now (asked again after a failover)."""
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    where = SentinelURL.parse(url)
    sentinel = Sentinel(where.sentinels, socket_timeout=5, socket_connect_timeout=5)
    primary: redis.Redis = sentinel.master_for(
        where.service, db=where.db, password=where.password, **options
    )
    return primary


def url_client(url: str, options: dict[str, Any]) -> redis.Redis | redis.RedisCluster:
    """A client of the Redis at ``url``; of the whole cluster when ``url`` names any node
    of a Redis Cluster (``INFO cluster`` says so), so that no key is out of reach."""
    client = remote_client(url, options)
    if is_sentinel(url):
        return client
    with contextlib.suppress(*UNREACHABLE):
        if is_cluster_node(client.info("cluster")):
            client.close()
            try:
                return redis.RedisCluster.from_url(url, **options)
            except RedisClusterException as error:
                raise cluster_unusable(url, error) from None
    return client


def is_sentinel(url: str) -> bool:
    return url.startswith(SentinelURL.SCHEME + "://")


def retry_budget(config: Config, cluster: bool = False) -> float:
    """``channel.retry_for``, or its automatic value for this kind of server: long enough
    to ride out a failover behind Sentinel or in a cluster."""
    if config.channel.retry_for:
        return config.channel.retry_for
    if cluster:
        return steps.RETRY_FOR_CLUSTER
    return steps.RETRY_FOR_SENTINEL if is_sentinel(config.remote_url) else steps.RETRY_FOR


#: Connections one client may open: Redis's own default ``maxclients``.
MAX_CONNECTIONS = 10_000


def client_options(
    config: Config, paths: ProjectPaths, kind: type[Any]
) -> tuple[str, dict[str, Any]]:
    """``(url, keyword arguments)`` for a redis-py (or redis.asyncio) client of this town.

    redis-py's own retries are off: the Channel retries itself (see ops.retry_delay), so
    that a blocking receive retried after a lost connection keeps its deadline.
    """
    if kind.__module__.startswith("redis.asyncio"):
        from redis.asyncio.retry import Retry as AsyncRetry

        retry: Any = AsyncRetry(NoBackoff(), 0)
    else:
        from redis.retry import Retry

        retry = Retry(NoBackoff(), 0)
    # Each waiting receive holds a connection, and redis-py 8 caps a pool at 100: a
    # process with more agents than that would fail ("Too many connections").
    options: dict[str, Any] = {
        "retry": retry,
        "socket_connect_timeout": 5,
        "max_connections": MAX_CONNECTIONS,
    }
    if config.remote_url:
        return config.remote_url, options
    password = paths.read_password()  # set when the town's Redis requires one
    return "", {**options, "unix_socket_path": str(paths.client_socket), "password": password}


class TownCore(Generic[ClientT, ChannelT]):
    """What both Town flavours share: settings, paths, a client, and how a channel is made."""

    def __init__(
        self, config: Config, paths: ProjectPaths, client: ClientT, stop_on_exit: bool = False
    ) -> None:
        self.config, self.paths, self.redis = config, paths, client
        #: Stop the town's daemon (SHUTDOWN SAVE, nothing lost) when this Town closes.
        self.stop_on_exit = stop_on_exit and not config.remote_url

    def _stop_daemon(self) -> None:
        if self.stop_on_exit:
            from .daemon import control

            control.stop(self.paths, self.config)

    @property
    def name(self) -> str:
        return self.config.name

    #: This flavour's Redis Cluster client class.
    cluster_class: type[Any]

    @property
    def cluster(self) -> bool:
        """Whether the town lives on a Redis Cluster."""
        return isinstance(self.redis, self.cluster_class)

    #: The Channel class of this flavour (blocking or asyncio).
    channel_class: Callable[..., ChannelT]

    def channel(self, *, reliable: bool = False) -> ChannelT:
        """A channel bound to this town; ``reliable=True``: at-least-once receives."""
        settings = self.config.channel
        return self.channel_class(
            self.redis,
            self.name,
            town_broadcast=settings.broadcast == "town",
            reliable=reliable,
            state=settings.state,
            retry_for=retry_budget(self.config, self.cluster),
        )


class Town(TownCore[redis.Redis | redis.RedisCluster, Channel]):
    """One town: its settings, its Redis client and channels bound to its name."""

    channel_class = Channel
    cluster_class = redis.RedisCluster

    @classmethod
    def connect(
        cls, directory: str | Path = ".", *, start: bool = True, stop_on_exit: bool = False
    ) -> Town:
        """The town at or above ``directory``; starts its daemon unless ``start=False``,
        and with ``stop_on_exit=True`` stops it again when the Town is closed (scripts
        that clean up after themselves).

        With ``redis.url`` (or ``$TINYTOWN_REDIS_URL`` / ``$REDIS_URL``) it uses that
        Redis instead, and starts nothing; a URL naming any node of a Redis Cluster gives
        the whole cluster (``redis.RedisCluster``).
        """
        config, paths = prepare(directory, start)
        url, options = client_options(config, paths, redis.Redis)
        client: redis.Redis | redis.RedisCluster
        if url:
            client = url_client(url, options)
        else:  # only to a server run by this user: the kernel says who serves the socket
            client = own_socket_client(options.pop("unix_socket_path"), **options)
        return cls(config, paths, client, stop_on_exit)

    def close(self) -> None:
        self.redis.close()
        self._stop_daemon()

    def __enter__(self) -> Town:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
