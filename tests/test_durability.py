"""The supervisor never destroys what it exists to protect.

Each test combines events the way real towns meet them: a snapshot, then a crash; a
slow save, then a stop; a busy script, then a health check; a full disk; a second
crash while the first restart is still rewriting the AOF. Redis's own test knob
``rdb-key-save-delay`` (microseconds per key) stretches a save to a known length,
so the windows these faults need are deterministic rather than a matter of speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from conftest import FAST_SUPERVISOR
from support import client, project_dir, serving_pid, status, tinytownd, wait_until
from test_disk_and_security import small_disk

from tinytownd import Town, aio
from tinytownd import channel as channel_module


def crash(root: Path) -> int:
    """kill -9 the town's Redis; return the pid of the Redis that replaces it."""
    old = serving_pid(root)
    os.kill(old, signal.SIGKILL)
    return int(wait_until(lambda: (pid := serving_pid(root)) != old and pid, what="a new Redis"))


def fill(writer: redis.Redis, count: int, prefix: str = "k") -> None:
    script = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', ARGV[2] .. i, i) end"
    writer.eval(script, 0, count, prefix)


def wait_no_save(writer: redis.Redis) -> None:
    wait_until(
        lambda: not writer.info("persistence")["rdb_bgsave_in_progress"], what="the save to end"
    )


@pytest.mark.parametrize("fsync", ["always", "everysec"])
def test_a_snapshot_then_a_crash_keeps_every_aof_write(tmp: Path, fsync: str) -> None:
    config = f'name = "snap"\n[persistence]\nappendonly = true\nappendfsync = "{fsync}"\n'
    with project_dir(tmp, config=config) as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        writer = client(root)
        fill(writer, 2000)
        writer.config_set("rdb-key-save-delay", 300)  # a 0.6 s snapshot
        writer.bgsave()
        for i in range(300):  # acknowledged while the snapshot runs: only the AOF has them
            writer.set(f"during{i}", i)
        wait_no_save(writer)  # dump.rdb is now newer than the AOF's last write
        crash(root)
        after = client(root)
        assert after.dbsize() == 2300
        assert after.get("during299") == b"299"
        assert after.config_get("appendonly")["appendonly"] == "yes"


def test_a_crash_during_a_snapshot_leaves_no_child_and_no_partial_file(town: Path) -> None:
    writer = client(town)
    fill(writer, 3000)
    writer.config_set("rdb-key-save-delay", 2000)  # a 6 s snapshot
    writer.bgsave()
    redis_process = psutil.Process(serving_pid(town))
    child = wait_until(lambda: redis_process.children(), what="the BGSAVE child")[0]
    wait_until(lambda: list((town / ".tt").glob("temp-*.rdb")), what="the partial snapshot")
    crash(town)
    wait_until(lambda: not child.is_running() or child.status() == "zombie", what="child gone")
    assert list((town / ".tt").glob("temp-*.rdb")) == []
    assert client(town).dbsize() == 0  # nothing was ever saved: an empty town, not a hybrid


def test_runtime_aof_then_an_immediate_crash_keeps_aof_on(tmp: Path) -> None:
    slow_checks = 'name = "rt"\n[supervisor]\nhealth_interval = 30.0\n'
    with project_dir(tmp, config=slow_checks) as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        writer = client(root)
        writer.config_set("appendonly", "yes")  # as the seed advises, behind our back
        writer.config_set("appendfsync", "always")
        wait_until(lambda: not writer.info("persistence")["aof_rewrite_in_progress"])
        for i in range(500):
            writer.set(f"k{i}", i)
        crash(root)  # long before the daemon's next look at the live settings
        assert client(root).config_get("appendonly")["appendonly"] == "yes"
        more = client(root)
        for i in range(500, 1000):
            more.set(f"k{i}", i)
        crash(root)
        assert client(root).dbsize() == 1000


