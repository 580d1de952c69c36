"""The daemon: start, stop, status, supervision and crash recovery, against real processes."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
from conftest import FAST_SUPERVISOR
from support import client, project_dir, serving_pid, status, tinytownd, wait_until

from tinytownd import cli
from tinytownd.paths import ProjectPaths


def crash_redis(root: Path) -> int:
    """kill -9 the town's Redis and return the pid of the one that replaces it."""
    old = serving_pid(root)
    os.kill(old, signal.SIGKILL)
    return int(wait_until(lambda: (pid := serving_pid(root)) != old and pid, what="a new Redis"))


def test_start_returns_once_redis_answers_on_the_socket(project: Path) -> None:
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    assert str(project / "redis.sock") in result.stdout
    assert client(project).ping()  # no waiting: start promised it answers


def test_redis_listens_on_the_socket_only_with_owner_permissions(town: Path) -> None:
    mode = stat.S_IMODE(os.stat(town / "redis.sock").st_mode)
    assert mode == 0o700
    assert client(town).config_get("port")["port"] == "0"
    assert stat.S_IMODE(os.stat(town / ".tt").st_mode) == 0o700
    for entry in (town / ".tt").iterdir():
        if entry.is_file():
            assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry


def test_status_json_reports_daemon_redis_and_persistence(town: Path) -> None:
    report = status(town)
    assert report["state"] == "running"
    assert psutil.pid_exists(report["daemon_pid"])
    assert report["redis_pid"] == serving_pid(town)
    assert report["restarts"] == 0
    assert report["socket"] == str(town / "redis.sock")
    assert report["redis_version"].count(".") == 2
    assert report["redis_binary"] and report["redis_binary_source"] in ("path", "bundled")
    persistence = report["persistence"]
    assert persistence["save"] == "3600 1 300 100 60 10000"  # Redis's default snapshots
    assert persistence["aof_enabled"] is False
    assert persistence["rdb_last_bgsave_status"] == "ok"


def test_second_start_says_already_running_and_keeps_one_daemon(town: Path) -> None:
    first = status(town)["daemon_pid"]
    result = tinytownd("start", "--dir", str(town))
    assert result.returncode == 0
    assert "already running" in result.stdout
    assert status(town)["daemon_pid"] == first


def test_concurrent_starts_give_exactly_one_daemon(project: Path) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: tinytownd("start", "--dir", str(project)), range(4)))
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    assert sum("already running" in r.stdout for r in results) == 3
    daemons = [
        p
        for p in psutil.process_iter(["cmdline"])
        if "--foreground" in (p.info["cmdline"] or []) and str(project) in p.info["cmdline"]
    ]
    assert len(daemons) == 1
    assert client(project).ping()
    assert status(project)["state"] == "running"  # the losers never touch the winner's state


def test_stop_saves_data_and_start_brings_it_back(town: Path) -> None:
    client(town).set("kept", "yes")
    assert tinytownd("stop", "--dir", str(town)).returncode == 0
    assert status(town)["state"] == "stopped"
    assert not (town / "redis.sock").exists()
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    assert client(town).get("kept") == b"yes"


def test_stop_on_a_stopped_town_exits_zero_and_says_so(project: Path) -> None:
    result = tinytownd("stop", "--dir", str(project))
    assert result.returncode == 0
    assert "not running" in result.stdout


def test_crashed_redis_is_restarted_at_once(town: Path) -> None:
    before = status(town)["redis_pid"]
    after = crash_redis(town)
    assert after != before
    report = wait_until(lambda: (r := status(town))["restarts"] == 1 and r, what="restart count")
    assert report["state"] == "running"
    assert report["last_exit"] == "killed by SIGKILL"


def test_aof_always_loses_no_acknowledged_write_across_kill9(project: Path) -> None:
    assert (
        tinytownd("start", "--aof", "--appendfsync", "always", "--dir", str(project)).returncode
        == 0
    )
    writer = client(project)
    for i in range(500):
        writer.rpush("acked", i)
    crash_redis(project)
    assert client(project).lrange("acked", 0, -1) == [str(i).encode() for i in range(500)]
    assert status(project)["persistence"]["aof_enabled"] is True


