"""One tinytown.toml for `tt` and `tinytownd`: tt's keys are understood or knowingly ignored."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest
import redis
from support import client, status, tinytownd

from tinytownd import config

#: The shape tinytown 0.10's `tt init` writes (toml::to_string_pretty of its Config), with
#: the socket where tinytownd serves the town.
TT_INIT = """\
name = "demo"
default_cli = "claude"
max_agents = 10
use_central_redis = false
use_streams = false

[redis]
use_socket = true
socket_path = "redis.sock"
host = "127.0.0.1"
port = 6379
persist = true
aof_path = ".tt/redis.aof"
tls_enabled = false
bind = "127.0.0.1"

[townhall]
bind = "127.0.0.1"
rest_port = 8080
request_timeout_ms = 30000

[townhall.auth]
mode = "none"

[agent]
idle_timeout_secs = 300

[agent_clis.claude]
name = "claude"
command = "claude --print --dangerously-skip-permissions"
"""


def test_a_file_tt_wrote_starts_the_town_with_its_meaning(project: Path) -> None:
    (project / "tinytown.toml").write_text(TT_INIT)
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    redis_pid = status(project)["redis_pid"]
    assert psutil.Process(redis_pid).net_connections(kind="inet") == []  # tt's port: not opened
    assert client(project).config_get("appendonly")["appendonly"] == "yes"  # persist = true


def test_tts_own_socket_path_is_one_clear_line(project: Path) -> None:
    (project / "tinytown.toml").write_text(TT_INIT.replace('"redis.sock"', '".tt/redis.sock"'))
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "tinytown.toml:9: redis.socket_path" in result.stderr
    assert 'set socket_path = "redis.sock"' in result.stderr


def test_a_key_neither_tool_knows_is_still_an_error_with_a_suggestion(tmp: Path) -> None:
    (tmp / "tinytown.toml").write_text(TT_INIT.replace("use_socket", "use_sockt"))
    result = tinytownd("status", "--dir", str(tmp))
    assert result.returncode == 2 and "did you mean 'use_socket'" in result.stderr


def test_tcp_mode_is_a_redis_reached_by_url(tmp: Path) -> None:
    text = TT_INIT.replace("use_socket = true", "use_socket = false").replace(
        "tls_enabled = false", 'tls_enabled = false\npassword = "s3cret"'
    )
    (tmp / "tinytown.toml").write_text(text)
    loaded = config.load(tmp)
    assert loaded.remote_url == "redis://:s3cret@127.0.0.1:6379"
    assert "nothing local" in tinytownd("start", "--dir", str(tmp)).stdout


def test_init_writes_a_file_both_tools_read_and_config_set_keeps_tts_keys(tmp: Path) -> None:
    assert tinytownd("init", "--name", "both", "--dir", str(tmp)).returncode == 0
    text = (tmp / "tinytown.toml").read_text()
    assert 'socket_path = "redis.sock"' in text and "use_central_redis = false" in text
    assert config.load(tmp).name == "both"
    (tmp / "tinytown.toml").write_text('default_cli = "codex"\n' + text)
    changed = tinytownd("config", "set", "supervisor.backoff_max", "2.0", "--dir", str(tmp))
    assert changed.returncode == 0, changed.stderr
    after = (tmp / "tinytown.toml").read_text()
    assert 'default_cli = "codex"' in after and "use_socket = true" in after
    assert "backoff_max = 2.0" in after


def test_redis_url_at_the_towns_own_socket_is_the_local_town(town: Path) -> None:
    own = {"REDIS_URL": f"unix://{town / 'redis.sock'}"}
    shown = json.loads(tinytownd("status", "--json", "--dir", str(town), env=own).stdout)
    assert shown["state"] == "running" and shown["supervised"] is True
    assert (
        tinytownd("stop", "--dir", str(town), env=own)
        .stdout.strip()
        .endswith(f"stopped (daemon pid {shown['daemon_pid']})")
    )
    assert not os.path.exists(town / "redis.sock") or status(town)["state"] == "stopped"


def test_env_lets_tt_find_the_bundled_redis_server_without_shadowing(tmp: Path) -> None:
    bare = {"PATH": "/usr/sbin:/sbin"}  # no redis-server on it
    result = tinytownd("env", env=bare)
    line = result.stdout.strip()
    if not line.startswith("export"):  # the default bundle is Valkey: tt needs Redis 8
        assert result.returncode != 0 and "tinytownd[redis8]" in result.stderr
        pytest.skip(f"no bundled Redis 8 here: {result.stderr.strip()}")
    shell = subprocess.run(
        [
            "/bin/sh",
            "-c",
            f"{line.split('  #')[0]}; command -v redis-server; redis-server --version",
        ],
        env=bare,
        capture_output=True,
        text=True,
        check=True,
    )
    found, version = shell.stdout.splitlines()[:2]
    assert found.endswith("redis-server") and "v=8." in version
    assert line.split("=", 1)[1].startswith('"$PATH:')  # appended: the user's own still wins


def test_tts_default_socket_path_reaches_the_running_town(town: Path) -> None:
    client(town).set("seen-by-tt", 1)
    via_tt_default = redis.Redis(unix_socket_path=str(town / ".tt" / "redis.sock"))
    assert via_tt_default.get("seen-by-tt") == b"1"  # where an unmodified tt looks
    assert tinytownd("stop", "--dir", str(town)).returncode == 0
    assert not os.path.lexists(town / ".tt" / "redis.sock")  # no dangling link for tt
