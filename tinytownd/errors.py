"""Every error tinytownd raises on purpose.

Each carries a one-line message for a person (what happened and what to do)
and the exit code the CLI uses for it: 2 for bad usage or configuration,
1 for failures at run time.
"""

from __future__ import annotations


class TinytownError(Exception):
    """Base class: ``str(err)`` is the one line the CLI prints."""

    exit_code = 1


class ConfigError(TinytownError):
    """``tinytown.toml``, a CLI argument or an environment variable is invalid."""

    exit_code = 2


class BrokenConfigError(ConfigError):
    """``tinytown.toml`` does not parse, or holds a value that is not allowed."""


class InvalidNameError(ConfigError):
    """A town name that would make Redis key patterns unsafe."""


class StartupError(TinytownError):
    """Redis or the daemon could not be started."""


#: The exit code of ``start --foreground`` when the town already has a daemon.
EXIT_ALREADY_RUNNING = 3


class AlreadyRunning(TinytownError):
    """The town already has a daemon (``start --foreground`` exits 3)."""

    exit_code = EXIT_ALREADY_RUNNING


class BackupError(TinytownError):
    """A snapshot could not be made, checked or restored."""


class RepairError(TinytownError):
    """An append-only file could not be repaired."""


class StopError(TinytownError):
    """Redis could not be stopped without losing data, so it was left running."""


class NotRunningError(TinytownError):
    """The town's daemon (or its Redis) is not running."""


class UnsupportedServerError(ConfigError):
    """``redis.url`` names a kind of server the Channel cannot use as it is set up."""


class ClusterUnusableError(TinytownError):
    """``redis.url`` names a node of a Redis Cluster that cannot serve every key yet."""


class ForeignSocketError(StartupError):
    """The socket path is served by a process that is not this town's Redis."""


class InvalidMessageError(TinytownError):
    """A document read from Redis is not a valid message, agent or task."""


class UnknownAgentError(TinytownError):
    """A name, nickname or short id that matches no agent of the town, or several."""

    exit_code = 2


class StateError(TinytownError):
    """Agent or task state stored in Redis cannot be read."""