def test_runtime_config_set_survives_crash_restart_with_its_data(town: Path) -> None:
    cli = client(town)
    cli.config_set("appendonly", "yes")  # as the seed documents it with redis-cli
    cli.config_set("save", "60 1")
    wait_until(lambda: status(town)["persistence"]["aof_enabled"], what="AOF on")
    time.sleep(0.3)  # the daemon re-reads the live settings every health_interval (0.1 s here)
    for i in range(200):
        cli.set(f"k{i}", i)
    crash_redis(town)
    after = client(town)
    assert after.config_get("appendonly")["appendonly"] == "yes"
    assert after.config_get("save")["save"] == "60 1"
    assert after.dbsize() == 200


def test_stop_and_start_go_back_to_tinytown_toml_and_lose_nothing(town: Path) -> None:
    cli = client(town)
    cli.config_set("appendonly", "yes")
    cli.config_set("save", "60 1")
    wait_until(lambda: status(town)["persistence"]["aof_enabled"], what="AOF on")
    cli.set("after-runtime-change", 1)
    assert tinytownd("stop", "--dir", str(town)).returncode == 0
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    again = client(town)
    assert again.config_get("appendonly")["appendonly"] == "no"
    assert again.config_get("save")["save"] == "3600 1 300 100 60 10000"
    assert again.get("after-runtime-change") == b"1"


def test_too_many_crashes_give_up_as_failed_with_the_reason(tmp: Path) -> None:
    config = f'name = "loop"\n{FAST_SUPERVISOR}max_restarts = 2\nrestart_window = 60.0\n'
    with project_dir(tmp, config=config) as root:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "tinytownd", "start", "--foreground", "--dir", str(root)],
            stderr=subprocess.DEVNULL,
        )
        try:
            # Ready first: Redis answers PING a moment before the daemon's start is done.
            wait_until(lambda: status(root)["state"] == "running", what="the daemon ready")
            for _ in range(3):
                os.kill(serving_pid(root), signal.SIGKILL)
                wait_until(lambda: status(root)["state"] in ("running", "failed"), what="settle")
                time.sleep(0.05)
            assert daemon.wait(15) == 1  # non-zero, so systemd or launchd can act
        finally:
            daemon.kill()
            daemon.wait()
        result = tinytownd("status", "--dir", str(root))
        assert result.returncode == 1
        assert "failed" in result.stdout and "killed by SIGKILL" in result.stdout
        assert "redis log:" in result.stdout


def test_hung_redis_is_killed_and_restarted(town: Path) -> None:
    hung = serving_pid(town)
    os.kill(hung, signal.SIGSTOP)
    try:
        new = wait_until(lambda: (pid := serving_pid(town)) != hung and pid, what="replacement")
    finally:
        if psutil.pid_exists(hung):
            os.kill(hung, signal.SIGCONT)
    assert new != hung
    assert "stopped answering PING" in status(town)["last_exit"]


def test_daemon_killed_leaves_redis_serving_and_next_start_adopts_it(town: Path) -> None:
    report = status(town)
    cli = client(town)
    cli.set("during", "daemon crash")
    os.kill(report["daemon_pid"], signal.SIGKILL)
    psutil.wait_procs([psutil.Process(report["daemon_pid"])], timeout=5)
    assert cli.get("during") == b"daemon crash"  # clients never noticed
    assert status(town)["supervised"] is False
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    adopted = status(town)
    assert adopted["redis_pid"] == report["redis_pid"]  # same server, no restart
    assert adopted["supervised"] is True
    assert crash_redis(town) != report["redis_pid"]  # and it is supervised again


def test_stale_socket_and_state_from_a_power_cut_do_not_block_start(project: Path) -> None:
    paths = ProjectPaths.of(project)
    paths.ensure_state_dir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(paths.socket))
    stale.close()  # the file stays; nothing listens
    paths.state_file.write_text('{"state": "running", "daemon_pid": 999999, "redis_pid": 999998}')
    paths.lock.write_text("999999\n")
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    assert client(project).ping()


