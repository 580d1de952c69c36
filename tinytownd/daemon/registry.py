"""Which towns run on this machine for this user, for ``tinytownd ls``.

Each daemon writes one small file into the user's runtime directory (the one that
holds short socket links: ours alone, mode 0700) while it runs, naming its town's
directory. An entry whose daemon died without removing it is recognised by the
daemon lock, which the kernel drops with the process, and is pruned by the reader.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from ..paths import ProjectPaths, runtime_dir
from .state import daemon_pid


def _entry(root: Path, create: bool) -> Path | None:
    base = runtime_dir(create=create)
    if base is None:
        return None
    towns = base / "towns"
    if create:
        towns.mkdir(mode=0o700, exist_ok=True)
    return towns / hashlib.sha256(os.fsencode(root)).hexdigest()[:16]


def register(paths: ProjectPaths) -> None:
    """Record that a daemon runs the town in ``paths.root`` (best effort)."""
    with contextlib.suppress(OSError):
        entry = _entry(paths.root, create=True)
        if entry is not None:
            entry.write_text(str(paths.root) + "\n", encoding="utf-8")


def unregister(paths: ProjectPaths) -> None:
    with contextlib.suppress(OSError):
        entry = _entry(paths.root, create=False)
        if entry is not None:
            entry.unlink(missing_ok=True)


def running() -> list[ProjectPaths]:
    """Every town whose daemon runs now, by directory; stale entries are removed."""
    base = runtime_dir()
    found = []
    for entry in sorted((base / "towns").glob("*")) if base else []:
        try:
            paths = ProjectPaths(Path(entry.read_text(encoding="utf-8").strip()))
        except OSError:
            continue
        if paths.root.is_absolute() and daemon_pid(paths) is not None:
            found.append(paths)
        else:
            entry.unlink(missing_ok=True)  # our own bookkeeping, never a town's data
    return sorted(found, key=lambda p: str(p.root))
