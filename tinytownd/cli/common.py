"""What every CLI command shares: the registry, the project lookup, output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import config as config_module
from ..config import Config
from ..daemon.state import DaemonState, daemon_pid
from ..errors import BrokenConfigError, ConfigError
from ..paths import ProjectPaths, find_town

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the implementation of ``tinytownd NAME``."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def town_dir(args: argparse.Namespace, create: bool = False) -> Path:
    """The directory a command acts on: ``--dir`` or ``$TINYTOWN_DIR`` exactly, else the
    nearest town at or above the current directory, else the current directory."""
    given = args.dir or os.environ.get("TINYTOWN_DIR")
    if given:
        root = Path(os.path.abspath(given))
        if not root.is_dir():
            if create:
                return root
            raise ConfigError(f"{root} is not a directory")
        return root
    return find_town(".") or Path.cwd()


def project(
    args: argparse.Namespace, running_fallback: bool = False
) -> tuple[ProjectPaths, Config]:
    """The town's paths and settings. With ``running_fallback`` (status, logs, stop,
    config), a ``tinytown.toml`` that no longer parses is reported in one line and the
    settings the running daemon read are used instead: a typo never locks anyone out."""
    paths = ProjectPaths(town_dir(args))
    try:
        return paths, config_module.load(paths.root)
    except BrokenConfigError as err:
        settings = DaemonState.load(paths).settings if running_fallback else None
        if not settings or daemon_pid(paths) is None:
            raise
        config = config_module.from_mapping(settings, default_name=paths.root.name)
        print(
            f"tinytownd: warning: {err}; using the settings the running town started with "
            "(`tinytownd config set KEY VALUE` rewrites the file, keeping the broken one)",
            file=sys.stderr,
        )
        return paths, dataclasses.replace(config, local_socket=str(paths.socket))


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for whole numbers of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``text`` for a person, or ``data`` as JSON with ``--json``."""
    print(json.dumps(data, indent=2, default=str) if getattr(args, "json", False) else text)


def table(rows: list[list[str]], header: list[str]) -> str:
    """Columns padded to their widest cell, a header row first; control characters in
    cells (an agent named with an escape sequence) are shown escaped, never sent."""
    rows = [[printable(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def printable(text: str) -> str:
    """``text`` with control characters escaped, so a name cannot rewrite the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
