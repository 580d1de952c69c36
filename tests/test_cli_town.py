"""Driving a town from the terminal: tinytownd's commands and the seed's redis-cli session."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support import client, redis_cli, tinytownd

from tinytownd import Agent, Message, Task, Town

ME = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b"


def test_send_then_inbox_shows_it_without_taking_it(town: Path) -> None:
    to = str(uuid.uuid4())
    sent = tinytownd(
        "send",
        "--to",
        to,
        "--type",
        "task",
        "--priority",
        "high",
        "Fix the bug",
        "--dir",
        str(town),
    )
    assert sent.returncode == 0, sent.stderr
    shown = tinytownd("inbox", to, "--json", "--dir", str(town))
    data = json.loads(shown.stdout)
    assert data["length"] == 1
    assert data["messages"][0]["description"] == "Fix the bug"
    assert data["messages"][0]["priority"] == "high"
    assert tinytownd("inbox", to, "--dir", str(town)).stdout.startswith(
        f"tt:demo:inbox:{to}: 1 message(s)"
    )
    with Town.connect(town) as connected:
        assert connected.channel().receive(to, timeout=1).body == {"description": "Fix the bug"}


def test_send_takes_named_fields_and_confirmations(town: Path) -> None:
    to = str(uuid.uuid4())
    for args in (
        ["--type", "task_done", "task_id=t-1", "result=ok"],
        ["--type", "confirmation", "ack=rejected", "reason=Missing approval"],
        ["--type", "ping"],
    ):
        result = tinytownd("send", "--to", to, "--from", ME, *args, "--dir", str(town))
        assert result.returncode == 0, result.stderr
    with Town.connect(town) as connected:
        channel = connected.channel()
        done, confirmation, ping = (channel.try_receive(to) for _ in range(3))
    assert done and done.body == {"task_id": "t-1", "result": "ok"}
    assert confirmation and confirmation.body["ack_type"] == {
        "type": "rejected",
        "reason": "Missing approval",
    }
    assert ping and ping.type == "ping" and ping.sender == ME


@pytest.mark.parametrize(
    "args",
    [
        ["--to", "not-a-uuid", "--type", "ping"],
        ["--to", ME, "--type", "ping", "extra"],
        ["--to", ME, "--type", "task_done", "task_id=t-1"],
        ["--to", ME, "--type", "ping", "ack=rejected"],
        ["--to", ME, "--type", "dance"],
        ["--to", ME, "--type", "ping", "--priority", "URGENT"],
    ],
)
def test_bad_send_arguments_are_one_line_and_exit_2(town: Path, args: list[str]) -> None:
    result = tinytownd("send", *args, "--dir", str(town))
    assert result.returncode == 2
    assert result.stderr.strip()
    assert "Traceback" not in result.stderr


def test_inbox_peek_out_of_range_is_refused(town: Path) -> None:
    result = tinytownd("inbox", ME, "--peek", "0", "--dir", str(town))
    assert result.returncode == 2 and "must be at least 1" in result.stderr


def test_commands_on_a_stopped_town_say_how_to_start_it(project: Path) -> None:
    result = tinytownd("send", "--to", ME, "--type", "ping", "--dir", str(project))
    assert result.returncode == 1
    assert "tinytownd start" in result.stderr


def test_inbox_dead_shows_dead_letters(town: Path) -> None:
    client(town).rpush(f"tt:demo:inbox:{ME}", b"not a message")
    with Town.connect(town) as connected:
        assert connected.channel().receive(ME, timeout=0.2) is None
    result = tinytownd("inbox", "--dead", ME, "--dir", str(town))
    assert "not a message" in result.stdout and "1 message(s)" in result.stdout


def test_agents_and_tasks_list_the_town_state(town: Path) -> None:
    worker = Agent(name="worker-7", cli="claude")
    task = Task(description="write docs", assigned_to=worker.id)
    with Town.connect(town) as connected:
        connected.channel().set_agent_state(worker)
        connected.channel().set_task(task)
    agents = tinytownd("agents", "--dir", str(town))
    assert "worker-7" in agents.stdout and worker.id in agents.stdout
    tasks = json.loads(tinytownd("tasks", "--json", "--dir", str(town)).stdout)
    assert [t["description"] for t in tasks["tasks"]] == ["write docs"]
    assert tasks["problems"] == []


def test_listen_prints_what_broadcast_sends(town: Path) -> None:
    listener = subprocess.Popen(
        [sys.executable, "-m", "tinytownd", "listen", "--count", "1", "--json", "--dir", str(town)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stderr is not None
        assert "listening on tt:demo:broadcast" in listener.stderr.readline()
        sent = tinytownd(
            "broadcast", "--type", "informational", "all green", "--json", "--dir", str(town)
        )
        assert json.loads(sent.stdout)["receivers"] == 1
        out, _ = listener.communicate(timeout=20)
    finally:
        listener.kill()
    assert Message.from_json(out.strip()).body == {"summary": "all green"}


LEGACY = {
    "tt:agent:a1": "agent",
    "tt:inbox:a1": "inbox",
    "tt:urgent:a1": "urgent",
    "tt:task:t1": "task",
    "tt:activity:a1": "activity",
    "tt:stop:a1": "stop",
    "tt:backlog": "backlog",
}


def test_migrate_renames_legacy_keys_reports_conflicts_and_is_idempotent(town: Path) -> None:
    raw = client(town)
    for key, value in LEGACY.items():
        raw.set(key, value)
    raw.set("tt:demo:task:t1", "already here")  # a conflict: must not be overwritten
    raw.set("tt:other:agent:a2", "another town's key")  # not legacy

    dry = json.loads(tinytownd("migrate", "--dry-run", "--json", "--dir", str(town)).stdout)
    assert len(dry["moved"]) == 6 and dry["conflicts"] == [["tt:task:t1", "tt:demo:task:t1"]]
    assert raw.exists(*LEGACY) == 7  # dry run changed nothing

    refused = tinytownd("migrate", "--dir", str(town))
    assert refused.returncode == 2 and "--force" in refused.stderr

    done = json.loads(tinytownd("migrate", "--force", "--json", "--dir", str(town)).stdout)
    assert sorted(new for _, new in done["moved"]) == sorted(
        f"tt:demo:{key[3:]}" for key in LEGACY if key != "tt:task:t1"
    )
    assert raw.get("tt:demo:agent:a1") == b"agent" and raw.get("tt:demo:backlog") == b"backlog"
    assert raw.get("tt:demo:task:t1") == b"already here" and raw.get("tt:task:t1") == b"task"
    assert raw.get("tt:other:agent:a2") == b"another town's key"

    again = json.loads(tinytownd("migrate", "--force", "--json", "--dir", str(town)).stdout)
    assert again["moved"] == [] and len(again["conflicts"]) == 1


def test_migrate_walks_a_large_keyspace_with_scan(town: Path) -> None:
    raw = client(town)
    pipe = raw.pipeline(transaction=False)
    for i in range(20_000):
        pipe.set(f"tt:inbox:{i}", i)
    pipe.execute()
    done = json.loads(tinytownd("migrate", "--force", "--json", "--dir", str(town)).stdout)
    assert len(done["moved"]) == 20_000 and done["scanned"] >= 20_000
    assert raw.get("tt:demo:inbox:19999") == b"19999"


@pytest.mark.skipif(redis_cli() is None, reason="redis-cli is not installed (Debian: redis-tools)")
def test_the_seeds_direct_redis_access_session_works_verbatim(town: Path) -> None:
    worker = "550e8400-e29b-41d4-a716-446655440000"
    with Town.connect(town) as connected:
        channel = connected.channel()
        channel.send(Message.task(ME, worker, "Fix the bug"))
        channel.set_agent_state(Agent(id=worker, name="worker-1", cli="claude"))

    def cli(*command: str) -> str:
        done = subprocess.run(
            [str(redis_cli()), "-s", "./redis.sock", *command],
            cwd=town,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return done.stdout.strip()

    assert cli("PING") == "PONG"
    assert cli("KEYS", "tt:demo:inbox:*") == f"tt:demo:inbox:{worker}"
    assert cli("LLEN", f"tt:demo:inbox:{worker}") == "1"
    # tinytown 0.10 keeps agent state as a hash (the seed's GET is for the JSON layout,
    # channel.state = "json"): HGETALL prints field, value, field, value...
    fields = cli("HGETALL", f"tt:demo:agent:{worker}").split("\n")
    assert dict(zip(fields[::2], fields[1::2], strict=True))["name"] == "worker-1"
    assert cli("CONFIG", "SET", "save", "60 1") == "OK"
    assert cli("CONFIG", "SET", "appendonly", "yes") == "OK"


def test_bench_prints_the_seed_table_with_floors_and_ratios(tmp: Path) -> None:
    result = tinytownd("bench", "--n", "100", "--json", "--dir", str(tmp), timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    operations = [row["operation"] for row in report["unix"]]
    assert operations == [
        "send",
        "receive (waiting)",
        "try_receive",
        "receive (reliable)",
        "agent state set",
        "agent state get",
        "task state set",
        "task state get",
    ]
    for row in report["unix"] + report["tcp"]:
        assert row["p50_us"] > 0 and row["floor_p50_us"] > 0
        assert row["ratio"] == pytest.approx(row["p50_us"] / row["floor_p50_us"])
    assert report["send_many"]["send_many_msgs_per_s"] > 0
    fast = report["machine"]["hiredis"] or report["machine"]["orjson"]
    pure = report["send_many_pure_python"]
    assert (pure["send_many_msgs_per_s"] > 0) if fast else pure is None
    from tinytownd.cli.bench import render

    assert ("send_many without tinytownd[fast]: " in render(report)) == bool(fast)
    assert set(report["end_to_end"]) == {"sync", "asyncio"}
    assert not list(tmp.iterdir())  # a throwaway town, gone afterwards


def test_bench_agents_runs_a_ring_both_ways_next_to_redis_benchmark(tmp: Path) -> None:
    from tinytownd.cli.bench import render

    result = tinytownd(
        "bench", "--n", "100", "--agents", "1,3", "--seconds", "0.5", "--json", "--dir",
        str(tmp), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    figures = report["agents"]
    assert [row["agents"] for row in figures["rows"]] == [1, 3]
    for row in figures["rows"]:
        for mode in ("asyncio", "sync"):
            run = row[mode]
            assert run["msgs_per_s"] > 0, f"no message went round {row['agents']} {mode} agents"
            assert 0 < run["latency_p50_us"] <= run["latency_p99_us"]
            assert run["redis_cpu_percent"] >= 0
        if figures["redis_benchmark"]:  # Debian's redis-tools: installed by .ci/run
            floor = row["redis_benchmark"]
            assert floor["rpush_per_s"] > 0 and floor["lpop_per_s"] > 0
            assert floor["msgs_per_s"] < min(floor["rpush_per_s"], floor["lpop_per_s"])
    text = render(report)
    assert "| 3 | sync |" in text and "| 1 | asyncio |" in text
    assert not list(tmp.iterdir())  # a throwaway town, gone afterwards


def test_bench_agents_refuses_a_count_it_cannot_run(tmp: Path) -> None:
    result = tinytownd("bench", "--agents", "8,zero", "--dir", str(tmp))
    assert result.returncode == 2
    assert "give agent counts from 1 to 4096" in result.stderr.strip().splitlines()[-1]


def test_send_urgent_lands_on_the_urgent_list_and_inbox_shows_it_first(town: Path) -> None:
    to = str(uuid.uuid4())
    sent = tinytownd("send", "--urgent", "--to", to, "--type", "task", "now!", "--dir", str(town))
    assert sent.returncode == 0, sent.stderr
    assert "urgent list" in sent.stdout
    shown = tinytownd("inbox", to, "--dir", str(town)).stdout.splitlines()
    assert shown[0] == f"tt:demo:urgent:{to}: 1 message(s)" and "now!" in shown[1]
    assert shown[2] == f"tt:demo:inbox:{to}: 0 message(s)"
    data = json.loads(tinytownd("inbox", to, "--json", "--dir", str(town)).stdout)
    assert data["length"] == 0 and data["urgent"]["length"] == 1


def test_bench_commands_times_each_command_next_to_a_bare_python(tmp: Path) -> None:
    result = tinytownd(
        "bench", "--n", "100", "--commands", "--json", "--dir", str(tmp), timeout=300
    )
    assert result.returncode == 0, result.stderr
    commands = json.loads(result.stdout)["commands"]
    assert set(commands) == {
        "python -c pass",
        "tinytownd --help",
        "tinytownd --version",
        "tinytownd status",
        "tinytownd start (to ready)",
    }
    assert all(ms > 0 for ms in commands.values())
    assert not list(tmp.iterdir())