def test_socket_served_by_another_process_is_never_deleted(project: Path, tmp: Path) -> None:
    other_dir = tmp / "other"
    other_dir.mkdir()
    from tinytownd.config import Config
    from tinytownd.daemon.engine import find_binary

    foreign = subprocess.Popen(
        [
            find_binary(Config(name="x")).path,
            "--port",
            "0",
            "--unixsocket",
            str(project / "redis.sock"),
            "--dir",
            str(other_dir),
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: client(project).ping(), what="foreign redis")
        result = tinytownd("start", "--dir", str(project))
        assert result.returncode == 1
        assert "served by another redis-server" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert client(project).ping()  # untouched
    finally:
        foreign.kill()
        foreign.wait()


def test_deep_project_directory_beyond_the_socket_path_limit(tmp: Path) -> None:
    deep = tmp / ("d" * 60) / ("e" * 60)
    with project_dir(deep, config='name = "deep"\n') as root:
        assert len(str(root / "redis.sock")) > 107
        result = tinytownd("start", "--dir", str(root))
        assert result.returncode == 0, result.stderr
        assert client(root).ping()  # our clients connect from anywhere (via the short link)
        from support import redis_cli

        if redis_cli():
            pong = subprocess.run(
                [redis_cli(), "-s", "./redis.sock", "PING"],
                cwd=root,
                capture_output=True,
                text=True,
                check=True,
            )
            assert pong.stdout.strip() == "PONG"
        assert tinytownd("stop", "--dir", str(root)).returncode == 0


def test_sighup_reloads_tinytown_toml_and_applies_persistence(town: Path) -> None:
    text = (town / "tinytown.toml").read_text()
    (town / "tinytown.toml").write_text(
        text + '\n[persistence]\nappendonly = true\nsave = "30 5"\n'
    )
    os.kill(status(town)["daemon_pid"], signal.SIGHUP)
    wait_until(lambda: client(town).config_get("save")["save"] == "30 5", what="reload")
    wait_until(lambda: status(town)["persistence"]["aof_enabled"], what="AOF on")


def test_config_set_writes_the_file_and_applies_live(town: Path) -> None:
    result = tinytownd("config", "set", "persistence.appendfsync", "always", "--dir", str(town))
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    assert client(town).config_get("appendfsync")["appendfsync"] == "always"
    got = tinytownd("config", "get", "persistence.appendfsync", "--dir", str(town))
    assert got.stdout.strip() == '"always"'
    assert 'appendfsync = "always"' in (town / "tinytown.toml").read_text()


def test_logs_show_the_daemon_log(town: Path) -> None:
    result = tinytownd("logs", "--dir", str(town))
    assert "ready on" in result.stdout
    assert "Ready to accept connections" in tinytownd("logs", "--redis", "--dir", str(town)).stdout


def test_restart_keeps_data(town: Path) -> None:
    client(town).set("x", 1)
    assert tinytownd("restart", "--dir", str(town)).returncode == 0
    assert client(town).get("x") == b"1"


def test_directory_we_cannot_write_is_one_clear_error(tmp: Path) -> None:
    root = tmp / "readonly"
    root.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(root, 0o555)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # as a user who cannot write there, even when the tests run as root
        sys.stderr = os.fdopen(write_end, "w")
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        code = cli.main(["start", "--dir", str(root)])
        sys.stderr.flush()
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as stderr:
        message = stderr.read()
    _, code = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(code) == 1
    assert message.startswith(f"tinytownd: cannot create {root}/.tt: Permission denied")
    assert len(message.strip().splitlines()) == 1
    assert not (root / ".tt").exists()


def test_big_logs_are_rotated_at_start(project: Path) -> None:
    paths = ProjectPaths.of(project)
    paths.ensure_state_dir()
    paths.redis_log.write_bytes(b"old line\n" * 1_300_000)  # over 10 MB
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert paths.redis_log.stat().st_size < 1_000_000
    assert (paths.state_dir / "redis.log.1").stat().st_size > 10 * 2**20


def test_config_set_leaves_the_start_flags_alone_and_rewrites_no_aof(project: Path) -> None:
    started = tinytownd("start", "--aof", "--dir", str(project))
    assert started.returncode == 0, started.stderr
    rewrites = client(project).info("persistence")["aof_rewrites"]
    result = tinytownd("config", "set", "persistence.appendfsync", "always", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    assert "applied" in result.stdout
    assert status(project)["reloaded_at"] is not None  # confirmed by the daemon itself
    live = client(project).config_get("appendonly", "appendfsync")
    assert live == {"appendonly": "yes", "appendfsync": "always"}  # --aof kept, fsync changed
    assert client(project).info("persistence")["aof_rewrites"] == rewrites  # no off-and-on


def test_without_pidfd_a_killed_child_is_reported_killed_not_exited_0(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """macOS has no pidfd: the exit watcher must leave the exit status to Popen."""
    from tinytownd.daemon.redis_server import RedisProcess

    monkeypatch.delattr(os, "pidfd_open", raising=False)
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    watched = RedisProcess(child.pid, child)
    try:
        assert not watched.wait(0.2)
        os.kill(child.pid, signal.SIGKILL)
        assert watched.wait(10)
        assert watched.exit_reason() == "killed by SIGKILL"
    finally:
        child.kill()
        child.wait()
        watched.close()
