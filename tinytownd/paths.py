"""Where a town's files live.

The project directory holds ``tinytown.toml`` and the socket ``redis.sock``;
everything the daemon owns lives in ``.tt/`` (mode 0700). A unix socket path
is limited to 107 bytes on Linux (103 on macOS), so when the project directory
is deep, clients reach the socket through a short symlink in the user's
runtime directory that the daemon keeps up to date.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import trust
from .errors import StartupError

SOCKET_NAME = "redis.sock"
STATE_DIR = ".tt"
CONFIG_FILE = "tinytown.toml"
SNAPSHOT_FILE = "tinytown-state.rdb"  # what `tinytownd save` writes when given no --to
MAX_SOCKET_PATH = 103 if sys.platform == "darwin" else 107


def find_town(start: str | os.PathLike[str]) -> Path | None:
    """The nearest directory at or above ``start`` that holds a town, as git finds a
    repository: one with a ``tinytown.toml``, or with a ``.tt/`` that tinytownd has run
    (its ``daemon.lock`` or ``state.json``). Like git, the search stops where another
    filesystem begins. None when there is no town above."""
    here = Path(os.path.abspath(start))
    try:
        device = here.stat().st_dev
    except OSError:
        return None
    for directory in (here, *here.parents):
        try:
            if directory.stat().st_dev != device:
                return None
        except OSError:
            return None
        state = directory / STATE_DIR
        if (directory / CONFIG_FILE).is_file() or any(
            (state / name).is_file() for name in ("daemon.lock", "state.json")
        ):
            return directory
    return None


def write_durably(target: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``target`` with ``text`` so that a crash leaves the old file or the new
    one, never a mix (temp file, fsync, rename); raises OSError."""
    tmp = target.with_name(f".{target.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)


def _runtime_candidates() -> list[Path]:
    # $XDG_RUNTIME_DIR is per-user and short where a login session exists; /tmp
    # always is short (macOS's per-user $TMPDIR too), but shared: another user may
    # have taken our name there first, so there are fallbacks that every client
    # walks in the same order.
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if not runtime or len(runtime) > 60 or not os.access(runtime, os.W_OK):
        runtime = tempfile.gettempdir()
    base = f"tinytownd-{os.geteuid()}"
    return [Path(runtime) / base] + [Path(runtime) / f"{base}.{n}" for n in range(1, 8)]


def _ours(directory: Path) -> bool:
    """A real directory, owned by us, that nobody else can write to."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        return False
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and not stat.S_IMODE(info.st_mode) & 0o022
    )


def runtime_dir(create: bool = False) -> Path | None:
    """The first candidate directory for short socket links that is ours; with
    ``create``, made (0700) where free. None when every candidate is someone else's."""
    for candidate in _runtime_candidates():
        if create:
            with contextlib.suppress(FileExistsError):
                candidate.mkdir(mode=0o700)
        if _ours(candidate):
            return candidate
    return None


@dataclass(frozen=True)
class ProjectPaths:
    """Every path of one project; ``root`` is absolute."""

    root: Path

    @classmethod
    def of(cls, directory: str | os.PathLike[str]) -> ProjectPaths:
        return cls(Path(os.path.abspath(directory)))

    @property
    def config(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def socket(self) -> Path:
        return self.root / SOCKET_NAME

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    @property
    def redis_log(self) -> Path:
        return self.state_dir / "redis.log"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "daemon.log"

    @property
    def lock(self) -> Path:
        return self.state_dir / "daemon.lock"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def redis_conf(self) -> Path:
        return self.state_dir / "redis.conf"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "password"

    @property
    def rdb(self) -> Path:
        return self.state_dir / "dump.rdb"

    @property
    def aof_dir(self) -> Path:
        return self.state_dir / "appendonlydir"

    @property
    def socket_link(self) -> Path:
        """A short path that points at :attr:`socket`, for deep project directories."""
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return (runtime_dir() or _runtime_candidates()[0]) / f"{digest}.sock"

    @property
    def needs_socket_link(self) -> bool:
        return len(os.fsencode(self.socket)) > MAX_SOCKET_PATH

    @property
    def client_socket(self) -> Path:
        """The path a client connects to: the socket itself, or the short link."""
        return self.socket_link if self.needs_socket_link else self.socket

    def ensure_state_dir(self) -> None:
        """Create ``.tt/`` with mode 0700, refusing a symlink or a directory we cannot write."""
        try:
            self.state_dir.mkdir(mode=0o700, exist_ok=True)
        except OSError as err:
            raise StartupError(
                f"cannot create {self.state_dir}: {err.strerror}; "
                "run tinytownd in a directory you can write to, or pass --dir"
            ) from None
        info = os.lstat(self.state_dir)
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
            raise StartupError(
                f"{self.state_dir} is not a plain directory (a symlink?); move it away and retry"
            )
        why = trust.problem(info)
        if why:
            raise StartupError(
                f"{self.state_dir} {why}; it holds the town's data and password, so "
                f"tinytownd refuses it: `chown` it to yourself and `chmod 700` it"
            )
        if not os.access(self.state_dir, os.W_OK | os.X_OK):
            raise StartupError(f"cannot write to {self.state_dir}; fix its permissions")
        os.chmod(self.state_dir, 0o700)

    def new_backup_dir(self) -> Path:
        """A fresh ``.tt/backup-<time>/`` (mode 0700) for data we set aside; never deleted."""
        stamp = time.strftime("backup-%Y%m%dT%H%M%S")
        for attempt in range(1000):
            candidate = self.state_dir / (stamp if attempt == 0 else f"{stamp}-{attempt}")
            try:
                candidate.mkdir(mode=0o700)
                return candidate
            except FileExistsError:
                continue
        raise StartupError(f"cannot create a backup directory in {self.state_dir}")

    @staticmethod
    def rotate(log: Path, limit: int = 10 * 2**20) -> None:
        """Before a log is opened for a new run: past ``limit`` bytes it moves to
        ``<name>.1`` (replacing the older one), so a long-lived town keeps logs small."""
        try:
            if log.stat().st_size > limit:
                os.replace(log, log.with_name(log.name + ".1"))
        except FileNotFoundError:
            pass

    def link_socket(self) -> None:
        """Point the short runtime link at the socket (only needed for deep directories)."""
        if not self.needs_socket_link:
            return
        if runtime_dir(create=True) is None:
            raise StartupError(
                f"every directory for short socket links ({_runtime_candidates()[0]}...) "
                "belongs to someone else; set XDG_RUNTIME_DIR to a directory of yours"
            )
        link = self.socket_link
        tmp = link.with_name(f"{link.name}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.socket)
        os.replace(tmp, link)

    def read_password(self) -> str | None:
        """The password the town's Redis requires (``.tt/password``), if it requires one."""
        try:
            return self.password_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @property
    def tt_socket(self) -> Path:
        """Where tinytown's ``tt`` looks by default (``.tt/redis.sock``)."""
        return self.state_dir / SOCKET_NAME

    def link_tt_socket(self) -> None:
        """Point ``.tt/redis.sock`` at the town's socket, so that an unmodified ``tt``
        finds this town instead of starting a second Redis in ``.tt/``."""
        target = os.path.join("..", SOCKET_NAME)
        try:
            if os.readlink(self.tt_socket) == target:
                return
        except FileNotFoundError:
            pass
        except OSError:
            return  # something else is there (tt's own socket?): leave it alone
        os.symlink(target, self.tt_socket)

    def unlink_tt_socket(self) -> None:
        try:
            if os.readlink(self.tt_socket) == os.path.join("..", SOCKET_NAME):
                os.unlink(self.tt_socket)
        except OSError:
            pass

    def unlink_socket_link(self) -> None:
        if self.needs_socket_link:
            self.socket_link.unlink(missing_ok=True)
