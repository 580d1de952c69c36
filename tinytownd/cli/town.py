"""Commands that use the town: send, inbox, agents, tasks, broadcast, listen, migrate."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..config import redact_url
from ..daemon.state import DaemonState, TownState
from ..errors import ConfigError, InvalidMessageError, NotRunningError
from ..lazyimport import lazy
from ..messages import MESSAGE_TYPES, Message, Priority
from ..paths import ProjectPaths
from ..wire import canonical_id
from .common import command, emit, printable, project, table, whole_number

if TYPE_CHECKING:
    import redis

    from .. import migrate as migrate_module
    from .. import ops
    from .. import top as top_module
    from .. import town as town_module
    from ..channel import Channel
else:
    redis = lazy("redis")
    migrate_module = lazy("tinytownd.migrate")
    ops = lazy("tinytownd.ops")
    town_module = lazy("tinytownd.town")
    top_module = lazy("tinytownd.top")

NOBODY = "00000000-0000-0000-0000-000000000000"


@contextmanager
def _channel(args: argparse.Namespace) -> Iterator[Channel]:
    paths, config = project(args)
    if not config.remote_url and not paths.client_socket.exists():
        raise NotRunningError(f"town {config.name!r} is not running; {_next_step(paths)}")
    if config.remote_source.startswith("$"):  # an exported variable: easy to forget
        print(
            f"tinytownd: using the Redis at {redact_url(config.remote_url)} "
            f"(from {config.remote_source})",
            file=sys.stderr,
        )
    town = town_module.Town.connect(paths.root, start=False)
    try:
        yield town.channel()
    except redis.ConnectionError as err:
        where = "" if config.remote_url else f"; {_next_step(paths)}"
        raise NotRunningError(
            f"cannot reach the Redis of town {config.name!r}: {err}{where}"
        ) from None
    finally:
        town.close()


_FIELD_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _next_step(paths: ProjectPaths) -> str:
    """What to do when the town does not answer: after a crash, see why first."""
    recorded = DaemonState.load(paths)
    if recorded.state == TownState.FAILED:
        return (
            f"it failed ({recorded.failure or 'see `tinytownd status`'}); fix that, then "
            "`tinytownd start`"
        )
    if recorded.state == TownState.RESTARTING:
        return "Redis is restarting after a crash; retry in a moment (`tinytownd status`)"
    return "start it with `tinytownd start`"


def _message(args: argparse.Namespace, channel: Channel) -> Message:
    """The message the arguments describe, its agents resolved by name, nickname or
    short id as tinytown does (a UUID is taken as it is)."""
    to = args.to if args.to == NOBODY else channel.resolve(args.to)
    sender = args.sender if args.sender == NOBODY else channel.resolve(args.sender)
    spec = MESSAGE_TYPES[args.type]
    fields: dict[str, Any] = {}
    for item in args.fields:
        name, sep, value = item.partition("=")
        confirmation = {"ack", "reason"} if args.type == "confirmation" else set()
        known = {field for field, _ in spec} | confirmation
        if sep and name in known:
            fields[name] = value
        elif sep and _FIELD_NAME.fullmatch(name):
            # `desc="Fix it"` is a misspelt field, not a description that says "desc=..."
            names = ", ".join(sorted(known)) or "no fields"
            raise ConfigError(
                f"--type {args.type} has no field {name!r} (its fields: {names}); to send "
                f"that text, write {spec[0][0] if spec else 'FIELD'}={item!r}"
            )
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
            sender,
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
    return printable(
        f"{stamp} {message.priority.value:<6} {message.type:<15} "
        f"{message.sender[:8]} -> {message.to[:8]} {details}"
    ).rstrip()


@command("send")
def cmd_send(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        message = _message(args, channel)
        (channel.send_urgent if args.urgent else channel.send)(message)
    where = "the urgent list of " if args.urgent else ""
    emit(args, message.to_dict(), f"sent {message.type} {message.id} to {where}{message.to}")
    return 0


@command("broadcast")
def cmd_broadcast(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        message = _message(args, channel)
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


@command("top")
def cmd_top(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        if args.once:
            shot = top_module.snapshot(channel)
            emit(args, shot.to_dict(), _screen(shot, None))
            return 0
        previous = None
        try:
            while True:
                shot = top_module.snapshot(channel)
                if sys.stdout.isatty():
                    print("\x1b[H\x1b[2J", end="")  # home, clear: any terminal, over SSH too
                print(_screen(shot, previous), flush=True)
                previous = shot
                time.sleep(args.interval)
        except KeyboardInterrupt:
            return 0


def _screen(shot: top_module.Snapshot, previous: top_module.Snapshot | None) -> str:
    sends, receives = top_module.rates(previous, shot)
    p = shot.persistence
    aof = (
        f"AOF {'on, last write ' + str(p['aof_last_write_status']) if p['aof_enabled'] else 'off'}"
    )
    header = (
        f"town {shot.town}  {time.strftime('%H:%M:%S', time.localtime(shot.taken_at))}  "
        f"memory {shot.memory_mb:.1f} MB  clients {shot.clients}  "
        f"in {sends:.0f}/s  out {receives:.0f}/s\n"
        f"RDB last save {p['rdb_last_bgsave_status']}, "
        f"{p['rdb_changes_since_last_save']} changes since; {aof}"
    )
    rows = [
        [
            row.name,
            row.id[:8],
            row.state,
            f"{row.heartbeat_age_s:.0f}s",
            str(row.inbox),
            str(row.urgent),
            str(row.processing),
            str(row.dead),
        ]
        for row in shot.agents
    ]
    columns = ["AGENT", "ID", "STATE", "HEARTBEAT", "INBOX", "URGENT", "PROCESSING", "DEAD"]
    body = table(rows, columns) if rows else "no agents"
    problems = "".join(f"\nunreadable: {printable(p)}" for p in shot.problems)
    return f"{header}\n\n{body}{problems}"


@command("inbox")
def cmd_inbox(args: argparse.Namespace) -> int:
    lists = (
        [("dead", True, False)] if args.dead else [("urgent", False, True), ("inbox", False, False)]
    )
    shown: dict[str, Any] = {}
    lines: list[str] = []
    with _channel(args) as channel:
        agent = channel.resolve(args.agent)
        for name, dead, urgent in lists:
            key = getattr(channel.keys, name)(agent)
            length = channel.run(ops.list_len(key))
            raw = channel.peek(agent, args.peek, dead=dead, urgent=urgent)
            rows: list[Any] = []
            if urgent and not length:
                shown[name] = {"key": key, "length": 0, "messages": rows}
                continue  # an empty urgent list is the usual case: not worth a line
            lines.append(f"{key}: {length} message(s)")
            for item in raw:
                message = None if dead else _parse(item)
                text = item.decode("utf-8", "backslashreplace")
                rows.append(message.to_dict() if message else text)
                lines.append(f"  {describe(message)}" if message else f"  {text[:200]}")
            shown[name] = {"key": key, "length": length, "messages": rows}
    # --json: the inbox (or dead letters) at the top level, as before; urgent beside it.
    data = shown.pop("dead") if args.dead else {**shown.pop("inbox"), "urgent": shown["urgent"]}
    emit(args, data, "\n".join(lines))
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"


def _listing(
    args: argparse.Namespace,
    what: str,
    items: list[Any],
    rows: list[list[str]],
    header: list[str],
    problems: list[str],
) -> int:
    text = table(rows, header) if rows else f"no {what}"
    text += "".join(f"\nunreadable: {printable(problem)}" for problem in problems)
    emit(args, {what: [item.to_dict() for item in items], "problems": problems}, text)
    return 0


@command("agents")
def cmd_agents(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        listing = channel.agents_listing()
    agents = sorted(listing.items, key=lambda agent: agent.name)
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
    return _listing(args, "agents", agents, rows, header, listing.problems)


@command("tasks")
def cmd_tasks(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        listing = channel.tasks_listing()
    tasks = sorted(listing.items, key=lambda task: task.created_at)
    rows = [
        [t.id, t.state.value, t.assigned_to or "-", _when(t.updated_at), t.description[:60]]
        for t in tasks
    ]
    header = ["ID", "STATE", "ASSIGNED", "UPDATED", "DESCRIPTION"]
    return _listing(args, "tasks", tasks, rows, header, listing.problems)


@command("migrate")
def cmd_migrate(args: argparse.Namespace) -> int:
    _, config = project(args)
    if not args.dry_run and not args.force:
        if not sys.stdin.isatty():
            raise ConfigError(
                "migrate changes keys: run with --dry-run to see the plan, "
                "then with --force (or from a terminal) to apply it"
            )
        question = (
            f"rewrite town {config.name!r}'s agent and task state as {args.state}?"
            if args.state
            else f"move every tt:{args.rename_town}:* key into town {config.name!r}?"
            if args.rename_town
            else f"rename legacy tt:* keys into town {config.name!r}?"
        )
        answer = input(f"{question} [y/N] ")
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

    if args.state and args.rename_town:
        raise ConfigError("migrate takes --state or --rename-town, not both")
    if args.state:
        return _convert_state(args, show)
    with _channel(args) as channel:
        if args.rename_town:
            op = migrate_module.rename_town(args.rename_town, config.name, args.dry_run, show)
        else:
            op = migrate_module.migrate(config.name, args.dry_run, show)
        report = channel.run(op)
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


def _convert_state(
    args: argparse.Namespace, show: Callable[[migrate_module.MigrationReport], None] | None
) -> int:
    with _channel(args) as channel:
        report = channel.run(
            migrate_module.convert_state(channel.keys, args.state, args.dry_run, show)
        )
    if show:
        print(file=sys.stderr)
    verb = "would convert" if args.dry_run else "converted"
    lines = [
        f"{verb} {len(report.converted)} key(s) to {args.state}, {report.already} already "
        f"{args.state}, {len(report.problems)} problem(s) (scanned {report.scanned})"
    ]
    lines += [f"  {key}" for key in report.converted]
    lines += [f"  PROBLEM {printable(problem)}" for problem in report.problems]
    data = {
        "dry_run": args.dry_run,
        "state": args.state,
        "scanned": report.scanned,
        "converted": report.converted,
        "already": report.already,
        "problems": report.problems,
    }
    emit(args, data, "\n".join(lines))
    return 1 if report.problems else 0


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
            metavar="AGENT",
            help="recipient: an agent id, name, nickname or unique id prefix"
            + ("" if name == "send" else " (default: the nil UUID)"),
        )
        p.add_argument(
            "--from",
            dest="sender",
            default=NOBODY,
            metavar="AGENT",
            help="sender: an agent id, name, nickname or id prefix (default: the nil UUID)",
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
        if name == "send":
            p.add_argument(
                "--urgent",
                action="store_true",
                help="queue on the agent's urgent list, taken before its inbox (tt send --urgent)",
            )
    p = add("top", "a live view of the town: agents, their lists, message rates, Redis")
    p.add_argument("--once", action="store_true", help="print one view and exit")
    p.add_argument("--json", action="store_true", help="with --once: machine-readable output")
    p.add_argument(
        "--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes"
    )
    p = add("inbox", "show an agent's urgent list and inbox (or dead letters), taking nothing")
    p.add_argument("agent", help="an agent id, name, nickname or unique id prefix")
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
    p = add(
        "migrate",
        "rename pre-0.9 keys (tt:agent:<id>, ...) into this town, or with --state rewrite "
        "agent and task state as hashes or JSON strings",
    )
    p.add_argument(
        "--state",
        choices=("hash", "json"),
        help="convert agent and task keys to this form (hash: as tinytown 0.10 stores them)",
    )
    p.add_argument(
        "--rename-town",
        metavar="OLD",
        help="move every tt:OLD:* key into this town (after `config set name`, or a restore "
        "of another town's snapshot); RENAMENX, so an existing key is never overwritten",
    )
    p.add_argument("--dry-run", action="store_true", help="show what would move; change nothing")
    p.add_argument("--force", action="store_true", help="do not ask for confirmation")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _uuid(text: str) -> str:
    try:
        return canonical_id(text)
    except InvalidMessageError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an agent id (a UUID)") from None
