"""Living with a town: found from any directory inside it, and never locked out by a typo."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis as redis_py
from support import client, status, tinytownd

from tinytownd import Agent, Message, Town, aio
from tinytownd.errors import UnknownAgentError
from tinytownd.keys import town_name_for
from tinytownd.ops import resolve_agent

ME, YOU = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b", "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def test_a_subdirectory_acts_on_the_town_above_it(town: Path) -> None:
    deep = town / "src" / "agents"
    deep.mkdir(parents=True)
    report = json.loads(tinytownd("status", "--json", cwd=deep).stdout)
    assert (report["dir"], report["state"]) == (str(town), "running")
    sent = tinytownd("send", "--to", YOU, "--type", "ping", cwd=deep)
    assert sent.returncode == 0, sent.stderr
    assert client(town).llen(f"tt:demo:inbox:{YOU}") == 1
    with Town.connect(deep, start=True) as found:
        assert found.paths.root == town
        found.channel().send(Message.ping(ME, YOU))
    assert client(town).llen(f"tt:demo:inbox:{YOU}") == 2
    assert not (deep / ".tt").exists() and not (deep / "tinytown.toml").exists()
    refused = tinytownd("init", cwd=deep)
    assert refused.returncode == 2 and f"inside the town at {town}" in refused.stderr
    assert "--dir ." in refused.stderr


def test_dir_and_tinytown_dir_pick_the_directory_exactly(town: Path, tmp: Path) -> None:
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    before = tinytownd("--dir", str(town), "status", "--json", cwd=elsewhere)
    assert json.loads(before.stdout)["dir"] == str(town)  # --dir before the command
    via_env = tinytownd("status", "--json", cwd=elsewhere, env={"TINYTOWN_DIR": str(town)})
    assert json.loads(via_env.stdout)["state"] == "running"
    here = tinytownd("status", "--json", "--dir", str(elsewhere), cwd=town)
    assert json.loads(here.stdout)["dir"] == str(elsewhere)


def test_start_with_no_town_above_creates_one_where_you_stand(tmp: Path) -> None:
    fresh = tmp / "fresh"
    fresh.mkdir()
    try:
        assert tinytownd("start", cwd=fresh).returncode == 0
        assert status(fresh)["state"] == "running" and (fresh / "redis.sock").exists()
    finally:
        tinytownd("stop", cwd=fresh)


BROKEN = 'name = "demo"\n[persistence\n'


def test_a_broken_config_never_locks_you_out_of_a_running_town(town: Path) -> None:
    client(town).set("kept", 1)
    (town / "tinytown.toml").write_text(BROKEN)
    for command in (["status"], ["logs"], ["config", "get", "persistence.appendfsync"]):
        result = tinytownd(*command, "--dir", str(town))
        assert result.returncode == 0, (command, result.stderr)
        warning = result.stderr.strip()
        assert len(warning.splitlines()) == 1 and str(town / "tinytown.toml") in warning
    assert "state       running" in tinytownd("status", "--dir", str(town)).stdout

    repaired = tinytownd("config", "set", "persistence.appendfsync", "always", "--dir", str(town))
    assert repaired.returncode == 0, repaired.stderr
    kept = list(town.glob("tinytown.toml.broken-*"))
    assert len(kept) == 1 and kept[0].read_text() == BROKEN  # nothing of the user's lost
    assert tinytownd("config", "get", "name", "--dir", str(town)).stderr == ""  # parses again
    assert client(town).config_get("appendfsync") == {"appendfsync": "always"}

    (town / "tinytown.toml").write_text(BROKEN)
    stopped = tinytownd("stop", "--dir", str(town))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert tinytownd("start", "--dir", str(town)).returncode == 2  # starting needs a good file
    (town / "tinytown.toml").write_text('name = "demo"\n')
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    assert client(town).get("kept") == b"1"


def test_a_broken_config_of_a_stopped_town_is_an_error_naming_the_file(project: Path) -> None:
    (project / "tinytown.toml").write_text(BROKEN)
    result = tinytownd("status", "--dir", str(project))
    assert result.returncode == 2 and str(project / "tinytown.toml") in result.stderr


def test_no_arguments_lists_the_commands_and_a_typo_gets_a_suggestion() -> None:
    listed = tinytownd()
    assert listed.returncode == 0 and "status" in listed.stdout and "start" in listed.stdout
    typo = tinytownd("stauts")
    assert typo.returncode == 2
    assert typo.stderr.startswith("tinytownd: unknown command 'stauts'; did you mean 'status'")


def test_status_exits_like_systemctl(project: Path) -> None:
    assert tinytownd("status", "--dir", str(project)).returncode == 3  # stopped
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert tinytownd("status", "--dir", str(project)).returncode == 0  # running


def test_a_reader_that_leaves_early_ends_the_output_quietly(project: Path) -> None:
    (project / ".tt").mkdir(mode=0o700)
    (project / ".tt" / "daemon.log").write_text("a log line that goes on and on\n" * 50_000)
    piped = subprocess.run(
        f"{sys.executable} -m tinytownd logs -n 50000 --dir {project} | head -1; "
        "exit ${PIPESTATUS[0]}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.stdout == "a log line that goes on and on\n"
    assert piped.stderr == "" and piped.returncode == 141  # 128 + SIGPIPE, as cat


def _agent(name: str, nickname: str | None = None, id_: str | None = None) -> Agent:
    return Agent(name=name, cli="claude", nickname=nickname, **({"id": id_} if id_ else {}))


def test_agents_resolve_by_uuid_name_nickname_or_short_id() -> None:
    one = _agent("worker-1", "ada", "a1b2c3d4-0000-4000-8000-000000000001")
    two = _agent("worker-2", "bob", "a1b2ffff-0000-4000-8000-000000000002")
    agents = [one, two]
    assert resolve_agent(agents, one.id.upper()) == one.id
    assert resolve_agent(agents, "worker-1") == one.id
    assert resolve_agent(agents, "bob") == two.id
    assert resolve_agent(agents, "a1b2c3") == one.id
    with pytest.raises(UnknownAgentError, match=r"names 2 agents: worker-1 \(a1b2c3d4\)"):
        resolve_agent(agents, "a1b2")
    with pytest.raises(UnknownAgentError, match="no agent named 'carol'"):
        resolve_agent(agents, "carol")
    with pytest.raises(UnknownAgentError):
        resolve_agent(agents, "a1b")  # too short to be an id prefix


def test_send_and_inbox_take_an_agent_by_name(town: Path) -> None:
    worker = _agent("worker-1", "ada")
    with Town.connect(town) as connected:
        connected.channel().set_agent_state(worker)
    sent = tinytownd("send", "--to", "worker-1", "--type", "task", "Fix it", "--dir", str(town))
    assert sent.returncode == 0, sent.stderr
    assert client(town).llen(f"tt:demo:inbox:{worker.id}") == 1
    shown = tinytownd("inbox", "ada", "--json", "--dir", str(town))
    assert json.loads(shown.stdout)["length"] == 1
    unknown = tinytownd("send", "--to", "nobody", "--type", "ping", "--dir", str(town))
    assert unknown.returncode == 2 and "no agent named 'nobody'" in unknown.stderr


def test_send_refuses_a_field_the_type_does_not_have(town: Path) -> None:
    result = tinytownd("send", "--to", YOU, "--type", "task", 'desc="Fix it"', "--dir", str(town))
    assert result.returncode == 2
    assert "has no field 'desc'" in result.stderr and "description=" in result.stderr
    assert client(town).llen(f"tt:demo:inbox:{YOU}") == 0


def test_init_writes_the_documented_default_and_config_set_keeps_every_comment(
    tmp: Path,
) -> None:
    root = tmp / "commented"
    root.mkdir()
    assert tinytownd("init", "--dir", str(root)).returncode == 0
    before = (root / "tinytown.toml").read_text().splitlines()
    assert 'name = "commented"' in before and "use_central_redis = false" in before
    assert sum(line.startswith("#") for line in before) > 20  # the documentation came too
    (root / "tinytown.toml").write_text("\n".join(before) + "\n# my own note\n")

    changed = tinytownd("config", "set", "persistence.appendonly", "true", "--dir", str(root))
    assert changed.returncode == 0, changed.stderr
    after = (root / "tinytown.toml").read_text().splitlines()
    assert after[-1] == "# my own note"
    differences = [(a, b) for a, b in zip(before, after, strict=False) if a != b]
    assert differences == [("appendonly = false", "appendonly = true")]


@pytest.mark.parametrize(
    ("directory", "town"),
    [
        ("projet café", "projet-cafe"),
        ("日本", "xn--wgv71a"),
        ("my project", "my-project"),
        ("Straße", "xn--Strae-oqa"),
        ("---", "town"),
    ],
)
def test_any_directory_name_gives_a_town_name_and_no_letter_is_dropped(
    directory: str, town: str
) -> None:
    assert town_name_for(directory) == town
    if town.startswith("xn--"):  # punycode, as IDNA: the directory name reads back
        assert town[4:].encode().decode("punycode") == directory


def test_a_directory_with_a_space_and_accents_starts_and_says_its_name(tmp: Path) -> None:
    root = tmp / "projet café"
    root.mkdir()
    try:
        started = tinytownd("start", cwd=root)
        assert started.returncode == 0, started.stderr
        assert "town 'projet-cafe', named after the directory 'projet café'" in started.stdout
        assert status(root)["town"] == "projet-cafe"
    finally:
        tinytownd("stop", cwd=root)


def test_config_set_outside_any_town_writes_no_stray_file(tmp: Path) -> None:
    stray = tmp / "not-a-town"
    stray.mkdir()
    result = tinytownd("config", "set", "persistence.appendonly", "true", cwd=stray)
    assert result.returncode == 2 and "tinytownd init" in result.stderr
    assert not list(stray.iterdir())


def test_config_set_repairs_a_bad_value_in_a_stopped_towns_file(project: Path) -> None:
    (project / "tinytown.toml").write_text('# mine\nname = "my town"\n[persistence]\nsave = ""\n')
    refused = tinytownd("start", "--dir", str(project))
    assert refused.returncode == 2 and "`tinytownd config set name my-town`" in refused.stderr
    fixed = tinytownd("config", "set", "name", "my-town", "--dir", str(project))
    assert fixed.returncode == 0, fixed.stderr
    text = (project / "tinytown.toml").read_text()
    assert text.startswith("# mine\n") and 'name = "my-town"' in text and 'save = ""' in text
    assert tinytownd("start", "--dir", str(project)).returncode == 0


def test_renaming_a_town_says_where_its_keys_are_and_how_to_move_them(town: Path) -> None:
    client(town).rpush(f"tt:demo:inbox:{YOU}", Message.ping(ME, YOU).to_json())
    renamed = tinytownd("config", "set", "name", "harbour", "--dir", str(town))
    assert renamed.returncode == 0, renamed.stderr
    assert "town 'demo' has 1 key(s) under tt:demo:*" in renamed.stdout
    assert "`tinytownd migrate --rename-town demo`" in renamed.stdout
    moved = tinytownd("migrate", "--rename-town", "demo", "--force", "--dir", str(town))
    assert moved.returncode == 0, moved.stderr
    assert client(town).llen(f"tt:harbour:inbox:{YOU}") == 1
    assert not client(town).exists(f"tt:demo:inbox:{YOU}")


def test_restoring_another_towns_snapshot_points_at_the_rename(town: Path, tmp: Path) -> None:
    client(town).set("tt:elsewhere:agent:x", "{}")
    snapshot = tmp / "other.rdb"
    assert tinytownd("save", "--to", str(snapshot), "--dir", str(town)).returncode == 0
    restored = tinytownd("restore", str(snapshot), "--force", "--dir", str(town))
    assert restored.returncode == 0, restored.stderr
    assert "keys of town(s) elsewhere" in restored.stdout
    assert "`tinytownd migrate --rename-town elsewhere`" in restored.stdout


def test_ls_lists_the_towns_running_here_and_forgets_stopped_ones(town: Path) -> None:
    listed = json.loads(tinytownd("ls", "--json").stdout)
    mine = [t for t in listed if t["dir"] == str(town)]
    assert len(mine) == 1 and mine[0]["town"] == "demo" and mine[0]["state"] == "running"
    assert mine[0]["clients"] >= 1 and mine[0]["memory_mb"] > 0
    # Other towns of this user may be listed too, and widen the columns.
    row = rf"^demo\s+running\s+\d+\s.*{re.escape(str(town))}$"
    assert re.search(row, tinytownd("ls").stdout, re.MULTILINE)
    assert tinytownd("stop", "--dir", str(town)).returncode == 0
    assert all(t["dir"] != str(town) for t in json.loads(tinytownd("ls", "--json").stdout))


def test_stop_on_exit_stops_the_town_a_script_started(project: Path) -> None:
    with Town.connect(project, stop_on_exit=True) as town:
        town.channel().send(Message.ping(ME, YOU))
        assert status(project)["state"] == "running"
    assert status(project)["state"] == "stopped"

    async def main() -> None:
        async with await aio.Town.connect(project, stop_on_exit=True) as town:
            await town.channel().send(Message.ping(ME, YOU))

    asyncio.run(main())
    assert status(project)["state"] == "stopped"
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert client(project).llen(f"tt:demo:inbox:{YOU}") == 2  # saved on each stop


def test_top_shows_each_agents_lists_and_refreshes(town: Path) -> None:
    worker = _agent("worker-1", "ada")
    with Town.connect(town) as connected:
        channel = connected.channel()
        channel.set_agent_state(worker)
        for _ in range(3):
            channel.send(Message.ping(ME, worker.id))
        channel.send_urgent(Message.task(ME, worker.id, "now"))
    once = json.loads(tinytownd("top", "--once", "--json", "--dir", str(town)).stdout)
    (row,) = once["agents"]
    assert (row["name"], row["inbox"], row["urgent"], row["dead"]) == ("worker-1", 3, 1, 0)
    assert once["clients"] >= 1 and once["memory_mb"] > 0
    live = subprocess.Popen(
        [sys.executable, "-m", "tinytownd", "top", "--interval", "0.2", "--dir", str(town)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
    finally:
        live.send_signal(signal.SIGINT)
        out, _ = live.communicate(timeout=30)
    assert live.returncode == 0 and out.count("AGENT") >= 2 and "worker-1" in out


def test_bash_completion_completes_commands_and_their_options() -> None:
    script = tinytownd("completion", "bash").stdout
    probe = (
        f"{script}\n"
        'COMP_WORDS=(tinytownd sta); COMP_CWORD=1; _tinytownd; echo "${COMPREPLY[*]}"\n'
        "COMP_WORDS=(tinytownd --dir x top --); COMP_CWORD=4; _tinytownd; "
        'echo "${COMPREPLY[*]}"\n'
    )
    done = subprocess.run(
        ["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    commands, options = done.stdout.splitlines()
    assert commands.split() == ["start", "status"]
    assert set(options.split()) >= {"--once", "--interval", "--json", "--dir"}
    fish = tinytownd("completion", "fish").stdout
    assert "-a top " in fish and "__fish_seen_subcommand_from top' -l once" in fish
    assert "bashcompinit" in tinytownd("completion", "zsh").stdout


def test_an_error_after_a_failed_start_says_what_to_do_next(project: Path) -> None:
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    client(project).set("k", 1)
    assert tinytownd("stop", "--dir", str(project)).returncode == 0
    rdb = project / ".tt" / "dump.rdb"
    rdb.write_bytes(rdb.read_bytes()[:30])
    assert tinytownd("start", "--dir", str(project)).returncode != 0
    sent = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(project))
    assert sent.returncode != 0
    said = sent.stderr.strip()
    assert len(said.splitlines()) == 1
    assert "it failed (" in said and said.endswith("fix that, then `tinytownd start`")


def test_a_deep_town_prints_the_short_socket_path_clients_can_use(tmp: Path) -> None:
    deep = tmp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    try:
        started = tinytownd("start", "--dir", str(deep))
        assert started.returncode == 0, started.stderr
        report = json.loads(tinytownd("status", "--json", "--dir", str(deep)).stdout)
        short = report["client_socket"]
        assert short != report["socket"] and len(short) < 100
        assert f"clients use {short}" in started.stdout
        assert f"clients use {short}" in tinytownd("status", "--dir", str(deep)).stdout
        assert redis_py.Redis(unix_socket_path=short).ping()
    finally:
        tinytownd("stop", "--dir", str(deep))
