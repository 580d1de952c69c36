"""Run the suite down macOS's code paths on Linux: ``PYTHONPATH=tests/macos_like``.

Every interpreter the tests start (the CLI, each daemon) loads this first. It removes
``os.pidfd_open``, so Redis's exit is watched by the thread macOS uses, and shortens
the socket path limit to macOS's 104 bytes (103 usable). ``.ci/run`` runs the daemon's
tests this way on every change.
"""

import os

if hasattr(os, "pidfd_open"):
    del os.pidfd_open

import tinytownd.paths  # after the patch above; light: no redis-py

tinytownd.paths.MAX_SOCKET_PATH = 103
