"""Running under a service manager: rendered units, and the sd_notify protocol."""

from __future__ import annotations

import os
import plistlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import client, serving_pid, status, tinytownd

from tinytownd.config import Config
from tinytownd.daemon import service
from tinytownd.paths import ProjectPaths


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_rendered_unit_passes_systemd_analyze_verify(tmp: Path) -> None:
    project = tmp / "with space%"
    project.mkdir()
    unit = service.render_systemd(ProjectPaths.of(project), Config(name="demo"))
    assert unit.name == "tinytownd-demo.service"
    path = tmp / unit.name
    path.write_text(unit.text)
    checked = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0
    assert checked.stdout + checked.stderr == ""  # warnings (unknown keys...) fail too


def test_unit_keeps_systemd_from_looping_on_config_errors(tmp: Path) -> None:
    text = service.render_systemd(ProjectPaths.of(tmp), Config(name="demo")).text
    for line in (
        "Type=notify",
        "NotifyAccess=main",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "WatchdogSec=30",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f'ReadWritePaths="{tmp}" %t',
        "KillMode=mixed",
    ):
        assert line in text.splitlines()
    assert f'"start" "--foreground" "--dir" "{tmp}"' in text


def test_rendered_plist_loads_with_the_required_keys(tmp: Path) -> None:
    plist = plistlib.loads(
        service.render_launchd(ProjectPaths.of(tmp), Config(name="demo")).text.encode()
    )
    assert plist["Label"] == "io.tinytown.tinytownd.demo"
    assert plist["ProgramArguments"][-4:] == ["start", "--foreground", "--dir", str(tmp)]
    assert os.path.isabs(plist["ProgramArguments"][0])
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["WorkingDirectory"] == str(tmp)
    assert isinstance(plist["ThrottleInterval"], int) and plist["ThrottleInterval"] > 0
    assert plist["ProcessType"] == "Background"
    assert plist["StandardErrorPath"] == str(tmp / ".tt" / "daemon.log")


def test_service_print_touches_nothing(project: Path, tmp: Path) -> None:
    home = tmp / "home"
    result = tinytownd(
        "service",
        "print",
        "--systemd",
        "--dir",
        str(project),
        env={"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")},
    )
    assert result.returncode == 0 and "Type=notify" in result.stdout
    assert not home.exists()


def test_install_without_a_service_manager_says_what_to_run_and_uninstall_cleans_up(
    project: Path, tmp: Path
) -> None:
    home = tmp / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": "/nonexistent"}
    installed = tinytownd("service", "install", "--systemd", "--dir", str(project), env=env)
    assert installed.returncode == 0, installed.stderr
    unit = home / ".config" / "systemd" / "user" / "tinytownd-demo.service"
    assert unit.exists()
    assert "systemctl --user enable --now tinytownd-demo.service" in installed.stdout
    removed = tinytownd("service", "uninstall", "--systemd", "--dir", str(project), env=env)
    assert removed.returncode == 0 and not unit.exists()


def test_uninstall_never_removes_a_file_it_did_not_write(project: Path, tmp: Path) -> None:
    home = tmp / "home"
    unit = home / ".config" / "systemd" / "user" / "tinytownd-demo.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": "/nonexistent"}
    result = tinytownd("service", "uninstall", "--dir", str(project), env=env)
    assert result.returncode == 1 and "not written by tinytownd" in result.stderr
    assert unit.read_text() == "[Service]\nExecStart=/bin/true\n"


