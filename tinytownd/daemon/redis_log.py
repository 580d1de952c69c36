"""Reading redis-server's log: what went wrong, in one line a person can act on."""

from __future__ import annotations

import os

from ..paths import ProjectPaths

#: Lines Redis writes when it loads a truncated AOF tail (and cuts it off).
_TRUNCATION = ("short read while loading the AOF", "Truncating the AOF", "loaded anyway")
_BAD_AOF = ("reading the append only file", "Unrecoverable error reading the append")
_BAD_RDB = (
    "loading DB",
    "Wrong signature trying to load DB",
    "Internal error in RDB",
    "Can't handle RDB format version",
)


def size(paths: ProjectPaths) -> int:
    """The log's current length: where the next redis-server's lines will start."""
    try:
        return paths.redis_log.stat().st_size
    except FileNotFoundError:
        return 0


def lines_since(paths: ProjectPaths, offset: int, limit: int = 1 << 20) -> list[str]:
    """The log lines written after ``offset`` (at most the last ``limit`` bytes of them)."""
    try:
        with open(paths.redis_log, "rb") as log:
            end = log.seek(0, os.SEEK_END)
            log.seek(max(offset, end - limit))
            text = log.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def tail(paths: ProjectPaths, count: int = 8) -> list[str]:
    return lines_since(paths, 0, limit=8192)[-count:]


def _message(line: str) -> str:
    """A Redis log line without its "pid:role date time level" prefix."""
    parts = line.split(" ", 5)
    return parts[5] if len(parts) == 6 and parts[4] in "#*-." else line


def load_warnings(lines: list[str]) -> list[str]:
    """What Redis said while loading data that means some of it was cut off."""
    return [_message(line) for line in lines if any(mark in line for mark in _TRUNCATION)]


def diagnose(lines: list[str], paths: ProjectPaths, exit_reason: str) -> str:
    """Why redis-server stopped during startup, and what to do about it."""
    text = "\n".join(lines)
    where = os.path.relpath(paths.state_dir, paths.root)
    if any(mark in text for mark in _BAD_AOF):
        return (
            f"redis-server cannot load its append-only file in {where}/appendonlydir "
            "(damaged, not just cut short); nothing was changed. Run `tinytownd repair` "
            "to keep what can be read (it backs the files up first)"
        )
    if any(mark in text for mark in _BAD_RDB):
        return (
            f"redis-server cannot load {where}/dump.rdb; nothing was changed. "
            "`tinytownd restore FILE` loads a good snapshot (it keeps the current files "
            f"in {where}/backup-<time>/); see {paths.redis_log} for what Redis said"
        )
    errors = [_message(line) for line in lines if " # " in line and "overcommit" not in line]
    last = errors[-1] if errors else (_message(lines[-1]) if lines else "no log output")
    return f"redis-server {exit_reason} while starting: {last} (see {paths.redis_log})"


_SAVE_ERRORS = ("Write error", "Failed opening", "Failed to", "No space left", "error saving")


def save_failure(paths: ProjectPaths) -> str | None:
    """Why Redis's last save failed, from the end of its log, if it says."""
    for line in reversed(tail(paths, count=30)):
        if any(mark in line for mark in _SAVE_ERRORS) and "can't exit" not in line:
            return _message(line)
    return None


def said_goodbye(paths: ProjectPaths) -> bool:
    """Whether Redis's last words were those of a clean shutdown (its data saved)."""
    return any("ready to exit, bye bye" in line for line in tail(paths, count=3))
