"""``tinytownd bench``: the seed's latency table, measured here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..lazyimport import lazy
from .common import command, emit, town_dir, whole_number

if TYPE_CHECKING:
    from .. import bench
else:
    bench = lazy("tinytownd.bench")


def _progress(enabled: bool) -> bench.Progress:
    def show(label: str, fraction: float) -> None:
        if enabled:
            filled = int(fraction * 30)
            print(
                f"\r[{'#' * filled}{' ' * (30 - filled)}] {label:<28}",
                end="",
                file=sys.stderr,
                flush=True,
            )

    return show


def _counts(text: str) -> list[int]:
    """``1,8,64`` as agent counts, each 1 to 4096."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(1 <= count <= 4096 for count in counts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give agent counts from 1 to 4096, separated by commas (1,8,64,512)"
        )
    return counts


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0.5 <= value <= 600:
        raise argparse.ArgumentTypeError(f"{text!r}: give seconds from 0.5 to 600")
    return value


def _agents_table(figures: dict[str, Any]) -> list[str]:
    tool = figures["redis_benchmark"] or "redis-benchmark (not installed)"
    lines = [
        f"A town under load: N agents in a ring, one message in flight each, "
        f"{figures['message_bytes']}-byte messages, {figures['seconds']:g} s per run; "
        f"sync agents are threads in up to {figures['sync_processes']} processes. "
        f"The floor: {tool} -c N, RPUSH then LPOP of as many bytes.",
        "",
        "| agents | mode | msgs/s | p50 send→receive | p99 | Redis CPU "
        "| redis-benchmark msgs/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in figures["rows"]:
        floor = row.get("redis_benchmark", {}).get("msgs_per_s")
        for mode in ("asyncio", "sync"):
            run = row[mode]
            versus = f"{floor:,.0f} | {run['msgs_per_s'] / floor:.2f}x" if floor else "n/a | n/a"
            lines.append(
                f"| {row['agents']} | {mode} | {run['msgs_per_s']:,.0f} | "
                f"{_us(run['latency_p50_us'])} | {_us(run['latency_p99_us'])} | "
                f"{run['redis_cpu_percent']:.0f}% | {versus} |"
            )
    return lines


def _us(value: float) -> str:
    return f"{value / 1000:.1f} ms" if value >= 1000 else f"{value:.0f} us"


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| Operation | p50 | p99 | raw redis-py (p50) | ratio |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| {row['operation']} | {row['p50_us']:.0f} us | {row['p99_us']:.0f} us | "
            f"{row['floor']} {row['floor_p50_us']:.0f} us | {row['ratio']:.2f}x |"
        )
    return lines


def _send_many_line(label: str, many: dict[str, float]) -> str:
    return (
        f"{label}: {many['send_many_msgs_per_s']:,.0f} msgs/s (raw pipelined RPUSH "
        f"{many['raw_pipeline_msgs_per_s']:,.0f} msgs/s; {many['ratio']:.2f}x)"
    )


