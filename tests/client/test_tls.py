"""wss:// and https:// through a TLS-terminating proxy, with certificate verification on."""

from __future__ import annotations

import pytest

from rusty_ws import ConnectFailed, WsClient
from support import WAIT, RunningServer, messages
from tls_proxy import tls_proxy


def test_wss_with_a_trusted_certificate(server: RunningServer, tmp_path) -> None:
    with tls_proxy(server.port, tmp_path) as (port, cert):
        with WsClient.connect_with_auth("c", f"wss://127.0.0.1:{port}/ws", f"https://127.0.0.1:{port}/auth/token",
                                        "testuser", "password", sslopt={"ca_certs": str(cert)}) as client:
            received = messages(client, "T")
            client.subscribe("c", "T")
            client.publish("c", "T", "secret")
            assert received.get(timeout=WAIT) == "secret"
            assert client.is_authenticated()


def test_wss_verifies_certificates_by_default(server: RunningServer, tmp_path) -> None:
    with tls_proxy(server.port, tmp_path) as (port, _cert):
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            WsClient.connect("c", f"wss://127.0.0.1:{port}/ws")
        with pytest.raises(ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
            WsClient.connect_with_auth("c", f"wss://127.0.0.1:{port}/ws", f"https://127.0.0.1:{port}/auth/token",
                                       "testuser", "password")
