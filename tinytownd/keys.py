"""Every Redis key and channel name a town uses, in one place.

Schema (``<town>`` is a validated town name, ``<id>`` an agent or task UUID)::

    tt:<town>:inbox:<id>     list    agent inbox; LPUSH urgent/high, RPUSH normal/low
    tt:<town>:urgent:<id>    list    urgent sends (LPUSH), taken before the inbox
    tt:<town>:dead:<id>      list    inbox payloads that were not valid messages
    tt:<town>:processing:<id> list   taken by a reliable receiver, not yet acknowledged
    tt:<town>:processing:{tt:<town>:inbox:<id>}   on a Redis Cluster: the same, in the
    tt:<town>:processing:{tt:<town>:urgent:<id>}  slot of the list it was taken from
    tt:<town>:agent:<id>     hash    agent state (or a JSON string: the documented form)
    tt:<town>:task:<id>      hash    task state (or a JSON string)
    tt:<town>:broadcast      pub/sub broadcast channel (the default, where tinytown 0.10 publishes)
    tt:broadcast             pub/sub the documented broadcast channel (opt-in)

On a Redis Cluster every name tinytown uses stays as it is, so Rust agents on the same
cluster still interoperate; only our own processing lists carry a hash tag (``{...}``),
because a message can move atomically only within one slot.

Keys written by tinytown before 0.9 had no town segment (``tt:agent:<id>``,
``tt:inbox:<id>``, ..., ``tt:backlog``); :func:`legacy_target` maps them to
their namespaced names for ``tinytownd migrate``.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from .errors import InvalidNameError

PREFIX = "tt"
GLOBAL_BROADCAST = "tt:broadcast"
LEGACY_KINDS = frozenset({"agent", "inbox", "urgent", "task", "activity", "stop"})
LEGACY_SINGLETONS = frozenset({"backlog"})

_TOWN_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def validate_town_name(name: str) -> str:
    """Return ``name`` if it is safe inside key patterns, else raise :class:`InvalidNameError`."""
    if not _TOWN_NAME.fullmatch(name):
        raise InvalidNameError(
            f"invalid town name {name!r}: use 1-64 letters, digits, '.', '_' or '-' "
            f"(e.g. `tinytownd config set name {town_name_for(name)}`)"
        )
    return name


def town_name_for(directory_name: str) -> str:
    """The town name a directory gets when ``tinytown.toml`` names none.

    Letters with accents lose the accent (``projet café`` -> ``projet-cafe``), other
    runs of characters a name cannot hold become one ``-``; a name with letters outside
    Latin script is encoded with punycode as IDNA does (``日本`` -> ``xn--wgv71a``), so
    no letter is ever dropped and the directory name can be read back from it.
    """
    stripped = unicodedata.normalize("NFKD", directory_name)
    stripped = "".join(c for c in stripped if not unicodedata.combining(c))
    if stripped.isascii():
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", stripped).strip("-")[:64]
        return name or "town"
    encoded = directory_name.replace(" ", "-").encode("punycode").decode("ascii")
    name = "xn--" + re.sub(r"[^A-Za-z0-9._-]+", "-", encoded).strip("-")
    return name[:64]


@dataclass(frozen=True, slots=True)
class TownKeys:
    """Key and channel names for one town (``cluster``: as kept on a Redis Cluster)."""

    town: str
    town_broadcast: bool = False
    cluster: bool = False
    _base: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_town_name(self.town)
        object.__setattr__(self, "_base", f"{PREFIX}:{self.town}:")

    def inbox(self, agent_id: str) -> str:
        return f"{self._base}inbox:{agent_id}"

    def urgent(self, agent_id: str) -> str:
        return f"{self._base}urgent:{agent_id}"

    def dead(self, agent_id: str) -> str:
        return f"{self._base}dead:{agent_id}"

    def processing(self, agent_id: str) -> str:
        """Where a reliable receiver keeps what it took from the inbox."""
        if self.cluster:
            return f"{self._base}processing:{{{self.inbox(agent_id)}}}"
        return f"{self._base}processing:{agent_id}"

    def urgent_processing(self, agent_id: str) -> str:
        """Where a reliable receiver keeps what it took from the urgent list: the inbox's
        processing list on one server, a list in the urgent list's slot on a cluster."""
        if self.cluster:
            return f"{self._base}processing:{{{self.urgent(agent_id)}}}"
        return self.processing(agent_id)

    def processing_lists(self, agent_id: str) -> list[str]:
        """Every list a reliable receiver of this agent may hold messages in."""
        return list(dict.fromkeys((self.processing(agent_id), self.urgent_processing(agent_id))))

    def agent(self, agent_id: str) -> str:
        return f"{self._base}agent:{agent_id}"

    def task(self, task_id: str) -> str:
        return f"{self._base}task:{task_id}"

    def pattern(self, kind: str) -> str:
        """The SCAN/KEYS pattern for every key of ``kind`` (``inbox``, ``agent``...)."""
        return f"{self._base}{kind}:*"

    @property
    def broadcast(self) -> str:
        return f"{self._base}broadcast" if self.town_broadcast else GLOBAL_BROADCAST


def legacy_target(key: str, town: str) -> str | None:
    """The namespaced name for a pre-0.9 key, or None when ``key`` is not one."""
    parts = key.split(":")
    if parts[0] != PREFIX:
        return None
    if len(parts) == 3 and parts[1] in LEGACY_KINDS and parts[2]:
        return f"{PREFIX}:{town}:{parts[1]}:{parts[2]}"
    if len(parts) == 2 and parts[1] in LEGACY_SINGLETONS:
        return f"{PREFIX}:{town}:{parts[1]}"
    return None
