"""``tinytownd completion bash|zsh|fish``: shell completion built from the parser itself,
so it never falls behind the commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable

from .common import command

#: Set by :func:`tinytownd.cli.build_parser` once every command is registered.
PARSER: list[argparse.ArgumentParser] = []


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, list[str]]]:
    """Each command's help line and option strings."""
    found: dict[str, tuple[str, list[str]]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                options = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
                found[name] = (helps.get(name, ""), options)
    return found


def bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    first = shlex.quote(" ".join([*commands, "--help", "--version", "--dir"]))
    cases = "\n".join(
        f"        {name}) opts={shlex.quote(' '.join(options))} ;;"
        for name, (_, options) in commands.items()
    )
    return f"""# tinytownd completion for bash: eval "$(tinytownd completion bash)"
_tinytownd() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd="" word opts="" i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in --dir) ((i++)) ;; -*) ;; *) cmd=$word; break ;; esac
    done
    if [[ -z $cmd ]]; then
        COMPREPLY=($(compgen -W {first} -- "$cur"))
        return
    fi
    case $cmd in
{cases}
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -o default -F _tinytownd tinytownd
"""


def zsh(parser: argparse.ArgumentParser) -> str:
    return (
        '# tinytownd completion for zsh: eval "$(tinytownd completion zsh)"\n'
        "autoload -U +X bashcompinit && bashcompinit\n" + bash(parser).split("\n", 1)[1]
    )


def fish(parser: argparse.ArgumentParser) -> str:
    lines = ["# tinytownd completion for fish: tinytownd completion fish | source"]
    for name, (help_text, options) in _commands(parser).items():
        lines.append(
            f"complete -c tinytownd -f -n __fish_use_subcommand -a {name} "
            f"-d {shlex.quote(help_text[:60])}"
        )
        for option in options:
            lines.append(
                f"complete -c tinytownd -n '__fish_seen_subcommand_from {name}' -l {option[2:]}"
            )
    return "\n".join(lines) + "\n"


SHELLS: dict[str, Callable[[argparse.ArgumentParser], str]] = {
    "bash": bash,
    "zsh": zsh,
    "fish": fish,
}


@command("completion")
def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(SHELLS[args.shell](PARSER[0]))
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add(
        "completion",
        'print shell completion: eval "$(tinytownd completion bash)" (or zsh; fish: | source)',
    )
    p.add_argument("shell", choices=sorted(SHELLS))
