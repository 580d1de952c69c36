"""The Channel over TLS (``rediss://``), against a real TLS Redis with certificates made
here: a CA, a server certificate for 127.0.0.1, and a client certificate."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import tinytownd, town_at
from tls_server import make_pair, serve, tls_capable

from tinytownd import Message, Town, aio

ME, YOU = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b", "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
pytestmark = pytest.mark.skipif(not tls_capable(), reason="no TLS-built redis-server here")


@pytest.fixture
def pki(tmp: Path) -> Path:
    return make_pair(tmp)


@pytest.fixture
def tls_port(tmp: Path, pki: Path) -> Iterator[int]:
    with serve(tmp, pki, "no") as port:
        yield port


@pytest.fixture
def mutual_tls_port(tmp: Path, pki: Path) -> Iterator[int]:
    with serve(tmp, pki, "yes") as port:
        yield port


def test_the_channel_works_over_tls_sync_and_asyncio(tmp: Path, pki: Path, tls_port: int) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki / 'good-ca.crt'}"
    root = town_at(tmp / "far", url)
    with Town.connect(root) as town:
        town.channel().send(Message.task(ME, YOU, "over tls"))

    async def receive() -> str:
        async with await aio.Town.connect(root) as town:
            got = await town.channel().receive(YOU, timeout=5)
            assert got is not None
            return str(got.body["description"])

    assert asyncio.run(receive()) == "over tls"
    status = tinytownd("status", "--dir", str(root))
    assert status.returncode == 0 and "reachable" in status.stdout


def test_a_wrong_ca_is_one_clear_line(tmp: Path, pki: Path, tls_port: int) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={pki / 'wrong-ca.crt'}"
    root = town_at(tmp / "far", url)
    result = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(root))
    said = result.stderr.strip()
    assert result.returncode != 0 and len(said.splitlines()) == 1, said
    assert "certificate verify failed" in said.lower() and "Traceback" not in said
    with Town.connect(root) as town, pytest.raises(redis.ConnectionError):
        town.channel().inbox_len(YOU)


def test_client_certificates_when_the_server_asks_for_them(
    tmp: Path, pki: Path, mutual_tls_port: int
) -> None:
    base = f"rediss://127.0.0.1:{mutual_tls_port}/0?ssl_ca_certs={pki / 'good-ca.crt'}"
    with_cert = f"{base}&ssl_certfile={pki / 'client.crt'}&ssl_keyfile={pki / 'client.key'}"
    root = town_at(tmp / "far", with_cert)
    sent = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(root))
    assert sent.returncode == 0, sent.stderr
    town_at(root, base)  # the same server without a client certificate
    refused = tinytownd("send", "--to", YOU, "--type", "ping", "--dir", str(root))
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "Traceback" not in refused.stderr
