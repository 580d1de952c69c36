"""Commands that use the town: send, inbox, agents, tasks, broadcast, listen, migrate."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import redis

from .. import migrate as migrate_module
from ..channel import Channel
from ..errors import ConfigError, InvalidMessageError, NotRunningError
from ..models import MESSAGE_TYPES, Message, Priority, canonical_id
from ..town import Town
from .common import command, emit, project, whole_number

NOBODY = "00000000-0000-0000-0000-000000000000"


@contextmanager
def _channel(args: argparse.Namespace) -> Iterator[Channel]:
    paths, config = project(args)
    if not config.remote_url and not paths.client_socket.exists():
        raise NotRunningError(
            f"town {config.name!r} is not running; start it with `tinytownd start`"
        )
    town = Town.connect(paths.root, start=False)
    try:
        yield town.channel()
    except redis.ConnectionError as err:
        raise NotRunningError(f"cannot reach the Redis of town {config.name!r}: {err}") from None
    finally:
        town.close()


def _message(args: argparse.Namespace, to: str) -> Message:
    spec = MESSAGE_TYPES[args.type]
    fields: dict[str, Any] = {}
    for item in args.fields:
        name, sep, value = item.partition("=")
        confirmation = {"ack", "reason"} if args.type == "confirmation" else set()
        if sep and name in {field for field, _ in spec} | confirmation:
            fields[name] = value
        elif len(spec) == 1 and spec[0][1] is str and not fields:
            fields[spec[0][0]] = item  # the one text field of task, query, informational...
        else:
            names = ", ".join(f"{field}=..." for field, _ in spec) or "no fields"
            raise ConfigError(f"--type {args.type} takes {names}; got {item!r}")
    if args.type == "confirmation":
        ack = {"type": fields.pop("ack", "received")}
        if "reason" in fields:
            ack["reason"] = fields.pop("reason")
        fields["ack_type"] = ack
    if args.type == "status_response":
        fields.setdefault("current_task", None)
    try:
        return Message.create(
            args.type,
            args.sender,
            to,
            priority=args.priority,
            correlation_id=args.correlation_id,
            **fields,
        )
    except InvalidMessageError as err:
        raise ConfigError(f"--type {args.type}: {err}") from None


def _parse(raw: bytes) -> Message | None:
    try:
        return Message.from_json(raw)
    except InvalidMessageError:
        return None


def describe(message: Message) -> str:
    """One line for a person."""
    details = " ".join(f"{key}={json.dumps(value)}" for key, value in message.body.items())
    stamp = message.created_at.strftime("%H:%M:%S")
    return (
        f"{stamp} {message.priority.value:<6} {message.type:<15} "
        f"{message.sender[:8]} -> {message.to[:8]} {details}"
    ).rstrip()


@command("send")
def cmd_send(args: argparse.Namespace) -> int:
    message = _message(args, args.to)
    with _channel(args) as channel:
        channel.send(message)
    emit(args, message.to_dict(), f"sent {message.type} {message.id} to {message.to}")
    return 0


@command("broadcast")
def cmd_broadcast(args: argparse.Namespace) -> int:
    message = _message(args, args.to)
    with _channel(args) as channel:
        receivers = channel.broadcast(message)
    emit(
        args,
        {"message": message.to_dict(), "receivers": receivers},
        f"broadcast {message.type} {message.id} to {receivers} listener(s)",
    )
    return 0


@command("listen")
def cmd_listen(args: argparse.Namespace) -> int:
    with _channel(args) as channel, channel.subscribe() as subscription:
        print(f"listening on {subscription.channel} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        for seen, message in enumerate(subscription, start=1):
            print(message.to_json() if args.json else describe(message), flush=True)
            if args.count and seen >= args.count:
                break
    return 0


@command("inbox")
def cmd_inbox(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        key = channel.keys.dead(args.agent) if args.dead else channel.keys.inbox(args.agent)
        length = channel.redis.llen(key)
        raw = channel.peek(args.agent, args.peek, dead=args.dead)
    rows: list[Any] = []
    lines = [f"{key}: {length} message(s)"]
    for item in raw:
        message = None if args.dead else _parse(item)
        text = item.decode("utf-8", "backslashreplace")
        rows.append(message.to_dict() if message else text)
        lines.append(f"  {describe(message)}" if message else f"  {text[:200]}")
    emit(args, {"key": key, "length": length, "messages": rows}, "\n".join(lines))
    return 0


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


@command("agents")
def cmd_agents(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        agents = sorted(channel.agents(), key=lambda agent: agent.name)
    rows = [
        [
            a.id,
            a.name,
            a.agent_type.value,
            a.state.value,
            a.current_task or "-",
            str(a.tasks_completed),
            _when(a.last_heartbeat),
        ]
        for a in agents
    ]
    header = ["ID", "NAME", "TYPE", "STATE", "TASK", "DONE", "HEARTBEAT"]
    emit(args, [a.to_dict() for a in agents], _table(rows, header) if rows else "no agents")
    return 0


@command("tasks")
def cmd_tasks(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        tasks = sorted(channel.tasks(), key=lambda task: task.created_at)
    rows = [
        [t.id, t.state.value, t.assigned_to or "-", _when(t.updated_at), t.description[:60]]
        for t in tasks
    ]
    header = ["ID", "STATE", "ASSIGNED", "UPDATED", "DESCRIPTION"]
    emit(args, [t.to_dict() for t in tasks], _table(rows, header) if rows else "no tasks")
    return 0


@command("migrate")
def cmd_migrate(args: argparse.Namespace) -> int:
    _, config = project(args)
    if not args.dry_run and not args.force:
        if not sys.stdin.isatty():
            raise ConfigError(
                "migrate renames keys: run with --dry-run to see the plan, "
                "then with --force (or from a terminal) to apply it"
            )
        answer = input(f"rename legacy tt:* keys into town {config.name!r}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing changed")
            return 0
    show: Callable[[migrate_module.MigrationReport], None] | None = None
    if sys.stderr.isatty():

        def show(report: migrate_module.MigrationReport) -> None:
            print(
                f"\rscanned {report.scanned} keys, {len(report.moved)} to move",
                end="",
                file=sys.stderr,
                flush=True,
            )

    with _channel(args) as channel:
        report = channel.run(migrate_module.migrate(config.name, args.dry_run, show))
    if show:
        print(file=sys.stderr)
    verb = "would move" if args.dry_run else "moved"
    lines = [
        f"{verb} {len(report.moved)} key(s), {len(report.conflicts)} conflict(s) "
        f"(scanned {report.scanned})"
    ]
    lines += [f"  {old} -> {new}" for old, new in report.moved]
    lines += [
        f"  CONFLICT {old}: {new} already exists, left both alone" for old, new in report.conflicts
    ]
    data = {
        "dry_run": args.dry_run,
        "scanned": report.scanned,
        "moved": [list(pair) for pair in report.moved],
        "conflicts": [list(pair) for pair in report.conflicts],
    }
    emit(args, data, "\n".join(lines))
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    for name, help_text in (
        ("send", "send a message to an agent's inbox"),
        ("broadcast", "publish a message to every listener"),
    ):
        p = add(name, help_text)
        p.add_argument(
            "--to",
            required=name == "send",
            default=NOBODY,
            type=_uuid,
            metavar="AGENT",
            help="recipient agent id" + ("" if name == "send" else " (default: the nil UUID)"),
        )
        p.add_argument(
            "--from",
            dest="sender",
            default=NOBODY,
            type=_uuid,
            help="sender agent id (default: the nil UUID)",
        )
        p.add_argument(
            "--type",
            required=True,
            choices=list(MESSAGE_TYPES),
            metavar="TYPE",
            help=f"message type: {', '.join(MESSAGE_TYPES)}",
        )
        p.add_argument(
            "--priority",
            default="normal",
            choices=[p.value for p in Priority],
            help="low, normal (default), high or urgent",
        )
        p.add_argument(
            "--correlation-id", type=_uuid, metavar="ID", help="id of the message this answers"
        )
        p.add_argument(
            "fields",
            nargs="*",
            metavar="FIELD=VALUE",
            help='the type\'s fields, e.g. description="Fix it" (or just the text '
            "for one-field types); confirmation takes ack=TYPE [reason=...]",
        )
        p.add_argument("--json", action="store_true", help="print the message as JSON")
    p = add("inbox", "show an agent's inbox (or dead letters) without taking anything")
    p.add_argument("agent", type=_uuid, help="agent id")
    p.add_argument(
        "--peek", type=whole_number(1), default=10, metavar="N", help="show N (default 10)"
    )
    p.add_argument("--dead", action="store_true", help="show payloads that were not messages")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    for name, help_text in (
        ("agents", "list the town's agents"),
        ("tasks", "list the town's tasks"),
    ):
        p = add(name, help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("listen", "print broadcast messages as they arrive")
    p.add_argument("--count", type=whole_number(1), help="exit after N messages")
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p = add("migrate", "rename pre-0.9 keys (tt:agent:<id>, ...) into this town")
    p.add_argument("--dry-run", action="store_true", help="show what would move; change nothing")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _uuid(text: str) -> str:
    try:
        return canonical_id(text)
    except InvalidMessageError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent id (a UUID)") from None
