"""Requests in RESP, packed for the drivers' pooled path (``steps.AS_SENT``).

redis-py's packer splits a command name on spaces, runs each argument through the
connection's encoder and chunks large values: about 5 µs a command in place, more
than all of our own work on a receive. The commands the operations send need none
of that: a one-word name, then text, bytes and integers. So they are packed here, by
hiredis where tinytownd[fast] installed it, else in Python, to the same bytes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

try:  # tinytownd[fast]
    import hiredis

    _hiredis_pack: Any = hiredis.pack_command
except ImportError:  # the pure-Python path, the default
    _hiredis_pack = None

#: The encodings (redis-py's default) in which these bytes are what redis-py sends.
_UTF8 = frozenset({"utf-8", "utf8", "UTF-8", "UTF8"})


@contextlib.contextmanager
def python_packing() -> Iterator[None]:
    """Within: packing in Python, as without tinytownd[fast] (bench, tests)."""
    global _hiredis_pack
    saved, _hiredis_pack = _hiredis_pack, None
    try:
        yield
    finally:
        _hiredis_pack = saved


def request(commands: list[tuple[Any, ...]], connection_kwargs: dict[str, Any]) -> bytes | None:
    """``commands`` packed for one write on a connection of a pool built with
    ``connection_kwargs``; None where the connection's own packer must do it: a pool
    that encodes text other than as UTF-8, or an argument of another type (redis-py
    then says what is wrong with it)."""
    if (
        connection_kwargs.get("encoding", "utf-8") not in _UTF8
        or connection_kwargs.get("encoding_errors", "strict") != "strict"
    ):
        return None
    try:
        return pack(commands[0]) if len(commands) == 1 else pack_all(commands)
    except TypeError:
        return None


#: Commands an agent sends over and over with the same arguments (a try_receive, a
#: reliable take, a state read), and their packed bytes: a lookup costs a fifth of
#: packing them again. Only text, bytes and ints are remembered: no two such commands
#: are equal and packed apart (a float or a bool equal to an int would be, and the
#: operations send neither). Bounded: the keys of agents long gone are forgotten.
_REPEATED = frozenset({"LMPOP", "LPOP", "LMOVE", "HGETALL", "LLEN", "LINDEX"})
_PACKED: dict[tuple[Any, ...], bytes] = {}
_PLAIN = (str, bytes, int)
_REMEMBERED = 4096


def pack(command: tuple[Any, ...]) -> bytes:
    """One command as RESP: an array of bulk strings, text as UTF-8. TypeError for an
    argument that is not text, bytes or a number; UnicodeEncodeError for text that is
    not (a lone surrogate), as redis-py raises."""
    repeated = command[0] in _REPEATED
    if repeated:
        known = _PACKED.get(command)
        if known is not None:
            return known
    packed: bytes = (
        _hiredis_pack(command) if _hiredis_pack is not None else _pack_in_python(command)
    )
    if repeated and all(type(argument) in _PLAIN for argument in command):
        if len(_PACKED) >= _REMEMBERED:
            _PACKED.clear()
        _PACKED[command] = packed
    return packed


def pack_all(commands: Iterable[tuple[Any, ...]]) -> bytes:
    """Several commands, one after the other, for one write."""
    return b"".join(pack(command) for command in commands)


def _pack_in_python(command: tuple[Any, ...]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for argument in command:
        kind = type(argument)
        if kind is str:
            argument = argument.encode()
        elif kind is int:
            argument = b"%d" % argument
        elif kind is float:
            argument = repr(argument).encode()
        elif kind is not bytes:
            raise TypeError(f"cannot send {kind.__name__} {argument!r:.40} to Redis")
        parts.append(b"$%d\r\n%b\r\n" % (len(argument), argument))
    return b"".join(parts)
