"""``tinytown.toml``: the settings of one town, their defaults and their checks.

The schema is the dataclasses below; loading, ``config get`` and ``config set``
walk it, so a setting is declared exactly once.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import stat
import time
import tomllib
import typing
from dataclasses import dataclass, field, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import tomlkit
import tomlkit.exceptions

from . import compat, trust
from .errors import BrokenConfigError, ConfigError
from .keys import town_name_for, validate_town_name
from .paths import CONFIG_FILE, write_durably

APPENDFSYNC = ("always", "everysec", "no")
BROADCAST_SCOPES = ("global", "town")
STATE_FORMS = ("hash", "json")
REDIS_DEFAULT_SAVE = "3600 1 300 100 60 10000"


def _choices(*allowed: str) -> dict[str, Any]:
    return {"choices": allowed}


def _between(minimum: float, maximum: float) -> dict[str, Any]:
    return {"min": minimum, "max": maximum}


DAY = 86400.0


@dataclass(frozen=True)
class RedisSettings:
    server: str = ""
    url: str = ""
    port: int = field(default=0, metadata={"min": 0, "max": 65535})
    bind: str = "127.0.0.1"
    password: str = ""


@dataclass(frozen=True)
class Persistence:
    save: str = field(default=REDIS_DEFAULT_SAVE, metadata={"check": "save"})
    appendonly: bool = False
    appendfsync: str = field(default="everysec", metadata=_choices(*APPENDFSYNC))


@dataclass(frozen=True)
class SupervisorSettings:
    max_restarts: int = field(default=10, metadata=_between(1, 1_000_000))
    restart_window: float = field(default=60.0, metadata=_between(1, DAY))
    backoff_max: float = field(default=5.0, metadata=_between(0, 3600))
    health_interval: float = field(default=1.0, metadata=_between(0.05, 3600))
    health_timeout: float = field(default=1.0, metadata=_between(0.05, 3600))
    health_failures: int = field(default=3, metadata=_between(1, 1000))
    start_timeout: float = field(default=30.0, metadata=_between(1, DAY))
    stop_timeout: float = field(default=60.0, metadata=_between(1, DAY))


@dataclass(frozen=True)
class ChannelSettings:
    # "town": tt:<town>:broadcast, where tinytown 0.10 publishes; "global": tt:broadcast,
    # the channel its documentation names.
    broadcast: str = field(default="town", metadata=_choices(*BROADCAST_SCOPES))
    # "hash": agent and task state as tinytown 0.10 stores it; "json": the documented
    # String layout. Reads take both.
    state: str = field(default="hash", metadata=_choices(*STATE_FORMS))
    # Seconds a command whose connection failed is retried before the error reaches
    # the caller; 0: 2 s, or 60 s behind Sentinel (a failover takes about 30 s).
    retry_for: float = field(default=0.0, metadata=_between(0, DAY))


@dataclass(frozen=True)
class Config:
    """A town's settings. ``name`` is always resolved (from the file or the directory)."""

    name: str
    redis: RedisSettings = RedisSettings()
    persistence: Persistence = Persistence()
    supervisor: SupervisorSettings = SupervisorSettings()
    channel: ChannelSettings = ChannelSettings()
    #: The project's own socket (set by :func:`load`): a URL naming it is this town.
    local_socket: str = field(default="", compare=False)

    @property
    def remote_url(self) -> str:
        """The Redis URL to use instead of a local server, or "" for the local one."""
        return self._remote()[0]

    @property
    def remote_source(self) -> str:
        """Which setting chose :attr:`remote_url`: ``redis.url in tinytown.toml``,
        ``$TINYTOWN_REDIS_URL`` or ``$REDIS_URL`` ("" for the local town)."""
        return self._remote()[1]

    def _remote(self) -> tuple[str, str]:
        for url, source in (
            (self.redis.url, "redis.url in tinytown.toml"),
            (os.environ.get("TINYTOWN_REDIS_URL", ""), "$TINYTOWN_REDIS_URL"),
            (os.environ.get("REDIS_URL", ""), "$REDIS_URL"),
        ):
            if url:
                # A URL naming the project's own socket is the local town.
                if self.local_socket and _names_socket(url, self.local_socket):
                    return "", ""
                return url, source
        return "", ""

    def get(self, key: str) -> Any:
        """The value of a dotted key such as ``persistence.appendonly``."""
        section, _, name = _split_key(key)
        return getattr(getattr(self, section), name) if name else getattr(self, section)

    def replace(self, key: str, value: Any) -> Config:
        """A copy with one dotted key changed (the value is checked)."""
        section, _, name = _split_key(key)
        if not name:
            return dataclasses.replace(self, name=validate_town_name(str(value)))
        part = getattr(self, section)
        _check_value(part, name, value, key)
        return dataclasses.replace(self, **{section: dataclasses.replace(part, **{name: value})})