def test_crashes_during_the_restarts_aof_rewrite_do_not_end_the_daemon(tmp: Path) -> None:
    with project_dir(tmp, config='name = "rw"\n[supervisor]\nmax_restarts = 50\n') as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        daemon = psutil.Process(status(root)["daemon_pid"])
        writer = client(root)
        writer.config_set("save", "")
        fill(writer, 1_000_000)  # a rewrite long enough to crash in
        writer.save()  # what a crash may fall back to
        writer.config_set("appendonly", "yes")
        for _ in range(2):
            pid = serving_pid(root)
            wait_until(
                lambda pid=pid: client(root, socket_timeout=1).info("persistence")[
                    "aof_rewrite_in_progress"
                ],
                what="a rewrite in progress",
            )
            os.kill(pid, signal.SIGKILL)
            wait_until(lambda pid=pid: serving_pid(root) != pid, timeout=60, what="restart")
        assert daemon.is_running()
        after = client(root, socket_timeout=30)
        wait_until(lambda: status(root)["state"] == "running", timeout=60)
        assert after.config_get("appendonly")["appendonly"] == "yes"  # kept on through both
        assert after.dbsize() == 1_000_000
        assert list((root / ".tt").glob("temp-*")) == []


def test_a_stop_that_outlasts_stop_timeout_keeps_redis_and_loses_nothing(tmp: Path) -> None:
    config = f'name = "slow"\n{FAST_SUPERVISOR}stop_timeout = 1.0\n'
    with project_dir(tmp, config=config) as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        writer = client(root)
        fill(writer, 5000)
        writer.config_set("rdb-key-save-delay", 1000)  # SHUTDOWN SAVE takes 5 s
        redis_pid = status(root)["redis_pid"]
        result = tinytownd("stop", "--dir", str(root))
        assert result.returncode == 1
        assert "still saving" in result.stderr and len(result.stderr.splitlines()) == 1
        assert psutil.pid_exists(redis_pid)  # not killed
        wait_until(lambda: not psutil.pid_exists(redis_pid), timeout=30, what="save, exit")
        wait_until(lambda: status(root)["state"] == "stopped", what="daemon done")
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        assert client(root).dbsize() == 5000


def test_a_stop_on_a_full_disk_keeps_redis_running_until_it_can_save(tmp: Path) -> None:
    with (
        small_disk(tmp) as disk,
        project_dir(disk, config=f'name = "full"\n{FAST_SUPERVISOR}stop_timeout = 2.0\n') as root,
    ):
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        writer = client(root)
        fill(writer, 20_000)
        usage = os.statvfs(root)
        # Full to the last block: the daemon cannot even write state.json to say why.
        (root / "filler").write_bytes(b"x" * (usage.f_bavail * usage.f_frsize))
        result = tinytownd("stop", "--dir", str(root))
        assert result.returncode == 1, result.stdout
        assert "could not save" in result.stderr and len(result.stderr.splitlines()) == 1
        assert writer.dbsize() == 20_000  # still serving, everything still there
        assert status(root)["state"] == "running"
        (root / "filler").write_bytes(b"x" * (usage.f_bavail * usage.f_frsize - 65536))
        wait_until(lambda: status(root)["stop_failure"], what="the refusal on record")
        shown = tinytownd("status", "--dir", str(root)).stdout
        assert "last stop" in shown and "refused: redis-server could not save" in shown
        (root / "filler").unlink()
        assert tinytownd("stop", "--dir", str(root)).returncode == 0
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        assert client(root).dbsize() == 20_000


def test_stop_force_says_what_it_loses_and_kills(town: Path) -> None:
    writer = client(town)
    fill(writer, 10)
    redis_pid = status(town)["redis_pid"]
    result = tinytownd("stop", "--force", "--dir", str(town))
    assert result.returncode == 0, result.stderr
    assert "10 changes since the last snapshot are lost" in result.stdout
    assert not psutil.pid_exists(redis_pid)
    assert status(town)["state"] == "stopped"


def test_a_script_longer_than_the_hang_bound_is_busy_not_hung(town: Path) -> None:
    writer = client(town)
    fill(writer, 1000)
    redis_pid = status(town)["redis_pid"]
    # 3 s of Lua against a bound of health_failures x (interval + timeout) = 1.2 s.
    spin = (
        "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > 3e6 return 1"
    )
    assert client(town, socket_timeout=30).eval(spin, 0) == 1
    assert serving_pid(town) == redis_pid
    assert client(town).dbsize() == 1000
    assert status(town)["restarts"] == 0


