"""Whether a file or directory can be trusted: only its owner (or root) can change it.

``tinytown.toml`` can name the program to run as ``redis-server``, and ``.tt/``
holds the town's data and password, so like ssh with its config we refuse them
when another user could have written them. A group-writable file is fine when
the group is the owner's private group (one user, same name), as on Debian.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import ConfigError


def _private_group(gid: int, uid: int) -> bool:
    try:
        import grp
        import pwd

        group, user = grp.getgrgid(gid), pwd.getpwuid(uid)
    except (ImportError, KeyError):
        return False
    others = set(group.gr_mem) - {user.pw_name}
    return not others and user.pw_gid == gid and group.gr_name == user.pw_name


def problem(info: os.stat_result) -> str | None:
    """Why another user could change what ``info`` describes, or None."""
    if not hasattr(os, "geteuid"):
        return None  # Windows: no POSIX owner or mode bits to read (ACLs decide there)
    if info.st_uid not in (os.geteuid(), 0):
        return f"belongs to uid {info.st_uid}, not to you"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o002 or (mode & 0o020 and not _private_group(info.st_gid, info.st_uid)):
        return f"is writable by other users (mode {mode:04o})"
    return None


def check_file(path: Path, what: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a regular file only we can change.

    Raises FileNotFoundError when it does not exist.
    """
    info = os.stat(path)
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{path} is not a regular file; replace it with one (or remove it)")
    why = problem(info)
    if why:
        raise ConfigError(
            f"{path} {why}: anyone who can change it chooses the program tinytownd runs, so "
            f"its {what} are refused; `chown` it to yourself and `chmod go-w` it"
        )
