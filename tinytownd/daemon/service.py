"""Service definitions for one project: a systemd user unit or a launchd LaunchAgent."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..config import Config
from ..paths import ProjectPaths

MARKER = "Written by `tinytownd service install`"


@dataclass(frozen=True)
class ServiceFile:
    """A rendered service definition and where it belongs."""

    manager: str  # "systemd" or "launchd"
    name: str  # unit name or launchd label
    path: Path
    text: str


def command_line() -> list[str]:
    """How a service manager runs this installation's ``tinytownd``."""
    script = Path(sys.executable).parent / "tinytownd"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("tinytownd")
    return [os.path.abspath(found)] if found else [sys.executable, "-m", "tinytownd"]


def _systemd_quote(arg: str) -> str:
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped}"'


def _user_config_home() -> Path:
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")


def render_systemd(paths: ProjectPaths, config: Config) -> ServiceFile:
    name = f"tinytownd-{config.name}.service"
    start = [*command_line(), "start", "--foreground", "--dir", str(paths.root)]
    # %t is the user's runtime directory, where deep projects keep their socket link.
    writable = [str(paths.root), "%t"]
    values = {
        "@TOWN@": config.name,
        "@DIR@": str(paths.root).replace("%", "%%"),
        "@EXEC_START@": " ".join(_systemd_quote(arg) for arg in start),
        "@WORKDIR@": str(paths.root).replace("%", "%%"),
        "@RW_PATHS@": " ".join(_systemd_quote(p) if p != "%t" else p for p in writable),
    }
    text = resources.files("tinytownd").joinpath("data/tinytownd.service").read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return ServiceFile("systemd", name, _user_config_home() / "systemd" / "user" / name, text)


def render_launchd(paths: ProjectPaths, config: Config) -> ServiceFile:
    label = f"io.tinytown.tinytownd.{config.name}"
    template = resources.files("tinytownd").joinpath("data/tinytownd.plist").read_bytes()
    plist = plistlib.loads(template)
    log = str(paths.daemon_log)
    plist.update(
        Label=label,
        ProgramArguments=[*command_line(), "start", "--foreground", "--dir", str(paths.root)],
        WorkingDirectory=str(paths.root),
        StandardOutPath=log,
        StandardErrorPath=log,
    )
    text = plistlib.dumps(plist).decode()
    # plistlib drops comments; keep the marker so uninstall knows the file is ours.
    text = text.replace("<plist", f"<!-- {MARKER} -->\n<plist", 1)
    path = Path.home() / "Library" / "LaunchAgents" / f"{label}.plist"
    return ServiceFile("launchd", label, path, text)


def install_steps(service: ServiceFile) -> list[list[str]]:
    """The commands that load and start an installed service."""
    if service.manager == "systemd":
        return [
            ["systemctl", "--user", "daemon-reload"],
            ["systemctl", "--user", "enable", "--now", service.name],
        ]
    domain = f"gui/{os.getuid()}"
    return [["launchctl", "bootstrap", domain, str(service.path)]]


def uninstall_steps(service: ServiceFile) -> list[list[str]]:
    if service.manager == "systemd":
        return [
            ["systemctl", "--user", "disable", "--now", service.name],
            ["systemctl", "--user", "daemon-reload"],
        ]
    return [["launchctl", "bootout", f"gui/{os.getuid()}/{service.name}"]]


def reachable(service: ServiceFile) -> tuple[bool, str]:
    """Whether the service manager answers here (a systemd user manager needs a login
    session's bus: containers, SSH sessions and WSL often have none)."""
    probe = (
        ["systemctl", "--user", "show-environment"]
        if service.manager == "systemd"
        else ["launchctl", "print", f"gui/{os.getuid()}"]
    )
    if shutil.which(probe[0]) is None:
        return False, f"{probe[0]} is not available here"
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False, f"`{' '.join(probe)}` did not answer"
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        why = said[-1] if said else f"exit {done.returncode}"
        return False, f"the {service.manager} user manager is not reachable ({why})"
    return True, ""


def installed_for(path: Path) -> str | None:
    """The town directory an installed unit or plist of ours runs, if it says."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if path.suffix == ".plist":
        try:
            return str(plistlib.loads(text.encode()).get("WorkingDirectory") or "") or None
        except plistlib.InvalidFileException:
            return None
    for line in text.splitlines():
        if line.startswith("WorkingDirectory="):
            return line.split("=", 1)[1].replace("%%", "%")
    return None


def run_steps(steps: list[list[str]]) -> tuple[bool, str]:
    """Run the manager's commands if it is here; ``(done, what to tell the user)``."""
    if shutil.which(steps[0][0]) is None:
        return False, f"{steps[0][0]} is not available here"
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            return False, f"`{' '.join(step)}` failed: {reason[-1] if reason else done.returncode}"
    return True, ""


def is_ours(path: Path) -> bool:
    try:
        return MARKER in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
