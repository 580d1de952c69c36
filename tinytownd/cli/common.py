"""What every CLI command shares: the registry, the project lookup, output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .. import config as config_module
from ..config import Config
from ..errors import ConfigError
from ..paths import ProjectPaths

Handler = Callable[[argparse.Namespace], int]
COMMANDS: dict[str, Handler] = {}


def command(name: str) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the implementation of ``tinytownd NAME``."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = handler
        return handler

    return register


def project(args: argparse.Namespace) -> tuple[ProjectPaths, Config]:
    paths = ProjectPaths.of(args.dir)
    if not paths.root.is_dir():
        raise ConfigError(f"{paths.root} is not a directory")
    return paths, config_module.load(paths.root)


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
