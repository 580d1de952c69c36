"""Who serves a unix socket: the kernel's word, checked before we trust the other end.

A town's socket lives in a directory other users may be able to write to (a team
folder, a temp directory), so before a client sends a password or a message, and
before the daemon adopts or signals a Redis, it asks the kernel which process and
which user hold the other end (``SO_PEERCRED`` on Linux, ``LOCAL_PEERCRED`` and
``LOCAL_PEERPID`` on macOS) and refuses anyone but the current user.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from dataclasses import dataclass
from typing import Any

import redis

from .errors import ForeignSocketError

# macOS <sys/un.h>: SOL_LOCAL, LOCAL_PEERCRED (struct xucred), LOCAL_PEERPID.
_SOL_LOCAL, _LOCAL_PEERCRED, _LOCAL_PEERPID = 0, 0x001, 0x002


@dataclass(frozen=True)
class Peer:
    pid: int | None  # None where the platform does not say
    uid: int


def peer_of(sock: socket.socket) -> Peer:
    """The process and user at the other end of a connected unix socket."""
    if hasattr(socket, "SO_PEERCRED"):
        pid, uid, _gid = struct.unpack(
            "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        )
        return Peer(pid, uid)
    if sys.platform == "darwin":
        xucred = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 76)
        _version, uid = struct.unpack_from("Ii", xucred)
        pid = struct.unpack("i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))[0]
        return Peer(pid, uid)
    raise ForeignSocketError("cannot tell who serves a unix socket on this platform")


def check_own(sock: socket.socket, path: str) -> Peer:
    """Return the peer, or raise :class:`ForeignSocketError` unless it runs as us."""
    peer = peer_of(sock)
    if peer.uid != os.geteuid():
        raise ForeignSocketError(
            f"{path} is served by another user's process (uid {peer.uid}, pid {peer.pid}); "
            "refusing to talk to it: stop that process or remove the socket, and check "
            "who can write to its directory"
        )
    return peer


class OwnSocketConnection(redis.UnixDomainSocketConnection):
    """A redis-py unix socket connection that refuses a server run by another user,
    before anything (a password included) is sent."""

    def _connect(self) -> socket.socket:
        sock: socket.socket = super()._connect()  # type: ignore[no-untyped-call]
        try:
            check_own(sock, self.path)
        except BaseException:
            sock.close()
            raise
        return sock


def own_socket_client(path: str, **options: Any) -> redis.Redis:
    """A redis-py client of the unix socket ``path`` that talks only to our own server."""
    pool = redis.ConnectionPool(connection_class=OwnSocketConnection, path=path, **options)
    return redis.Redis.from_pool(pool)
