"""tinytown.toml: defaults, validation and the CLI's answers to bad input."""

from __future__ import annotations

import dataclasses
import tomllib
from importlib import resources
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import tinytownd

from tinytownd import config
from tinytownd.errors import ConfigError


def test_the_documented_default_file_matches_the_built_in_defaults() -> None:
    shipped = resources.files("tinytownd").joinpath("data/tinytown.toml").read_text()
    loaded = config.from_mapping(tomllib.loads(shipped), default_name="x")
    assert loaded == config.Config(name="x")


def test_name_defaults_to_the_directory(tmp: Path) -> None:
    (tmp / "my-town").mkdir()
    assert config.load(tmp / "my-town").name == "my-town"


def test_written_config_reads_back_identically(tmp: Path) -> None:
    original = config.Config(name="t").replace("persistence.appendonly", True)
    config.save(tmp, original)
    assert config.load(tmp) == original


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('nmae = "x"', "tinytown.toml:1: unknown key 'nmae' (did you mean 'name'?)"),
        (
            '[persistence]\nappendfsnc = "always"',
            "tinytown.toml:2: unknown key 'persistence.appendfsnc' (did you mean 'appendfsync'?)",
        ),
        (
            "[persistence]\nappendonly = 1",
            "tinytown.toml:2: persistence.appendonly: expected bool, got int 1",
        ),
        (
            '[persistence]\nappendfsync = "sometimes"',
            "tinytown.toml:2: persistence.appendfsync: 'sometimes' is not one of always, everysec",
        ),
        ('name = "a:b"', "tinytown.toml:1: invalid town name 'a:b'"),
        (
            "[supervisor]\nmax_restarts = 0",
            "tinytown.toml:2: supervisor.max_restarts: must be at least 1",
        ),
        ('[persistence]\nsave = "60"', "tinytown.toml:2: persistence.save: expected pairs"),
        (
            "[supervisor]\nhealth_interval = nan",
            "tinytown.toml:2: supervisor.health_interval: must be a finite number",
        ),
        (
            "[supervisor]\nstop_timeout = inf",
            "tinytown.toml:2: supervisor.stop_timeout: must be a finite number",
        ),
        (
            "[supervisor]\nhealth_timeout = -1.0",
            "tinytown.toml:2: supervisor.health_timeout: must be at least 0.05",
        ),
        (
            "[supervisor]\nrestart_window = 1e12",
            "tinytown.toml:2: supervisor.restart_window: must be at most 86400",
        ),
        ("[persistence", "tinytown.toml: Expected ']'"),
        ("persistence = 3", "tinytown.toml:1: persistence: expected a [persistence] table"),
    ],
)
def test_bad_config_is_one_line_naming_file_line_and_key_exit_2(
    tmp: Path, text: str, message: str
) -> None:
    (tmp / "tinytown.toml").write_text(text)
    result = tinytownd("start", "--dir", str(tmp))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert not (tmp / ".tt").exists()  # nothing started
    assert not (tmp / "redis.sock").exists()


@pytest.mark.parametrize("name", ["a b", "a:b", "a*", "a?", "a[b", ""])
def test_unsafe_town_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="invalid town name"):
        config.Config(name="ok").replace("name", name)


def test_an_invalid_name_in_the_file_says_how_to_fix_it(tmp: Path) -> None:
    (tmp / "tinytown.toml").write_text('name = "my town"\n')
    result = tinytownd("start", "--dir", str(tmp))
    assert result.returncode == 2
    assert "invalid town name 'my town'" in result.stderr and str(tmp) in result.stderr


def test_init_writes_a_valid_config_and_gitignore(tmp: Path) -> None:
    root = tmp / "My Project"
    root.mkdir()
    (root / ".gitignore").write_text("node_modules\n")
    assert tinytownd("init", "--dir", str(root)).returncode == 0
    assert config.load(root).name == "My-Project"
    assert (root / ".gitignore").read_text().splitlines()[-2:] == [".tt/", "redis.sock"]
    again = tinytownd("init", "--dir", str(root))
    assert again.returncode == 2 and "--force" in again.stderr


def test_config_set_rejects_a_bad_value_and_leaves_the_file_alone(tmp: Path) -> None:
    (tmp / "tinytown.toml").write_text('name = "t"\n')
    result = tinytownd("config", "set", "persistence.appendfsync", "sometimes", "--dir", str(tmp))
    assert result.returncode == 2
    assert (tmp / "tinytown.toml").read_text() == 'name = "t"\n'
    unknown = tinytownd("config", "get", "persistence.apendonly", "--dir", str(tmp))
    assert unknown.returncode == 2
    assert "did you mean 'persistence.appendonly'" in unknown.stderr


def test_config_get_prints_every_key(tmp: Path) -> None:
    result = tinytownd("config", "get", "--json", "--dir", str(tmp))
    assert set(config.all_keys()) <= set(__import__("json").loads(result.stdout))


def test_bad_cli_arguments_exit_2() -> None:
    assert tinytownd("start", "--appendfsync", "sometimes").returncode == 2
    assert tinytownd("frobnicate").returncode == 2


def test_redis_server_from_env_must_be_runnable(tmp: Path) -> None:
    result = tinytownd("start", "--dir", str(tmp), env={"TINYTOWN_REDIS_SERVER": "/nonexistent"})
    assert result.returncode == 1
    assert (
        "/nonexistent (from $TINYTOWN_REDIS_SERVER) is not a runnable redis-server" in result.stderr
    )


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.Config(name="t").name = "u"  # type: ignore[misc]


toml_values = st.recursive(
    st.one_of(st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.dictionaries(
        st.sampled_from(
            [
                "save",
                "appendonly",
                "appendfsync",
                "max_restarts",
                "health_interval",
                "url",
                "server",
                "broadcast",
                "nmae",
                "x",
            ]
        ),
        inner,
        max_size=4,
    ),
    max_leaves=8,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(
        st.sampled_from(["name", "redis", "persistence", "supervisor", "channel", "x"]),
        toml_values,
        max_size=5,
    )
)
def test_any_toml_document_gives_a_config_or_one_clear_error(data: dict[str, object]) -> None:
    try:
        loaded = config.from_mapping(data, default_name="fallback", source="tinytown.toml")
    except ConfigError as err:
        assert "\n" not in str(err) and str(err).startswith("tinytown.toml")
    else:
        assert isinstance(loaded, config.Config)