class Manager:
    """A stand-in service manager: a datagram socket that records sd_notify messages."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(self.path)
        self.socket.settimeout(20)

    def next(self) -> dict[str, str]:
        datagram = self.socket.recv(4096).decode()
        return dict(line.split("=", 1) for line in datagram.splitlines())

    def until(self, key: str) -> dict[str, str]:
        while True:
            fields = self.next()
            if key in fields:
                return fields


@pytest.fixture
def managed(project: Path, tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], Manager]]:
    manager = Manager(tmp)
    env = {**os.environ, "NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "400000"}
    daemon = subprocess.Popen(
        [sys.executable, "-m", "tinytownd", "start", "--foreground", "--dir", str(project)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield daemon, manager
    finally:
        daemon.kill()
        daemon.wait()
        manager.socket.close()


def test_ready_is_sent_only_once_redis_answers(
    managed: tuple[subprocess.Popen[bytes], Manager], project: Path
) -> None:
    _, manager = managed
    ready = manager.until("READY")
    assert ready["READY"] == "1"
    assert client(project, socket_connect_timeout=0.05).ping()  # at that instant, not later
    assert "serving" in ready["STATUS"] and "AOF off" in ready["STATUS"]


def test_watchdog_pings_at_half_the_interval_while_healthy(
    managed: tuple[subprocess.Popen[bytes], Manager],
) -> None:
    _, manager = managed
    manager.until("READY")
    manager.until("WATCHDOG")
    started = time.monotonic()
    for _ in range(5):
        manager.until("WATCHDOG")
    assert 0.5 < time.monotonic() - started < 3.0  # five pings at ~0.2 s


def test_sigterm_sends_stopping_and_exits_zero(
    managed: tuple[subprocess.Popen[bytes], Manager], project: Path
) -> None:
    daemon, manager = managed
    manager.until("READY")
    daemon.send_signal(signal.SIGTERM)
    assert manager.until("STOPPING")["STOPPING"] == "1"
    assert daemon.wait(30) == 0
    with pytest.raises(redis.ConnectionError):
        client(project).ping()


def test_sighup_reloads_and_reports_reloading_then_ready(
    managed: tuple[subprocess.Popen[bytes], Manager], project: Path
) -> None:
    daemon, manager = managed
    manager.until("READY")
    config = project / "tinytown.toml"
    config.write_text(
        config.read_text() + '\n[persistence]\nappendonly = true\nappendfsync = "always"\n'
    )
    daemon.send_signal(signal.SIGHUP)
    assert manager.until("RELOADING")["RELOADING"] == "1"
    ready = manager.until("READY")
    assert "AOF always" in ready["STATUS"]
    assert client(project).config_get("appendfsync")["appendfsync"] == "always"


def test_fatal_config_error_exits_2_so_systemd_does_not_restart(project: Path) -> None:
    (project / "tinytown.toml").write_text("[persistence]\nappendonly = maybe\n")
    result = tinytownd("start", "--foreground", "--dir", str(project))
    assert result.returncode == 2


def fake_systemctl(bin_dir: Path, fails: str) -> Path:
    """A stand-in ``systemctl`` that logs its calls and fails the ones matching ``fails``
    (as a user manager without a session bus, or a unit that will not enable, would)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    log = bin_dir / "calls"
    script = bin_dir / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {log}\n'
        f'case "$*" in *{fails}*) echo "Failed to connect to bus" >&2; exit 1;; esac\n'
        "exit 0\n"
    )
    script.chmod(0o755)
    return log


@pytest.mark.parametrize("fails", ["show-environment", "enable"])
def test_a_failed_install_leaves_the_town_as_it_found_it(town: Path, tmp: Path, fails: str) -> None:
    home = tmp / "home"
    log = fake_systemctl(tmp / "bin", fails)
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "PATH": f"{tmp / 'bin'}:{os.environ['PATH']}",
    }
    pid = serving_pid(town)
    client(town).set("kept", 1)
    result = tinytownd("service", "install", "--systemd", "--dir", str(town), env=env)
    unit = home / ".config" / "systemd" / "user" / "tinytownd-demo.service"
    if fails == "show-environment":  # no bus: nothing stopped, the unit is left to enable later
        assert result.returncode == 0, result.stderr
        assert "not reachable" in result.stdout and "left as it is" in result.stdout
        assert serving_pid(town) == pid and unit.exists()
        assert "enable" not in log.read_text()
    else:  # the manager refused: the town runs again, no unit is left behind
        assert result.returncode == 1
        assert "nothing was installed; the town runs again as before" in result.stderr
        assert not unit.exists()
        assert status(town)["state"] == "running"
    assert client(town).get("kept") == b"1"


def test_two_towns_with_one_name_never_share_a_unit(tmp: Path) -> None:
    home = tmp / "home"
    env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": "/nonexistent"}
    first, second = tmp / "a" / "demo", tmp / "b" / "demo"
    for root in (first, second):
        root.mkdir(parents=True)
    assert tinytownd("service", "install", "--dir", str(first), env=env).returncode == 0
    unit = home / ".config" / "systemd" / "user" / "tinytownd-demo.service"
    before = unit.read_text()
    clash = tinytownd("service", "install", "--dir", str(second), env=env)
    assert clash.returncode == 2 and f"already runs the town in {first}" in clash.stderr
    assert unit.read_text() == before