SECTIONS: dict[str, type[Any]] = {
    name: hint
    for name, hint in typing.get_type_hints(Config).items()
    if isinstance(hint, type) and is_dataclass(hint)
}


def _names_socket(url: str, socket: str) -> bool:
    """Whether ``url`` is ``unix://`` (or a bare path) at the project's own socket."""
    path = urlsplit(url).path if url.startswith("unix://") else url if url.startswith("/") else ""
    return bool(path) and os.path.realpath(path) == os.path.realpath(socket)


def needs_restart(key: str) -> bool:
    """Whether a running town takes ``key`` only at its next restart: the Redis
    server's own settings and the town's name; the daemon applies the rest live."""
    return key == "name" or key.startswith("redis.")


def read_by_clients(key: str) -> bool:
    """Whether ``key`` is read by each Channel when it is made, not by the daemon."""
    return key.startswith("channel.")


def all_keys() -> list[str]:
    """Every dotted key a user can set, in file order."""
    return ["name"] + [
        f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    ]


def _split_key(key: str) -> tuple[str, str, str]:
    if key not in all_keys():
        raise ConfigError(f"unknown setting {key!r}{_suggest(key, all_keys())}")
    return key.partition(".") if "." in key else (key, "", "")


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SAVE_SYNTAX = re.compile(r"(\d+ \d+)( \d+ \d+)*")


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "bool": bool,
    "int": int,
    "float": (int, float),
}


def _check_value(part: Any, name: str, value: Any, where: str) -> None:
    spec = next(f for f in dataclasses.fields(part) if f.name == name)
    expected: type | tuple[type, ...] = _PYTHON_TYPES[str(spec.type)]
    if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
        raise ConfigError(f"{where}: expected {spec.type}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value!r}")
    meta = spec.metadata
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(meta["choices"])
        raise ConfigError(f"{where}: {value!r} is not one of {allowed}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{where}: must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{where}: must be at most {meta['max']}, got {value!r}")
    if meta.get("check") == "save" and not _SAVE_SYNTAX.fullmatch(str(value).strip() or "0 0"):
        raise ConfigError(
            f'{where}: expected pairs of "<seconds> <changes>" like "3600 1 300 100", '
            f'or "" to disable snapshots; got {value!r}'
        )


