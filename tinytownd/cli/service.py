"""``tinytownd service install|uninstall|print``: run a town under systemd or launchd."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..config import Config
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
    if unit.path.exists() and not service.is_ours(unit.path):
        raise ConfigError(f"{unit.path} exists and was not written by tinytownd; not touching it")
    if control.daemon_pid(paths) is not None:
        print(
            f"stopping the running town first, so {unit.manager} owns it: "
            f"{control.stop(paths, config)}"
        )
    unit.path.parent.mkdir(parents=True, exist_ok=True)
    unit.path.write_text(unit.text, encoding="utf-8")
    print(f"wrote {unit.path}")
    steps = service.install_steps(unit)
    done, why = service.run_steps(steps)
    if done:
        print(f"{unit.manager} started {unit.name}; it starts at login from now on")
        return 0
    print(f"{why}; to start it, run:\n" + "\n".join(f"  {shlex.join(s)}" for s in steps))
    return 0 if "not available" in why else 1


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
