"""The restart policy as a table: crash history in, delay (or giving up) out."""

from __future__ import annotations

import pytest

from tinytownd.config import SupervisorSettings
from tinytownd.daemon.restart_policy import after_crash

SETTINGS = SupervisorSettings(max_restarts=3, restart_window=60.0, backoff_max=1.0)


@pytest.mark.parametrize(
    ("earlier", "now", "ran_for", "streak", "delay", "next_streak"),
    [
        ((), 100.0, 30.0, 0, 0.0, 1),  # a first crash after serving: at once
        ((100.0,), 130.0, 29.0, 1, 0.0, 1),  # it had served again: fresh, at once
        ((100.0,), 100.5, 0.4, 1, 0.2, 2),  # died right after starting: back off
        ((100.0, 100.5), 101.0, 0.3, 2, 0.4, 3),  # and doubling
        ((100.0,), 100.5, 0.4, 5, 1.0, 6),  # capped at backoff_max
        ((100.0, 110.0, 120.0), 130.0, 5.0, 0, None, 0),  # a 4th within the window: give up
        ((10.0, 20.0, 120.0), 130.0, 5.0, 0, 0.0, 1),  # old crashes fall out of the window
    ],
)
def test_after_crash(
    earlier: tuple[float, ...],
    now: float,
    ran_for: float,
    streak: int,
    delay: float | None,
    next_streak: int,
) -> None:
    decision = after_crash(earlier, now, ran_for, streak, SETTINGS)
    assert decision.delay == (None if delay is None else pytest.approx(delay))
    if delay is not None:
        assert decision.streak == next_streak
    assert decision.recent[-1] == now
    assert all(t >= now - SETTINGS.restart_window for t in decision.recent)