def parse_value(key: str, text: str) -> Any:
    """Turn a command-line string into the type the setting ``key`` holds."""
    current = Config(name="x").get(key)
    if isinstance(current, bool):
        lowered = text.lower()
        if lowered in ("true", "yes", "on", "1"):
            return True
        if lowered in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{key}: expected true or false, got {text!r}")
    if isinstance(current, int | float):
        try:
            return type(current)(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {text!r}") from None
    return text


def _line_of(text: str, key: str) -> int | None:
    pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=", re.MULTILINE)
    found = pattern.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else None


def from_mapping(
    data: dict[str, Any], default_name: str, source: str = "", text: str = ""
) -> Config:
    """Build a :class:`Config` from parsed TOML, naming ``source`` and the line in errors."""

    def at(leaf: str) -> str:
        line = _line_of(text, leaf) if text else None
        return f"{source}:{line}" if line else source

    config = Config(name=default_name)
    data = compat.translate(data, at)
    for top, value in data.items():
        if top == "name":
            if not isinstance(value, str):
                raise ConfigError(f"{at('name')}: name: expected a string, got {value!r}")
            try:
                config = config.replace("name", value) if value else config
            except ConfigError as err:
                raise ConfigError(f"{at('name')}: {err}") from None
            continue
        if top not in SECTIONS:
            candidates = ["name", *SECTIONS, *compat.TT_TOP_LEVEL]
            raise ConfigError(f"{at(top)}: unknown key {top!r}{_suggest(top, candidates)}")
        if not isinstance(value, dict):
            raise ConfigError(f"{at(top)}: {top}: expected a [{top}] table")
        names = [f.name for f in dataclasses.fields(SECTIONS[top])]
        for leaf, leaf_value in value.items():
            key = f"{top}.{leaf}"
            if leaf not in names:
                candidates = names + sorted(compat.TT_REDIS) if top == "redis" else names
                raise ConfigError(f"{at(leaf)}: unknown key {key!r}{_suggest(leaf, candidates)}")
            try:
                config = config.replace(key, leaf_value)
            except ConfigError as err:
                raise ConfigError(f"{at(leaf)}: {err}") from None
    return config


def load(project_dir: Path) -> Config:
    """Read ``project_dir/tinytown.toml`` (optional) and resolve the town name."""
    path = project_dir / CONFIG_FILE
    default_name = project_dir.resolve().name
    try:
        trust.check_file(path, "settings")
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    try:
        data = tomllib.loads(text)
        config = from_mapping(data, default_name="", source=str(path), text=text)
    except tomllib.TOMLDecodeError as err:
        raise BrokenConfigError(f"{path}: {err}") from None
    except ConfigError as err:
        raise BrokenConfigError(str(err)) from None
    config = dataclasses.replace(config, local_socket=str(project_dir.absolute() / "redis.sock"))
    if config.name:
        return config
    return config.replace("name", town_name_for(default_name))


def to_mapping(config: Config) -> dict[str, Any]:
    """The TOML document for ``config`` (every setting, so the file documents itself)."""
    data: dict[str, Any] = {"name": config.name}
    for section in SECTIONS:
        data[section] = dataclasses.asdict(getattr(config, section))
    for key in ("url", "password"):  # tt reads an empty one as set: leave unset ones out
        if not data["redis"][key]:
            del data["redis"][key]
    return data


def set_key(project_dir: Path, key: str, value: Any) -> Path:
    """Write one checked setting into ``tinytown.toml`` in place, whatever else the file
    holds: this is how a file with a bad value elsewhere gets repaired. A file that does
    not parse at all must be set aside first (:func:`set_aside_if_broken`)."""
    Config(name="x").replace(key, value)  # checks the key and the value alone
    path = project_dir / CONFIG_FILE
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        document, mode = tomlkit.document(), 0o644
    except tomlkit.exceptions.TOMLKitError as err:
        raise BrokenConfigError(f"{path}: {err}") from None
    section, _, name = _split_key(key)
    if not name:
        document[section] = value
    else:
        if not isinstance(document.get(section), dict):
            document[section] = tomlkit.table()
        document[section][name] = value
    write_durably(path, tomlkit.dumps(document), mode)
    return path


def write_default(project_dir: Path, name: str) -> Path:
    """Write the documented default ``tinytown.toml`` (the one shipped in
    ``tinytownd/data``, every setting with its comment) for the town ``name``; it also
    holds the keys tt needs to find this town on ./redis.sock rather than start its own."""
    template = resources.files("tinytownd").joinpath("data/tinytown.toml").read_text()
    text = template.replace('# name = "my-town"', f"name = {tomlkit.string(name).as_string()}", 1)
    path = project_dir / CONFIG_FILE
    write_durably(path, text, 0o644)
    return path


def set_aside_if_broken(project_dir: Path) -> Path | None:
    """Rename a ``tinytown.toml`` that does not parse to ``tinytown.toml.broken-<time>``
    (never delete it), so a fresh one can be written; returns the new name, if any."""
    path = project_dir / CONFIG_FILE
    try:
        tomllib.loads(path.read_text(encoding="utf-8"))
        return None
    except FileNotFoundError:
        return None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        kept = path.with_name(f"{CONFIG_FILE}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
        os.rename(path, kept)
        return kept


def save(project_dir: Path, config: Config, extra: dict[str, Any] | None = None) -> Path:
    """Write ``config`` into ``tinytown.toml`` atomically (temp file, fsync, rename).

    The file is edited in place: only values that change are rewritten, so comments,
    order and keys we do not own (tt's, or ``extra``) stay as they are. A file that does
    not parse is never dropped (see :func:`set_aside_if_broken`).
    """
    path = project_dir / CONFIG_FILE
    try:
        document = tomlkit.parse(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        document = tomlkit.document()
    except tomlkit.exceptions.TOMLKitError as err:
        raise BrokenConfigError(f"{path}: {err}") from None
    for key, value in [*(extra or {}).items(), *to_mapping(config).items()]:
        if not isinstance(value, dict):
            if document.get(key) != value:
                document[key] = value
            continue
        if not isinstance(document.get(key), dict):
            document[key] = tomlkit.table()
        table = document[key]
        for name, item in value.items():
            if table.get(name) != item:
                table[name] = item
        if key in SECTIONS:  # ours, left out because unset: gone from the file too
            for name in {f.name for f in dataclasses.fields(SECTIONS[key])} - value.keys():
                table.pop(name, None)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)  # the user's file keeps its mode
    except FileNotFoundError:
        mode = 0o644
    write_durably(path, tomlkit.dumps(document), mode)
    return path


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, for printing."""
    parts = urlsplit(url)
    if parts.password:
        host = parts.netloc.rsplit("@", 1)[1]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{host}")
    return urlunsplit(parts)
