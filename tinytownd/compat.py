"""``tinytown.toml`` as tinytown 0.10's ``tt init`` writes it, read by tinytownd.

Both tools read the same file. tt's own keys are either understood here or knowingly
ignored (they configure tt, not the town's Redis); a key neither tool knows stays an
error. What tt's keys mean for us:

- ``[redis] use_socket = true`` (tt's default): the town is served on a unix socket,
  which tinytownd keeps at ``./redis.sock``; ``socket_path`` must name it, so that tt
  finds the town instead of starting a second Redis. tt's ``host`` and ``port`` then
  describe a TCP server tt would use otherwise, so they open nothing here.
- ``use_socket = false``: the town's Redis is tt's TCP server (``url``, or ``host``,
  ``port``, ``password``, ``tls_enabled``): a Redis reached by URL, nothing local.
- ``persist = true``: the append-only file, unless ``[persistence] appendonly`` says.
- ``aof_path``: ignored; the AOF lives in ``.tt/appendonlydir``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .errors import ConfigError

#: tt's top-level keys and tables: tt's business (agents, its HTTP daemon), not ours.
TT_TOP_LEVEL = frozenset(
    {
        "default_cli",
        "conductor_cli",
        "max_agents",
        "use_central_redis",
        "use_streams",
        "agent_clis",
        "townhall",
        "agent",
    }
)
#: tt's [redis] keys that tinytownd's own schema does not have.
TT_REDIS = frozenset(
    {
        "use_socket",
        "socket_path",
        "host",
        "persist",
        "aof_path",
        "tls_enabled",
        "tls_cert",
        "tls_key",
        "tls_ca_cert",
    }
)
SOCKET_PATHS = ("redis.sock", "./redis.sock")


def known_keys() -> frozenset[str]:
    """Every key tt writes, for suggestions when a key is misspelt."""
    return TT_TOP_LEVEL | TT_REDIS


def translate(data: dict[str, Any], at: Callable[[str], str]) -> dict[str, Any]:
    """``data`` (parsed TOML) with tt's keys turned into tinytownd's or dropped."""
    data = {key: value for key, value in data.items() if key not in TT_TOP_LEVEL}
    redis = data.get("redis")
    if not isinstance(redis, dict) or not TT_REDIS & redis.keys():
        return data
    redis = dict(redis)
    tt = {key: redis.pop(key) for key in list(redis) if key in TT_REDIS}
    use_socket = tt.get("use_socket", True)
    if not isinstance(use_socket, bool):
        raise ConfigError(f"{at('use_socket')}: redis.use_socket: expected true or false")
    tt_port = redis.pop("port", 6379)  # tt's TCP address, never a port for us to open
    if use_socket and tt_port not in (0, 6379):
        raise ConfigError(
            f"{at('port')}: redis.port = {tt_port!r}: beside tt's use_socket, port is tt's TCP "
            "address and opens nothing; to have tinytownd listen on TCP as well, remove "
            "use_socket and socket_path from [redis]"
        )
    if use_socket:
        path = tt.get("socket_path", "redis.sock")
        if path not in SOCKET_PATHS:
            raise ConfigError(
                f"{at('socket_path')}: redis.socket_path = {path!r}: tinytownd serves the "
                'town on ./redis.sock; set socket_path = "redis.sock" so tt finds it there'
            )
    elif not redis.get("url"):
        redis["url"] = _tcp_url(tt, tt_port, redis.get("password") or "")
    persistence = data.get("persistence", {})
    if tt.get("persist") is True and isinstance(persistence, dict):
        data["persistence"] = {"appendonly": True, **persistence}
    data["redis"] = redis
    return data


def _tcp_url(tt: dict[str, Any], port: Any, password: str) -> str:
    scheme = "rediss" if tt.get("tls_enabled") else "redis"
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"{scheme}://{auth}{tt.get('host', '127.0.0.1')}:{port}"