def test_a_foreground_save_longer_than_the_hang_bound_is_busy_not_hung(town: Path) -> None:
    writer = client(town, socket_timeout=30)
    fill(writer, 3000)
    writer.config_set("rdb-key-save-delay", 1000)  # SAVE blocks Redis for 3 s
    redis_pid = status(town)["redis_pid"]
    assert writer.save()
    assert serving_pid(town) == redis_pid and status(town)["restarts"] == 0


def test_a_state_file_that_cannot_be_written_does_not_end_supervision(town: Path) -> None:
    state = town / ".tt" / "state.json"
    state.unlink()
    state.mkdir()  # every write of state.json now fails
    try:
        daemon = psutil.Process(int((town / ".tt" / "daemon.lock").read_text()))
        crash(town)
        assert daemon.is_running()
        assert client(town).ping()
    finally:
        state.rmdir()


def test_restore_keeps_the_aof_flags_the_town_ran_with(project: Path) -> None:
    started = tinytownd("start", "--aof", "--appendfsync", "always", "--dir", str(project))
    assert started.returncode == 0
    client(project).set("saved", 1)
    snapshot = project / "snap.rdb"
    assert tinytownd("save", "--to", str(snapshot), "--dir", str(project)).returncode == 0
    restored = tinytownd("restore", str(snapshot), "--force", "--dir", str(project))
    assert restored.returncode == 0, restored.stderr
    after = client(project)
    assert after.config_get("appendonly")["appendonly"] == "yes"
    assert after.config_get("appendfsync")["appendfsync"] == "always"
    for i in range(300):
        after.set(f"acked{i}", i)
    crash(project)
    assert client(project).dbsize() == 301
    assert oct((project / ".tt" / "dump.rdb").stat().st_mode & 0o777) == "0o600"


def test_restore_accepts_a_snapshot_whose_expiring_keys_have_expired(town: Path) -> None:
    writer = client(town)
    fill(writer, 100)
    writer.set("short-lived", 1, px=1500)
    snapshot = town / "snap.rdb"
    assert tinytownd("save", "--to", str(snapshot), "--dir", str(town)).returncode == 0
    time.sleep(1.6)
    restored = tinytownd("restore", str(snapshot), "--force", "--dir", str(town))
    assert restored.returncode == 0, restored.stderr
    assert client(town).dbsize() == 100


def test_save_when_redis_dies_mid_save_is_one_line(town: Path) -> None:
    writer = client(town)
    fill(writer, 2000)
    writer.config_set("rdb-key-save-delay", 1000)
    redis_pid = status(town)["redis_pid"]
    killer = threading.Timer(0.7, os.kill, (redis_pid, signal.SIGKILL))
    killer.start()
    try:
        result = tinytownd("save", "--to", str(town / "s.rdb"), "--dir", str(town))
    finally:
        killer.cancel()
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_stopping_an_adopted_redis_reports_a_clean_stop(town: Path) -> None:
    client(town).set("kept", 1)
    daemon = psutil.Process(status(town)["daemon_pid"])
    daemon.kill()
    psutil.wait_procs([daemon], timeout=5)
    assert tinytownd("start", "--dir", str(town)).returncode == 0  # adopts it
    stopped = tinytownd("stop", "--dir", str(town))
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    assert client(town).get("kept") == b"1"


