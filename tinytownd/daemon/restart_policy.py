"""When to restart a crashed Redis, and when to give up: a pure function of the history.

A Redis that ran for :data:`STABLE_AFTER` seconds before dying had been serving, so its
crash is fresh and it is restarted at once. Quicker deaths in a row back off (0.2 s,
0.4 s, ... up to ``backoff_max``). More than ``max_restarts`` crashes within
``restart_window`` seconds means something is wrong that restarting will not fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..config import SupervisorSettings

#: A Redis that ran this long before dying counts as having served: no backoff.
STABLE_AFTER = 1.0
#: The first pause of a crash loop; each further quick crash doubles it.
FIRST_BACKOFF = 0.1


@dataclass(frozen=True)
class Decision:
    """What to do after a crash at monotonic time ``now``."""

    #: Seconds to wait before restarting, or None to give up (state ``failed``).
    delay: float | None
    #: Quick crashes in a row, including this one, for the next decision.
    streak: int
    #: The crash times still inside ``restart_window``, this one included.
    recent: tuple[float, ...]


def after_crash(
    crashes: Sequence[float],
    now: float,
    ran_for: float,
    streak: int,
    settings: SupervisorSettings,
) -> Decision:
    """Decide from the earlier crash times, how long this Redis ran, and the streak."""
    recent = tuple(t for t in (*crashes, now) if t >= now - settings.restart_window)
    if len(recent) > settings.max_restarts:
        return Decision(None, streak, recent)
    if ran_for >= STABLE_AFTER:
        streak = 0  # it had been serving: a fresh crash, not a crash loop
    delay = 0.0 if streak == 0 else min(settings.backoff_max, FIRST_BACKOFF * 2**streak)
    return Decision(delay, streak + 1, recent)
