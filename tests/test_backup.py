"""tinytownd save / restore: snapshots that are complete, checked, and never lose data."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest
from support import client, project_dir, serving_pid, status, tinytownd, wait_until

from tinytownd.config import Config
from tinytownd.daemon.backup import check_rdb
from tinytownd.paths import ProjectPaths


def start(root: Path, *flags: str) -> None:
    result = tinytownd("start", *flags, "--dir", str(root))
    assert result.returncode == 0, result.stderr


def test_save_under_load_restores_exactly_the_keys_acknowledged_by_then(
    town: Path, tmp: Path
) -> None:
    writer = client(town)
    acked = -1
    stop = threading.Event()

    def write() -> None:
        nonlocal acked
        i = 0
        while not stop.is_set():
            writer.set(f"seq:{i}", i)
            acked = i
            i += 1

    thread = threading.Thread(target=write)
    thread.start()
    try:
        wait_until(lambda: acked > 2000, what="writes under way")
        before = acked
        saved = tinytownd("save", "--json", "--dir", str(town))
        after = acked
    finally:
        stop.set()
        thread.join()
    assert saved.returncode == 0, saved.stderr
    report = json.loads(saved.stdout)
    assert Path(report["file"]) == town / "tinytown-state.rdb"
    assert report["bytes"] == (town / "tinytown-state.rdb").stat().st_size

    with project_dir(tmp, "copy", config='name = "demo"\n') as other:
        restored = tinytownd(
            "restore", str(town / "tinytown-state.rdb"), "--force", "--dir", str(other)
        )
        assert restored.returncode == 0, restored.stderr
        keys = client(other).keys("seq:*")
        numbers = sorted(int(key.split(b":")[1]) for key in keys)
        assert numbers == list(range(len(numbers)))  # a consistent prefix, no holes
        assert before < len(numbers) <= after + 1
        assert report["keys"] == len(numbers)


def test_save_refuses_when_the_town_is_not_running(project: Path) -> None:
    result = tinytownd("save", "--dir", str(project))
    assert result.returncode == 1
    assert "tinytownd start" in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_a_corrupt_or_foreign_file_is_refused_and_nothing_changes(
    town: Path, tmp: Path, damage: str
) -> None:
    client(town).set("precious", "yes")
    assert tinytownd("save", "--to", str(tmp / "good.rdb"), "--dir", str(town)).returncode == 0
    good = (tmp / "good.rdb").read_bytes()
    bad = tmp / "bad.rdb"
    bad.write_bytes(good[: len(good) // 2] if damage == "truncated" else os.urandom(4096))
    files_before = sorted(p.name for p in (town / ".tt").iterdir())
    pid = serving_pid(town)
    result = tinytownd("restore", str(bad), "--force", "--dir", str(town))
    assert result.returncode == 1
    assert "is not a valid Redis snapshot" in result.stderr
    assert serving_pid(town) == pid  # not even restarted
    assert client(town).get("precious") == b"yes"
    assert sorted(p.name for p in (town / ".tt").iterdir()) == files_before


def test_restore_keeps_the_old_data_in_a_backup_directory(town: Path, tmp: Path) -> None:
    client(town).set("old", "data")
    snapshot_source = tmp / "other.rdb"
    with project_dir(tmp, "source", config='name = "demo"\n') as source:
        start(source)
        client(source).set("new", "data")
        assert tinytownd("save", "--to", str(snapshot_source), "--dir", str(source)).returncode == 0
    result = tinytownd("restore", str(snapshot_source), "--force", "--json", "--dir", str(town))
    assert result.returncode == 0, result.stderr
    backup = Path(json.loads(result.stdout)["backup"])
    assert backup.parent == town / ".tt" and backup.name.startswith("backup-")
    assert client(town).get("new") == b"data" and client(town).get("old") is None
    config = Config(name="demo")
    old = check_rdb(ProjectPaths.of(town), config, backup / "dump.rdb")
    assert old.keys == 1  # the old "old" key, intact


def test_restore_with_aof_on_survives_kill9_right_after(town: Path, tmp: Path) -> None:
    with project_dir(tmp, "source", config='name = "demo"\n') as source:
        start(source)
        client(source).mset({f"k{i}": i for i in range(1000)})
        assert tinytownd("save", "--to", str(tmp / "s.rdb"), "--dir", str(source)).returncode == 0
    assert (
        tinytownd("config", "set", "persistence.appendonly", "true", "--dir", str(town)).returncode
        == 0
    )
    assert tinytownd("restore", str(tmp / "s.rdb"), "--force", "--dir", str(town)).returncode == 0
    assert status(town)["persistence"]["aof_enabled"]
    old = serving_pid(town)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: serving_pid(town) != old, what="restart")
    assert client(town).dbsize() == 1000


def test_rename_town_moves_every_key_into_this_town(town: Path, tmp: Path) -> None:
    with project_dir(tmp, "elsewhere", config='name = "faraway"\n') as source:
        start(source)
        other = client(source)
        other.set("tt:faraway:agent:a1", "agent")
        other.rpush("tt:faraway:inbox:a1", "m1", "m2")
        other.set("tt:faraway:task:t1", "task")
        other.set("unrelated", "stays")
        assert tinytownd("save", "--to", str(tmp / "far.rdb"), "--dir", str(source)).returncode == 0
    client(town).set("tt:demo:task:t1", "already here")
    result = tinytownd(
        "restore", str(tmp / "far.rdb"), "--force", "--rename-town", "--json", "--dir", str(town)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["renamed"] == 3
    mine = client(town)
    assert mine.get("tt:demo:agent:a1") == b"agent"
    assert mine.lrange("tt:demo:inbox:a1", 0, -1) == [b"m1", b"m2"]
    assert mine.get("tt:demo:task:t1") == b"task"  # the snapshot replaced the town's data
    assert mine.get("unrelated") == b"stays"
    assert mine.keys("tt:faraway:*") == []


def test_restore_asks_before_replacing_anything(town: Path, tmp: Path) -> None:
    assert tinytownd("save", "--to", str(tmp / "s.rdb"), "--dir", str(town)).returncode == 0
    result = tinytownd("restore", str(tmp / "s.rdb"), "--dir", str(town))
    assert result.returncode == 2 and "--force" in result.stderr


def test_save_to_a_directory_that_does_not_exist_is_one_clear_line(town: Path) -> None:
    result = tinytownd("save", "--to", "/nonexistent/dir/x.rdb", "--dir", str(town))
    assert result.returncode == 2
    assert (
        result.stderr.strip() == "tinytownd: cannot write to /nonexistent/dir: choose another --to"
    )
