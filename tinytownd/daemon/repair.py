"""``tinytownd repair``: make a damaged append-only file loadable, keeping a copy first."""

from __future__ import annotations

import re
import shutil
import subprocess

from ..config import Config
from ..errors import RepairError, StartupError
from ..paths import ProjectPaths
from . import control, engine

_SHRINK = re.compile(r"shrink the AOF (\S+) from (\d+) bytes, with (\d+) bytes, to (\d+) bytes")


def repair_aof(paths: ProjectPaths, config: Config) -> tuple[str, str]:
    """Run Redis's AOF checker with ``--fix`` on a stopped town.

    Returns ``(what the checker did, where the untouched copy is)``. Everything from
    the first damaged record on is cut off, as ``redis-check-aof --fix`` does.
    """
    if control.liveness(paths).anything:
        raise RepairError("the town is running; stop it with `tinytownd stop` first")
    manifests = sorted(paths.aof_dir.glob("*.manifest"))
    if not manifests:
        raise RepairError(f"no append-only file to repair in {paths.aof_dir}")
    backup = paths.new_backup_dir()
    shutil.copytree(paths.aof_dir, backup / paths.aof_dir.name)
    binary = engine.find_binary(config, paths)
    done = subprocess.run(
        ["redis-check-aof", "--fix", str(manifests[0])],
        executable=binary.path,
        input="y\n",
        capture_output=True,
        text=True,
        timeout=3600,
    )
    said = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        raise StartupError(f"redis-check-aof could not repair it: {said[-1] if said else '?'}")
    for line in said:
        cut = _SHRINK.search(line)
        if cut:
            name, before, dropped, after = cut.groups()
            return (
                f"cut {name} from {before} to {after} bytes (dropping {dropped} bytes from "
                "the first damaged record on)"
            ), str(backup)
    return said[-1] if said else "nothing to repair", str(backup)
