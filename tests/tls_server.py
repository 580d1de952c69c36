"""A TLS Redis for the tests: certificates made with openssl (a CA, a server certificate
for 127.0.0.1, a client certificate) and Debian's TLS-built redis-server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from support import free_port, wait_until

SERVER = shutil.which("redis-server")  # Debian's is built with TLS; the bundles are not all


def tls_capable() -> bool:
    if not SERVER or not shutil.which("openssl"):
        return False
    done = subprocess.run([SERVER, "--version"], capture_output=True, text=True)
    return (
        "Redis server" in done.stdout
        and "libssl" in subprocess.run(["ldd", SERVER], capture_output=True, text=True).stdout
    )


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


def make_pair(tmp: Path) -> Path:
    """A directory with the "good" CA, server and client certificates, and "wrong-ca.crt"
    from another CA."""
    where = tmp / "pki"
    where.mkdir()
    make_pki(where, "good")
    other = tmp / "other"
    other.mkdir()
    make_pki(other, "wrong")
    shutil.copy(other / "wrong-ca.crt", where / "wrong-ca.crt")
    return where


@contextlib.contextmanager
def serve(tmp: Path, pki: Path, auth_clients: str) -> Iterator[int]:
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
