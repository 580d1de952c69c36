"""``tinytownd``: the command line. Only this package prints or picks exit codes."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Sequence

from .._version import __version__
from ..errors import TinytownError
from . import backup, bench, completion, daemon, service, town
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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_text, description=help_text)

    daemon.add_parsers(add)
    town.add_parsers(add)
    service.add_parsers(add)
    backup.add_parsers(add)
    bench.add_parsers(add)
    completion.add_parsers(add)
    completion.PARSER[:] = [parser]
    return parser


def _unknown_command(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """``unknown command 'stauts'; did you mean 'status'?`` for the first word that is
    neither an option nor a command, or None."""
    words = iter(argv)
    for word in words:
        if word == "--dir":
            next(words, None)
        elif not word.startswith("-"):
            if word in COMMANDS:
                return None
            close = difflib.get_close_matches(word, sorted(COMMANDS), n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            return f"unknown command {word!r}{hint} (`tinytownd --help` lists them)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    unknown = _unknown_command(parser, argv)
    if unknown:
        print(f"tinytownd: {unknown}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:  # no command: the list of them, as --help
        parser.print_help()
        return 0
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        # `tinytownd logs | head -1`: the reader left; end quietly, as cat does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except TinytownError as err:
        print(f"tinytownd: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:  # a file we could not read or write: say which, not a traceback
        where = f": {err.filename}" if err.filename else ""
        print(f"tinytownd: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