def render(report: dict[str, Any]) -> str:
    machine = report["machine"]
    transports = ", ".join(
        f"{row['operation']} {row['p50_us']:.0f} us vs {row['floor_p50_us']:.0f} us "
        f"({row['ratio']:.2f}x)"
        for row in report["unix_vs_tcp"]
    )
    lines = [
        f"{machine['redis']}, Python {machine['python']}, {machine['cpus']} CPUs, "
        f"hiredis {'on' if machine['hiredis'] else 'off'}, "
        f"orjson {'on' if machine.get('orjson') else 'off'}, n={machine['n']}",
        "",
        "Unix socket",
        "",
        *_table(report["unix"]),
        "",
        *(
            [
                "Unix socket, without tinytownd[fast] (Python packing and parsing, standard json)",
                "",
                *_table(report["unix_pure_python"]),
                "",
            ]
            if report.get("unix_pure_python")
            else []
        ),
        "TCP loopback",
        "",
        *_table(report["tcp"]),
        "",
        f"unix socket vs TCP loopback, same server, alternating: {transports}",
        _send_many_line("send_many", report["send_many"]),
        *(
            [_send_many_line("send_many without tinytownd[fast]", pure)]
            if (pure := report.get("send_many_pure_python"))
            else []
        ),
    ]
    for mode, e2e in report["end_to_end"].items():
        lines.append(
            f"two processes ({mode}): round trip p50 {e2e['round_trip_p50_us']:.0f} us, "
            f"p99 {e2e['round_trip_p99_us']:.0f} us; "
            f"{e2e['throughput_msgs_per_s']:,.0f} msgs/s one way"
        )
    if "commands" in report:
        lines += ["", "Commands (wall time, p50)", ""]
        floor = report["commands"]["python -c pass"]
        lines += [
            f"{label:<28} {ms:6.0f} ms"
            + (f"  ({ms / floor:.1f}x python -c pass)" if ms != floor else "")
            for label, ms in report["commands"].items()
        ]
    if "remote" in report:
        remote = report["remote"]
        local = {row["operation"]: row["p50_us"] for row in report["unix"]}
        lines += [
            "",
            f"{remote['url']} ({remote['kind']}, {remote['redis']}) over TCP, "
            "next to the local socket above",
            "",
            "| Operation | p50 | p99 | raw redis-py (p50) | ratio | local socket (p50) "
            "| vs local |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in remote["rows"]:
            here = local[row["operation"].removeprefix("remote ")]
            lines.append(
                f"| {row['operation'].removeprefix('remote ')} | {row['p50_us']:.0f} us | "
                f"{row['p99_us']:.0f} us | {row['floor']} {row['floor_p50_us']:.0f} us | "
                f"{row['ratio']:.2f}x | {here:.0f} us | {row['p50_us'] / here:.2f}x |"
            )
        lines.append(_send_many_line("send_many", remote["send_many"]))
    if "supervisor" in report:
        s = report["supervisor"]
        lines += [
            "",
            "Supervisor",
            "",
            f"start to ready: {s['start_to_ready_ms_p50']:.0f} ms (p50)",
            *(
                f"kill -9 to serving, {what}: {s[f'kill9_to_serving_ms_{label}']:.1f} ms (p50); "
                f"the server alone on the same files: {s[f'bare_load_ms_{label}']:.1f} ms "
                f"({s[f'kill9_to_serving_ms_{label}'] / s[f'bare_load_ms_{label}']:.2f}x)"
                for label, what in (
                    ("empty", "empty"),
                    ("rdb_100k", "100k keys, RDB"),
                    ("aof_100k", "100k keys, AOF"),
                    ("rdb_1m", "1M keys, RDB"),
                    ("aof_1m", "1M keys, AOF"),
                )
                if f"kill9_to_serving_ms_{label}" in s
            ),
            f"idle daemon: {s['idle_cpu_percent']:.2f}% of one core, {s['idle_rss_mb']:.0f} MB RSS",
        ]
    if "agents" in report:
        lines += ["", *_agents_table(report["agents"])]
    return "\n".join(lines)


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    progress = _progress(sys.stderr.isatty() and not args.json)
    report = bench.run(str(town_dir(args)), args.n, progress)
    if args.url:
        report["remote"] = bench.remote_figures(args.url, args.n, progress)
    if args.commands:
        report["commands"] = bench.command_figures(progress)
    if args.supervisor:
        report["supervisor"] = bench.supervisor_figures(progress)
    if args.agents:
        report["agents"] = bench.agents_figures(args.agents, args.seconds, progress)
    if sys.stderr.isatty() and not args.json:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr)
    emit(args, report, render(report))
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add(
        "bench",
        "measure Channel latency against raw redis-py (a throwaway town if none runs in --dir)",
    )
    p.add_argument(
        "--n",
        type=whole_number(100),
        default=5000,
        help="operations per measurement (default 5000)",
    )
    p.add_argument(
        "--commands",
        action="store_true",
        help="also time --help, --version, status and start as a shell runs them",
    )
    p.add_argument(
        "--supervisor",
        action="store_true",
        help="also time start, kill -9 recovery (empty; 100k and 1M keys, RDB and AOF) next "
        "to the server alone loading the same files, idle CPU and RSS (about 4 minutes)",
    )
    p.add_argument(
        "--url",
        metavar="URL",
        help="also measure over TCP against the Redis at URL (one server, or any node of a "
        "Redis Cluster), next to the local socket; writes and deletes bench-* keys there",
    )
    p.add_argument(
        "--agents",
        type=_counts,
        metavar="N[,N...]",
        help="also run N agents in a ring through a throwaway town, asyncio in one process "
        "and sync in several, next to redis-benchmark with N connections (try 1,8,64,512)",
    )
    p.add_argument(
        "--seconds",
        type=_seconds,
        default=3.0,
        help="how long each --agents run is timed, after 1 s of warm-up (default 3)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
