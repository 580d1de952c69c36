"""The Channel over TLS (``rediss://``), against a real TLS Redis with certificates made
here: a CA, a server certificate for 127.0.0.1, and a client certificate."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from support import free_port, tinytownd, town_at, wait_until

from tinytownd import Message, Town, aio

ME, YOU = "5a0e9a52-2f7e-4c8e-9f6b-1c2d3e4f5a6b", "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
SERVER = shutil.which("redis-server")  # Debian's is built with TLS; the bundles are not all


def _tls_capable() -> bool:
    if not SERVER or not shutil.which("openssl"):
        return False
    done = subprocess.run([SERVER, "--version"], capture_output=True, text=True)
    return (
        "Redis server" in done.stdout
        and "libssl" in subprocess.run(["ldd", SERVER], capture_output=True, text=True).stdout
    )


pytestmark = pytest.mark.skipif(not _tls_capable(), reason="no TLS-built redis-server here")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_pki(where: Path, name: str) -> None:
    """``name``-ca.crt, server.crt/.key (for 127.0.0.1) and client.crt/.key, signed."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", f"/CN={name} test CA", "-keyout", f"{name}-ca.key",
            "-out", f"{name}-ca.crt", cwd=where)  # fmt: skip
    for who, extra in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                "-keyout", f"{who}.key", "-out", f"{who}.csr", cwd=where)  # fmt: skip
        (where / f"{who}.ext").write_text(extra + "\n")
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", f"{name}-ca.crt",
                "-CAkey", f"{name}-ca.key", "-CAcreateserial", "-days", "2",
                "-extfile", f"{who}.ext", "-out", f"{who}.crt", cwd=where)  # fmt: skip


@pytest.fixture
def pki(tmp: Path) -> Path:
    where = tmp / "pki"
    where.mkdir()
    make_pki(where, "good")
    other = tmp / "other"
    other.mkdir()
    make_pki(other, "wrong")
    shutil.copy(other / "wrong-ca.crt", where / "wrong-ca.crt")
    return where


def _serve(tmp: Path, pki: Path, auth_clients: str) -> Iterator[int]:
    port = free_port()
    assert SERVER is not None
    server = subprocess.Popen(
        [
            *(SERVER, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1"),
            *(
                "--tls-cert-file",
                str(pki / "server.crt"),
                "--tls-key-file",
                str(pki / "server.key"),
            ),
            *("--tls-ca-cert-file", str(pki / "good-ca.crt"), "--tls-auth-clients", auth_clients),
            *("--dir", str(tmp), "--save", ""),
        ],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 1).close() is None)
        yield port
    finally:
        server.kill()
        server.wait()


@pytest.fixture
def tls_port(tmp: Path, pki: Path) -> Iterator[int]:
    yield from _serve(tmp, pki, "no")


@pytest.fixture
def mutual_tls_port(tmp: Path, pki: Path) -> Iterator[int]:
    yield from _serve(tmp, pki, "yes")


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
