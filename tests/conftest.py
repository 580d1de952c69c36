from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clusters import Cluster
from hypothesis import settings
from sentinels import Deployment
from support import project_dir, running, short_dir, tinytownd
from tls_server import make_pair, serve, tls_capable

# The suite runs the same everywhere: a Redis URL exported in the developer's shell must
# not point these tests (and the daemons they start) at somebody's server.
for _variable in (
    "REDIS_URL",
    "TINYTOWN_REDIS_URL",
    "TINYTOWN_REDIS_SERVER",
    "TINYTOWN_REDIS_PASSWORD",
    "TINYTOWN_DIR",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
):
    os.environ.pop(_variable, None)

# Shared 2-core machines: a slow example is not a failure.
settings.register_profile("tinytownd", deadline=None)
settings.load_profile("tinytownd")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="fault-injection tests: 20+ kill -9 cycles per mode instead of 4",
    )


@pytest.fixture
def cycles(request: pytest.FixtureRequest) -> int:
    """How many times the fault tests kill Redis."""
    return 20 if request.config.getoption("--long") else 4


FAST_SUPERVISOR = """
[supervisor]
health_interval = 0.1
health_timeout = 0.5
health_failures = 2
"""


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """One Redis Cluster (3 primaries, 3 replicas) for the whole session; tests flush it."""
    with short_dir("ttc-") as root, running(Cluster(root)) as servers:
        yield servers


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[Deployment]:
    """One primary, one replica and three Sentinels for the whole session."""
    with short_dir("tts-") as root, running(Deployment(root)) as servers:
        yield servers


@pytest.fixture(scope="session")
def tls_url() -> Iterator[str]:
    """A ``rediss://`` URL of a TLS Redis (certificates made here) for the whole session."""
    if not tls_capable():
        pytest.skip("no TLS-built redis-server here")
    with short_dir("ttt-") as root:
        pki = make_pair(root)
        with serve(root, pki, "no") as port:
            yield f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki / 'good-ca.crt'}"


@pytest.fixture
def tmp(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A short temp dir: unix socket paths must stay under 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="tt-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def project(tmp: Path) -> Iterator[Path]:
    """A project directory whose daemon (if any) is always stopped afterwards."""
    with project_dir(tmp, config=f'name = "demo"\n{FAST_SUPERVISOR}') as root:
        yield root


@pytest.fixture
def town(project: Path) -> Path:
    """A running town (daemon + Redis) in ``project``."""
    result = tinytownd("start", "--dir", str(project))
    assert result.returncode == 0, result.stderr
    return project
