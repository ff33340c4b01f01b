"""A TLS-terminating proxy for tests of ``wss://``: TLS on one loopback port, plain TCP to another.

The hub speaks plain ``ws://`` and expects TLS to end at a reverse proxy; this
is that proxy, small enough for a test. One thread accepts, one thread per
connection pumps bytes both ways; ``stop()`` ends them all.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from support import POLL, WAIT


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (the test's own CA)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return cert, key


class TlsProxy:
    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        self.target_port = target_port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.accepter = threading.Thread(target=self._accept, name="test-tls-accept", daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        self.listener.settimeout(POLL)
        while not self.stopping.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            thread = threading.Thread(target=self._pump, args=(client,), name="test-tls-pump", daemon=True)
            self.threads.append(thread)
            thread.start()

    def _pump(self, raw_client: socket.socket) -> None:
        try:
            raw_client.settimeout(WAIT)
            client = self.context.wrap_socket(raw_client, server_side=True)
        except (ssl.SSLError, OSError):
            raw_client.close()  # e.g. a client that refused our certificate
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        client.setblocking(False)
        upstream.setblocking(False)
        peers = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peers:
                selector.register(sock, selectors.EVENT_READ)
            while not self.stopping.is_set():
                for key, _ in selector.select(POLL):
                    try:
                        data = key.fileobj.recv(65536)
                    except (ssl.SSLWantReadError, BlockingIOError):
                        continue
                    except OSError:
                        data = b""
                    while isinstance(key.fileobj, ssl.SSLSocket) and key.fileobj.pending():
                        data += key.fileobj.recv(key.fileobj.pending())  # decrypted, already read off the fd
                    if not data:
                        client.close()
                        upstream.close()
                        return
                    target = peers[key.fileobj]
                    target.setblocking(True)
                    target.sendall(data)
                    target.setblocking(False)
        client.close()
        upstream.close()

    def stop(self) -> None:
        self.stopping.set()
        self.accepter.join(WAIT)
        for thread in self.threads:
            thread.join(WAIT)
        self.listener.close()


@contextlib.contextmanager
def tls_proxy(target_port: int, folder: Path) -> Iterator[tuple[int, Path]]:
    """Yield (port, certificate to trust) for a proxy in front of ``target_port``."""
    cert, key = make_certificate(folder)
    proxy = TlsProxy(target_port, cert, key)
    try:
        yield proxy.port, cert
    finally:
        proxy.stop()
