"""``tinytownd service install|uninstall|print``: run a town under systemd or launchd."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Config
from ..daemon.state import DaemonState
from ..errors import ConfigError, TinytownError
from ..lazyimport import lazy
from ..paths import ProjectPaths
from .common import command, project

if TYPE_CHECKING:
    from ..daemon import control, service
else:
    control = lazy("tinytownd.daemon.control")
    service = lazy("tinytownd.daemon.service")


@command("service")
def cmd_service(args: argparse.Namespace) -> int:
    paths, config = project(args)
    if config.remote_url:
        raise ConfigError("this town uses redis.url: there is no local Redis to run as a service")
    render = service.render_launchd if args.launchd else service.render_systemd
    unit = render(paths, config)
    if args.action == "print":
        sys.stdout.write(unit.text)
        return 0
    if args.action == "install":
        return _install(unit, paths, config)
    return _uninstall(unit)


def _install(unit: service.ServiceFile, paths: ProjectPaths, config: Config) -> int:
    """Install and start the unit, or leave everything as it was: the manager is asked
    first, and a failure puts back the town (and the unit file) as they were."""
    if unit.path.exists() and not service.is_ours(unit.path):
        raise ConfigError(f"{unit.path} exists and was not written by tinytownd; not touching it")
    other = service.installed_for(unit.path) if unit.path.exists() else None
    if other is not None and other != str(paths.root):
        raise ConfigError(
            f"{unit.name} already runs the town in {other}, also named {config.name!r}; "
            "give this one another name first (`tinytownd config set name NEW`)"
        )
    steps = service.install_steps(unit)
    reachable, why = service.reachable(unit)
    if not reachable:
        _write(unit)
        print(
            f"{why}: the town was left as it is. To hand it to {unit.manager} where it "
            "is reachable, run:\n"
            + "\n".join(f"  {shlex.join(s)}" for s in [["tinytownd", "stop"], *steps])
        )
        return 0
    previous = unit.path.read_text(encoding="utf-8") if unit.path.exists() else None
    was_running = control.daemon_pid(paths) is not None
    start_args = DaemonState.load(paths).start_args if was_running else []
    if was_running:
        print(
            f"stopping the running town first, so {unit.manager} owns it: "
            f"{control.stop(paths, config)}"
        )
    _write(unit)
    done, why = service.run_steps(steps)
    if done:
        print(f"{unit.manager} started {unit.name}; it starts at login from now on")
        return 0
    # Put everything back as it was.
    service.run_steps(service.uninstall_steps(unit))
    if previous is None:
        unit.path.unlink(missing_ok=True)
    else:
        unit.path.write_text(previous, encoding="utf-8")
    if was_running:
        control.start(paths, config, start_args)
    restored = "; the town runs again as before" if was_running else ""
    raise TinytownError(f"{why}; nothing was installed{restored}")


def _write(unit: service.ServiceFile) -> None:
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    unit.path.write_text(unit.text, encoding="utf-8")
    print(f"wrote {unit.path}")


def _uninstall(unit: service.ServiceFile) -> int:
    if not unit.path.exists():
        print(f"{unit.path} is not installed")
        return 0
    if not service.is_ours(unit.path):
        raise TinytownError(f"{unit.path} was not written by tinytownd; not removing it")
    done, why = service.run_steps(service.uninstall_steps(unit))
    if not done:
        print(
            f"{why}; stop it yourself with: "
            + "; ".join(shlex.join(s) for s in service.uninstall_steps(unit))
        )
    unit.path.unlink()
    print(f"removed {unit.path}")
    return 0


def add_parsers(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    p = add("service", "install, remove or print a systemd/launchd service for this town")
    p.add_argument("action", choices=("install", "uninstall", "print"))
    manager = p.add_mutually_exclusive_group()
    manager.add_argument("--systemd", action="store_true", help="a systemd user unit (default)")
    manager.add_argument("--launchd", action="store_true", help="a macOS LaunchAgent")
