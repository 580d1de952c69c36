"""``tinytownd save`` and ``tinytownd restore``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, redact_url
from ..errors import ConfigError
from ..lazyimport import lazy
from ..paths import SNAPSHOT_FILE
from .common import command, emit, project

if TYPE_CHECKING:
    from ..daemon import backup, repair
else:
    backup = lazy("tinytownd.daemon.backup")
    repair = lazy("tinytownd.daemon.repair")


def _local_only(config: Config, verb: str) -> None:
    """Backups are of a town's own files: a Redis reached by URL keeps its own."""
    if config.remote_url:
        raise ConfigError(
            f"town {config.name!r} uses the Redis at {redact_url(config.remote_url)} "
            f"(from {config.remote_source}): tinytownd can {verb} only a town it runs here; "
            "use that server's own snapshots (BGSAVE, or its provider's backups)"
        )


@command("save")
def cmd_save(args: argparse.Namespace) -> int:
    paths, config = project(args)
    _local_only(config, "save")
    target = Path(args.to) if args.to else paths.root / SNAPSHOT_FILE
    if target.is_dir():
        target = target / SNAPSHOT_FILE
    if not os.access(target.parent, os.W_OK):
        raise ConfigError(f"cannot write to {target.parent}: choose another --to")
    snapshot = backup.save(paths, config, target.resolve())
    taken = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snapshot.taken_at))
    emit(
        args,
        {
            "file": str(snapshot.path),
            "bytes": snapshot.size,
            "keys": snapshot.keys,
            "taken_at": taken,
        },
        f"wrote {snapshot.path}: {snapshot.size:,} bytes, {snapshot.keys} keys, "
        f"snapshot of {taken}",
    )
    return 0


@command("restore")
def cmd_restore(args: argparse.Namespace) -> int:
    paths, config = project(args)
    _local_only(config, "restore")
    source = Path(args.file).resolve()
    if not source.is_file():
        raise ConfigError(f"{source} is not a file")
    checked = backup.check_rdb(paths, config, source)
    incoming = checked.keys
    current = backup.current_keys(paths)
    replaces = (
        f"the running town's {current} keys"
        if current is not None
        else f"the stopped town's data in {paths.state_dir}"
    )
    print(
        f"{source} holds {incoming} keys and will replace {replaces} "
        f"(kept in {paths.state_dir}/backup-<time>/).",
        file=sys.stderr if args.json else sys.stdout,
    )
    if not args.force:
        if not sys.stdin.isatty():
            raise ConfigError("restore replaces the town's data: rerun with --force to go ahead")
        if input("restore? [y/N] ").strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 0
    rename = args.rename_town
    restored = backup.restore(paths, config, source, rename, checked)
    line = f"restored {restored.keys} keys; previous data kept in {restored.backup}"
    if restored.renamed is not None:
        line += f"; renamed {len(restored.renamed.moved)} keys into town {config.name!r}" + (
            f", {len(restored.renamed.conflicts)} conflicts left alone"
            if restored.renamed.conflicts
            else ""
        )
    if restored.other_towns:
        first = restored.other_towns[0]
        line += (
            f"\nthe snapshot holds keys of town(s) {', '.join(restored.other_towns)}, which "
            f"town {config.name!r} does not see; `tinytownd migrate --rename-town {first}` "
            "moves them into it"
        )
    emit(
        args,
        {
            "keys": restored.keys,
            "backup": str(restored.backup),
            "renamed": None if restored.renamed is None else len(restored.renamed.moved),
            "conflicts": None
            if restored.renamed is None
            else [list(pair) for pair in restored.renamed.conflicts],
            "other_towns": restored.other_towns,
        },
        line,
    )
    return 0


@command("repair")
def cmd_repair(args: argparse.Namespace) -> int:
    paths, config = project(args)
    summary, kept = repair.repair_aof(paths, config)
    print(f"{summary}\nthe files as they were are kept in {kept}; start with `tinytownd start`")
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("save", "snapshot the running town into one file (safe to commit or copy)")
    p.add_argument(
        "--to",
        metavar="FILE",
        help=f"where to write it (default: {SNAPSHOT_FILE} in the project)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("restore", "replace the town's data with a snapshot from `tinytownd save`")
    p.add_argument("file", help="the snapshot file")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument(
        "--rename-town",
        nargs="?",
        const="*",
        metavar="OLD",
        help="move the snapshot's keys from town OLD (default: the one other town "
        "in it) into this town",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add("repair", "make a damaged append-only file loadable (keeps a copy first)")
