"""Damaged files, a full disk, and other users: errors a person can act on, no data lost."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from support import client, project_dir, status, tinytownd, wait_until

AOF_ALWAYS = '[persistence]\nappendonly = true\nappendfsync = "always"\n'


def fingerprint(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def power_cut(root: Path) -> None:
    """kill -9 the daemon and Redis at once, as a machine crash would stop both."""
    report = status(root)
    for pid in (report["daemon_pid"], report["redis_pid"]):
        os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(report["daemon_pid"])], timeout=5)
    wait_until(lambda: not psutil.pid_exists(report["redis_pid"]), what="redis gone")


def town_with_data(root: Path, keys: int = 50) -> None:
    assert tinytownd("start", "--dir", str(root)).returncode == 0
    writer = client(root)
    for i in range(keys):
        writer.set(f"k{i}", i)
    power_cut(root)


def test_a_truncated_aof_tail_loads_and_status_reports_the_loss(project: Path) -> None:
    (project / "tinytown.toml").write_text(f'name = "demo"\n{AOF_ALWAYS}')
    town_with_data(project)
    incr = next((project / ".tt" / "appendonlydir").glob("*.incr.aof"))
    with open(incr, "r+b") as aof:
        aof.truncate(incr.stat().st_size - 7)  # the last write, half on disk
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    report = status(project)
    assert report["state"] == "running"
    assert any("short read" in line for line in report["load_warnings"])
    assert "warnings" in tinytownd("status", "--dir", str(project)).stdout
    assert client(project).dbsize() == 49  # everything but the cut-off last write


def test_a_damaged_aof_fails_with_the_repair_command_and_changes_nothing(project: Path) -> None:
    (project / "tinytown.toml").write_text(f'name = "demo"\n{AOF_ALWAYS}')
    town_with_data(project)
    incr = next((project / ".tt" / "appendonlydir").glob("*.incr.aof"))
    damaged = bytearray(incr.read_bytes())
    damaged[200:210] = b"XXXXXXXXXX"
    incr.write_bytes(bytes(damaged))
    before = fingerprint(project / ".tt" / "appendonlydir")

    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "cannot load its append-only file" in result.stderr
    assert "tinytownd repair" in result.stderr
    assert status(project)["state"] == "failed"
    assert fingerprint(project / ".tt" / "appendonlydir") == before

    repaired = tinytownd("repair", "--dir", str(project))
    assert repaired.returncode == 0, repaired.stderr
    backup = next((project / ".tt").glob("backup-*"))
    assert fingerprint(backup / "appendonlydir") == before  # the original, kept
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert 0 < client(project).dbsize() < 50  # what came before the damage


def test_repair_refuses_damage_it_cannot_cut_off_and_changes_nothing(project: Path) -> None:
    (project / "tinytown.toml").write_text(f'name = "demo"\n{AOF_ALWAYS}')
    town_with_data(project)
    base = next((project / ".tt" / "appendonlydir").glob("*.base.rdb"))
    damaged = bytearray(base.read_bytes())
    damaged[20:30] = b"XXXXXXXXXX"  # inside the snapshot the AOF starts from
    base.write_bytes(bytes(damaged))
    before = fingerprint(project / ".tt" / "appendonlydir")

    repaired = tinytownd("repair", "--dir", str(project))
    assert repaired.returncode == 1
    said = repaired.stderr.strip()
    assert len(said.splitlines()) == 1 and base.name in said and "tinytownd restore" in said
    assert fingerprint(project / ".tt" / "appendonlydir") == before


def test_a_damaged_rdb_fails_with_what_to_do_and_changes_nothing(project: Path) -> None:
    town_with_data(project)
    assert tinytownd("start", "--dir", str(project)).returncode == 0
    assert tinytownd("stop", "--dir", str(project)).returncode == 0
    rdb = project / ".tt" / "dump.rdb"
    rdb.write_bytes(rdb.read_bytes()[:40])
    before = rdb.read_bytes()
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 1
    assert "cannot load .tt/dump.rdb" in result.stderr and "tinytownd restore" in result.stderr
    assert rdb.read_bytes() == before


@contextlib.contextmanager
def small_disk(tmp: Path) -> Iterator[Path]:
    mount = tmp / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN)")
    try:
        yield mount
    finally:
        for _ in range(50):  # the daemon may still be on its way out
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


def test_a_full_disk_refuses_writes_visibly_and_they_resume_when_space_returns(tmp: Path) -> None:
    with (
        small_disk(tmp) as disk,
        project_dir(
            disk, config='name = "full"\n[persistence]\nappendonly = true\nsave = ""\n'
        ) as root,
    ):
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        writer = client(root)
        usage = os.statvfs(root)
        (root / "filler").write_bytes(b"x" * (usage.f_bavail * usage.f_frsize - 600_000))
        with pytest.raises(redis.ResponseError, match=r"MISCONF.*No space left"):
            for i in range(100):
                writer.set(f"big{i}", b"v" * 100_000)
        report = status(root)
        assert report["persistence"]["aof_last_write_status"] == "err"
        assert "last write err" in tinytownd("status", "--dir", str(root)).stdout
        (root / "filler").unlink()
        wait_until(lambda: writer.set("after", 1), what="writes to resume")
        assert status(root)["persistence"]["aof_last_write_status"] == "ok"


def connect_as_nobody(target: str) -> str:
    """Connect to a unix socket as uid 65534 in a forked child; return the outcome."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                with socket.socket(socket.AF_UNIX) as probe:
                    probe.connect(target)
                outcome = "connected"
            except OSError as err:
                outcome = type(err).__name__
        finally:
            os.write(write_end, outcome.encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as result:
        answer = result.read()
    os.waitpid(child, 0)
    return answer


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_reach_the_socket(town: Path) -> None:
    os.chmod(town.parent, 0o755)
    os.chmod(town, 0o755)  # even with the directory open to all, the socket is not
    assert connect_as_nobody(str(town / "redis.sock")) == "PermissionError"
    assert client(town).ping()


def test_a_symlinked_state_directory_is_refused(project: Path, tmp: Path) -> None:
    elsewhere = tmp / "planted"
    elsewhere.mkdir()
    (project / ".tt").symlink_to(elsewhere)
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 1
    assert "is not a plain directory (a symlink?)" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_planted_socket_symlink_is_refused_not_followed(project: Path, tmp: Path) -> None:
    (project / "redis.sock").symlink_to(tmp / "nowhere.sock")
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 1
    assert "is a symlink" in result.stderr
    assert (project / "redis.sock").is_symlink()


def test_redis_has_no_tcp_listener_unless_configured(town: Path) -> None:
    redis_process = psutil.Process(status(town)["redis_pid"])
    assert [c for c in redis_process.net_connections(kind="inet")] == []
    assert not (town / ".tt" / "password").exists()


def test_tcp_when_configured_binds_loopback_and_requires_a_password(tmp: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with project_dir(tmp, config=f'name = "tcp"\n[redis]\nport = {port}\n') as root:
        assert tinytownd("start", "--dir", str(root)).returncode == 0
        secret = root / ".tt" / "password"
        assert oct(secret.stat().st_mode & 0o777) == "0o600"
        password = secret.read_text().strip()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        over_tcp = redis.Redis(port=port, password=password)
        assert over_tcp.ping()
        assert over_tcp.config_get("bind")["bind"] == "127.0.0.1"
        redis_pid = status(root)["redis_pid"]
        assert password not in Path(f"/proc/{redis_pid}/cmdline").read_text()  # not in ps
        from tinytownd import Town

        with Town.connect(root) as town:  # picks the password up by itself
            assert town.redis.ping()
        again = tinytownd("restart", "--dir", str(root))
        assert again.returncode == 0 and secret.read_text().strip() == password  # kept