@pytest.mark.parametrize("wait", [1.0, 0.0], ids=["receive", "try_receive"])
@pytest.mark.parametrize("flavour", ["sync", "sync-polling", "asyncio"])
def test_a_receive_never_outlives_its_timeout_on_a_stopped_redis(
    tmp: Path, flavour: str, wait: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    if flavour == "sync-polling":  # redis-py before 8, whose reads take no timeout
        monkeypatch.setattr(channel_module, "_READ_TAKES_TIMEOUT", False)
    slow_checks = 'name = "frozen"\n[supervisor]\nhealth_interval = 30.0\n'
    with project_dir(tmp, config=slow_checks) as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        runner = receive_async if flavour == "asyncio" else receive_sync
        waited = runner(root, status(root)["redis_pid"], wait)
        assert waited < wait + 1.5  # the reply grace (0.5 s), slack for a busy CI


def frozen(redis_pid: int) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def stopped() -> Iterator[None]:
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(redis_pid, signal.SIGCONT)

    return stopped()


AGENT = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"


def receive_sync(root: Path, redis_pid: int, wait: float) -> float:
    with Town.connect(root, start=False) as town:
        channel = town.channel()
        assert channel.try_receive(AGENT) is None  # an agent that has been connected a while
        with frozen(redis_pid), pytest.raises(redis.TimeoutError):
            began = time.monotonic()
            channel.receive(AGENT, timeout=wait)
        return time.monotonic() - began


def receive_async(root: Path, redis_pid: int, wait: float) -> float:
    async def run() -> float:
        async with await aio.Town.connect(root, start=False) as town:
            channel = town.channel()
            assert await channel.try_receive(AGENT) is None
            with frozen(redis_pid), pytest.raises(redis.TimeoutError):
                began = time.monotonic()
                await channel.receive(AGENT, timeout=wait)
            return time.monotonic() - began

    return asyncio.run(run())


def test_a_crash_on_a_full_disk_is_restarted_and_reported_later(tmp: Path) -> None:
    with (
        small_disk(tmp) as disk,
        project_dir(disk, config=f'name = "full"\n{FAST_SUPERVISOR}') as root,
    ):
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        client(root).set("before", 1)
        client(root).save()
        daemon = psutil.Process(status(root)["daemon_pid"])
        usage = os.statvfs(root)
        (root / "filler").write_bytes(b"x" * (usage.f_bavail * usage.f_frsize))
        crash(root)  # state.json cannot be written now
        assert daemon.is_running()
        assert client(root).get("before") == b"1"
        (root / "filler").unlink()
        wait_until(lambda: status(root)["restarts"] == 1, what="state.json caught up")


def test_a_client_pause_longer_than_the_hang_bound_is_not_a_hang(town: Path) -> None:
    redis_pid = status(town)["redis_pid"]
    client(town).execute_command("CLIENT", "PAUSE", 3000, "ALL")
    time.sleep(3.2)
    assert serving_pid(town) == redis_pid and status(town)["restarts"] == 0


def test_stop_saves_a_redis_that_outlived_its_daemon(town: Path) -> None:
    fill(client(town), 500)
    report = status(town)
    daemon = psutil.Process(report["daemon_pid"])
    daemon.kill()
    psutil.wait_procs([daemon], timeout=5)
    stopped = tinytownd("stop", "--dir", str(town))
    assert stopped.returncode == 0, stopped.stderr
    assert f"unsupervised redis-server (pid {report['redis_pid']}) saved and stopped" in (
        stopped.stdout
    )
    assert gone(report["redis_pid"])
    assert tinytownd("start", "--dir", str(town)).returncode == 0
    assert client(town).dbsize() == 500


def gone(pid: int) -> bool:
    """Exited: an orphan's zombie lingers where nothing reaps orphans (containers)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stop_of_a_redis_that_outlived_its_daemon_and_cannot_save_keeps_it(tmp: Path) -> None:
    with (
        small_disk(tmp) as disk,
        project_dir(disk, config=f'name = "orphan"\n{FAST_SUPERVISOR}stop_timeout = 2.0\n') as root,
    ):
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        fill(client(root), 20_000)
        report = status(root)
        daemon = psutil.Process(report["daemon_pid"])
        daemon.kill()
        psutil.wait_procs([daemon], timeout=5)
        usage = os.statvfs(root)
        (root / "filler").write_bytes(b"x" * (usage.f_bavail * usage.f_frsize))
        refused = tinytownd("stop", "--dir", str(root))
        assert refused.returncode == 1 and "could not save" in refused.stderr
        assert client(root).dbsize() == 20_000  # still serving
        (root / "filler").unlink()
        assert tinytownd("stop", "--dir", str(root)).returncode == 0
