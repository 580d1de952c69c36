"""``tinytownd repair``: make a damaged append-only file loadable, keeping a copy first.

Each file the manifest lists is checked on its own, in load order: the base with the
RDB checker (or the AOF checker when it is RESP), each increment with the AOF
checker. Only the last file can be cut short without losing the files after it. The
files are checked one by one rather than through the manifest because Valkey 9's AOF
checker takes its own ``VALKEY080`` base file for a damaged RESP file.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from ..config import Config
from ..errors import RepairError
from ..paths import ProjectPaths
from . import control, engine

_SHRINK = re.compile(r"shrink the AOF (\S+) from (\d+) bytes, with (\d+) bytes, to (\d+) bytes")
_RESTORE = "restore a snapshot with `tinytownd restore FILE` (the files are unchanged)"


def repair_aof(paths: ProjectPaths, config: Config) -> tuple[str, str]:
    """Cut a damaged tail off a stopped town's append-only file.

    Returns ``(what was done, where the untouched copy is)``. Everything from the first
    damaged record on is cut off, as ``redis-check-aof --fix`` does.
    """
    if control.liveness(paths).anything:
        raise RepairError("the town is running; stop it with `tinytownd stop` first")
    manifests = sorted(paths.aof_dir.glob("*.manifest"))
    if not manifests:
        raise RepairError(f"no append-only file to repair in {paths.aof_dir}")
    files = loaded_files(manifests[0])
    backup = paths.new_backup_dir()
    shutil.copytree(paths.aof_dir, backup / paths.aof_dir.name)
    binary = engine.find_binary(config, paths)
    for position, path in enumerate(files, start=1):
        if path.suffix == ".rdb":
            checked = engine.check(binary, path)
            if not checked.readable:
                raise RepairError(
                    f"{path.name}, the snapshot the append-only file starts from, is "
                    f"damaged ({checked.said}) and cannot be cut short: {_RESTORE}"
                )
            continue
        if _check_aof(binary, path, fix=False).returncode == 0:
            continue
        if position < len(files):
            raise RepairError(
                f"{path.name} is damaged and is not the last file of the append-only file: "
                f"cutting it short would drop the {len(files) - position} after it; {_RESTORE}"
            )
        done = _check_aof(binary, path, fix=True)
        cut = _SHRINK.search(done.stdout)
        if done.returncode != 0 or cut is None:
            said = [line.strip() for line in done.stdout.splitlines() if line.strip()]
            raise RepairError(f"the AOF checker could not repair {path.name}: {said[-1:]}")
        _, before, dropped, after = cut.groups()
        return (
            f"cut {path.name} from {before} to {after} bytes (dropping {dropped} bytes from "
            "the first damaged record on)"
        ), str(backup)
    return "nothing to repair: every file of the append-only file reads cleanly", str(backup)


def loaded_files(manifest: Path) -> list[Path]:
    """The files Redis loads, in order: the base, then the increments (not history)."""
    files: dict[str, list[Path]] = {"b": [], "i": []}
    for line in manifest.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        pairs = dict(zip(fields[2::2], fields[3::2], strict=False))
        if fields[:1] == ["file"] and pairs.get("type") in files:
            files[pairs["type"]].append(manifest.parent / fields[1])
    return files["b"] + files["i"]


def _check_aof(
    binary: engine.ServerBinary, path: Path, fix: bool
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["redis-check-aof", *(["--fix"] if fix else []), str(path)],
        executable=binary.path,
        input="y\n",
        capture_output=True,
        text=True,
        timeout=3600,
    )
