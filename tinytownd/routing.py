"""Which Redis Cluster node each command of a step goes to.

Pure decisions shared by both drivers: a driver on a cluster looks up the node of each
command's key (redis-py keeps the slot map) and sends each node its commands as one
pipeline, on that node's own connection, so that a MULTI ... EXEC block written for one
key stays one transaction. The operations guarantee what makes this sound: every
command's keys, and every MULTI block's, live in one slot.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from .steps import Command

N = TypeVar("N", bound=Hashable)

_KEYLESS = frozenset({"MULTI", "EXEC", "DISCARD", "PING", "INFO", "SCAN", "SCRIPT"})


def key_of(command: Command) -> Any | None:
    """The key that decides where ``command`` runs, or None for a keyless command."""
    verb = str(command[0]).upper()
    if verb in _KEYLESS or len(command) < 2:
        return None
    if verb in ("EVAL", "EVALSHA"):
        return command[3] if int(command[2]) > 0 else None
    if verb == "LMPOP":
        return command[2]
    return command[1]


def route(
    commands: Sequence[Command], node_of: Callable[[Any | None], N]
) -> list[tuple[N, list[int]]]:
    """The commands' positions grouped by node, each group in order.

    A keyless command (MULTI, EXEC) goes with the keyed command before it, or the first
    one after it when it opens the list, so that a transaction reaches its key's node
    whole; ``node_of(None)`` answers for a list with no key at all.
    """
    keys = [key_of(command) for command in commands]
    first = next((key for key in keys if key is not None), None)
    groups: dict[N, list[int]] = {}
    current = node_of(first)
    for index, key in enumerate(keys):
        if key is not None:
            current = node_of(key)
        groups.setdefault(current, []).append(index)
    return list(groups.items())


def merge(size: int, answered: list[tuple[list[int], list[Any]]]) -> list[Any]:
    """The replies in the commands' order, from each group's positions and replies."""
    replies: list[Any] = [None] * size
    for positions, group_replies in answered:
        for position, reply in zip(positions, group_replies, strict=True):
            replies[position] = reply
    return replies


def raise_first_error(replies: list[Any]) -> list[Any]:
    """``replies``, unless one of them is an error reply: then that error, as redis-py's
    pipelines raise it (errors inside an EXEC reply are the caller's to look at)."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
