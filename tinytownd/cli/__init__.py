"""``tinytownd``: the command line. Only this package prints or picks exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import TinytownError
from . import backup, bench, daemon, service, town
from .common import COMMANDS


def build_parser() -> argparse.ArgumentParser:
    dir_help = (
        "the town's directory (default: $TINYTOWN_DIR, else the nearest directory at or "
        "above the current one with a tinytown.toml or a .tt/, else the current one)"
    )
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a --dir given before the command must survive the subcommand's parsing.
    common.add_argument("--dir", default=argparse.SUPPRESS, metavar="DIR", help=dir_help)
    parser = argparse.ArgumentParser(
        prog="tinytownd",
        description="Run and use a Tinytown town: a supervised Redis on ./redis.sock.",
    )
    parser.add_argument("--version", action="version", version=f"tinytownd {__version__}")
    parser.add_argument("--dir", default=None, metavar="DIR", help=dir_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    daemon.add_parsers(add)
    town.add_parsers(add)
    service.add_parsers(add)
    backup.add_parsers(add)
    bench.add_parsers(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except TinytownError as err:
        print(f"tinytownd: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file we could not read or write: say which, not a traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"tinytownd: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
