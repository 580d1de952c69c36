"""Another local user can neither read, inject, nor make the daemon signal anything.

The other user is uid 65534 ("nobody"): a child process of the test drops to it and
serves a unix socket the way an attacker's fake Redis would, recording every byte a
victim sends it. Running as root is needed to become another user; elsewhere these
tests skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import FAST_SUPERVISOR
from support import client, project_dir, tinytownd

OTHER = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _serve_as_other(path: Path, ready: int, report: int) -> None:
    """In a forked child: become the other user, serve ``path``, report what arrives."""
    try:
        os.setgid(OTHER)
        os.setuid(OTHER)
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(path))
        os.chmod(path, 0o777)
        server.listen(16)
        server.settimeout(0.1)
        os.write(ready, b"1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(0.5)
                with contextlib.suppress(OSError):
                    data = conn.recv(65536)
                    if data:
                        os.write(report, data)
                        conn.sendall(b"+PONG\r\n")  # sound like Redis
    finally:
        os._exit(0)


@contextlib.contextmanager
def fake_redis_of_another_user(path: Path) -> Iterator[Callable[[], bytes]]:
    """A socket at ``path`` served by uid 65534; yields a function that returns every
    byte anyone has sent it so far."""
    ready_read, ready_write = os.pipe()
    report_read, report_write = os.pipe()
    child = os.fork()
    if child == 0:
        _serve_as_other(path, ready_write, report_write)
    os.close(ready_write)
    os.close(report_write)
    received = bytearray()

    def seen() -> bytes:
        while select.select([report_read], [], [], 0)[0]:
            chunk = os.read(report_read, 65536)
            if not chunk:
                break
            received.extend(chunk)
        return bytes(received)

    try:
        assert os.read(ready_read, 1) == b"1", "the other user's server did not start"
        yield seen
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        os.close(ready_read)
        os.close(report_read)


def open_to_all(*directories: Path) -> None:
    for directory in directories:
        os.chmod(directory, 0o777 | stat.S_ISVTX)


@as_root
def test_a_socket_planted_by_another_user_gets_nothing(project: Path, tmp: Path) -> None:
    open_to_all(tmp, project)  # a team folder anyone can write to
    with fake_redis_of_another_user(project / "redis.sock") as seen:
        started = tinytownd("start", "--dir", str(project))
        assert started.returncode == 1
        assert "belongs to uid 65534" in started.stderr
        assert len(started.stderr.strip().splitlines()) == 1

        shown = tinytownd("status", "--dir", str(project))
        assert "running" not in shown.stdout

        sent = tinytownd(
            "send",
            "--to",
            "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
            "--type",
            "task",
            "secret work",
            "--dir",
            str(project),
        )
        assert sent.returncode != 0
        assert "another user" in sent.stderr or "belongs to uid" in sent.stderr
        assert seen() == b""  # not a command, not a password, not a message


@as_root
def test_a_hijacked_short_link_directory_is_skipped(
    tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared_tmp = tmp / "t"
    shared_tmp.mkdir()
    open_to_all(tmp, shared_tmp)  # like /tmp: anyone may create names in it
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)  # su, cron, ssh without pam_systemd
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.setattr("tempfile.tempdir", None)
    deep = tmp / ("d" * 60) / ("e" * 60)
    with project_dir(deep, config=f'name = "deep"\n{FAST_SUPERVISOR}') as root:
        # The attacker takes our short-link directory first, with a link in it to a fake.
        taken = shared_tmp / f"tinytownd-{os.geteuid()}"
        digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
        fake = shared_tmp / "fake.sock"
        with fake_redis_of_another_user(fake) as seen:
            pid = os.fork()
            if pid == 0:
                try:
                    os.setgid(OTHER)
                    os.setuid(OTHER)
                    taken.mkdir(mode=0o755)
                    (taken / f"{digest}.sock").symlink_to(fake)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
            assert taken.stat().st_uid == OTHER

            started = tinytownd("start", "--dir", str(root))
            assert started.returncode == 0, started.stderr
            ours = client(root)  # found through the fallback directory, as every client does
            assert ours.ping()
            assert ours.connection_pool.connection_kwargs["path"].startswith(
                str(shared_tmp / f"tinytownd-{os.geteuid()}.1")
            )
            listed = tinytownd("status", "--json", "--dir", str(root))
            assert '"state": "running"' in listed.stdout
            assert seen() == b""


def test_settings_others_can_write_are_refused(project: Path) -> None:
    config = project / "tinytown.toml"
    config.write_text('name = "demo"\n[redis]\nserver = "/tmp/not-redis"\n')
    os.chmod(config, 0o666)
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 2
    assert "writable by other users" in result.stderr and "chmod go-w" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (project / ".tt" / "redis.conf").exists()  # nothing started


@as_root
def test_settings_written_by_another_user_are_refused(project: Path) -> None:
    config = project / "tinytown.toml"
    config.write_text('name = "demo"\n[redis]\nserver = "/tmp/not-redis"\n')
    os.chown(config, OTHER, OTHER)
    os.chmod(config, 0o644)
    result = tinytownd("status", "--dir", str(project))
    assert result.returncode == 2
    assert "belongs to uid 65534" in result.stderr


def test_a_fifo_for_settings_is_an_error_not_a_hang(project: Path) -> None:
    (project / "tinytown.toml").unlink()
    os.mkfifo(project / "tinytown.toml")
    result = tinytownd("status", "--dir", str(project), timeout=20)
    assert result.returncode == 2
    assert "not a regular file" in result.stderr


def test_a_state_directory_others_can_write_is_refused(project: Path) -> None:
    state = project / ".tt"
    state.mkdir()
    os.chmod(state, 0o777)
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 1
    assert "writable by other users" in result.stderr
