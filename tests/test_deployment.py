"""docs/deployment.md, read as the machines it configures would read it.

- The systemd unit: parsed here, its keys checked against what the hub does
  (``ExecStart`` is the documented venv's ``rusty-ws serve``, whose options
  click accepts; SIGTERM; limits above the connection limit), then
  ``systemd-analyze verify`` (with ``ExecStart`` pointed at this venv's script,
  since ``/opt/rusty_ws`` does not exist here).
- The settings file: a hub made from it behaves as the page says.
- The nginx configuration: ``nginx -t`` with a temporary prefix and a
  throw-away certificate, then run in front of a hub made from the settings
  file: a login, the page's redirect, ``/healthz``, and a WebSocket through it.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

import rusty_ws
from docs_support import ROOT, block_named, blocks
from nginx_support import Nginx, check, http_conf
from rusty_ws import config, create_app
from rusty_ws.auth import hash_password
from rusty_ws.config import config_from_environ
from rusty_ws.protocol import encode_ping, encode_publish, encode_subscribe
from rusty_ws.server import limits
from rusty_ws.server.cli import serve_command
from rusty_ws.server.serve import stop
from rusty_ws.server.state import state_of
from support import WAIT, free_port, running_server
from tls_proxy import make_certificate

DOC = ROOT / "docs" / "deployment.md"
UNIT_PATH = "/etc/systemd/system/rusty_ws.service"
ENV_PATH = "/etc/rusty_ws/env"
HOST = "hub.example.com"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}}; comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not line.endswith("\\"), f"line {number}: keep each setting on one line"
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"line {number} is not KEY=value in a section: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def the(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    [value] = unit[section][key]
    return value


def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(block_named(DOC, "ini", f"# {UNIT_PATH}").text)


def settings_file() -> dict[str, str]:
    """The documented settings file, as systemd's EnvironmentFile= reads it."""
    values = {}
    for line in block_named(DOC, "ini", f"# {ENV_PATH} (mode 640, owner root, group rusty_ws)").text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    return values


def shell_lines() -> list[str]:
    return [line.split("#")[0].strip() for block in blocks(DOC) if block.language == "sh"
            for line in block.text.splitlines()]


class TestUnit:
    def test_exec_start_is_the_documented_venvs_rusty_ws_serve(self) -> None:
        argv = shlex.split(the(unit(), "Service", "ExecStart"))
        venv = argv[0].removesuffix("/bin/rusty-ws")
        assert argv[0] == f"{venv}/bin/rusty-ws" and venv.startswith("/"), argv
        # The venv is the one the page makes and installs the wheel into.
        wheel = f"rusty_ws-{rusty_ws.__version__}-py3-none-any.whl"
        assert f"python3 -m venv {venv}" in shell_lines()
        assert f"{venv}/bin/pip install ./{wheel}" in shell_lines()
        # The arguments are ones `rusty-ws serve` takes.
        assert argv[1] == "serve"
        with serve_command.make_context("serve", argv[2:]) as context:
            assert {k: context.params[k] for k in ("host", "port")} == {"host": "127.0.0.1", "port": 8081}

    def test_nginx_forwards_to_the_port_the_unit_listens_on(self) -> None:
        argv = shlex.split(the(unit(), "Service", "ExecStart"))
        address = f"{argv[argv.index('--host') + 1]}:{argv[argv.index('--port') + 1]}"
        assert f"proxy_pass http://{address};" in nginx_block()

    def test_settings_come_from_the_documented_file(self) -> None:
        assert the(unit(), "Service", "EnvironmentFile") == ENV_PATH

    def test_stops_the_way_the_hub_closes_cleanly(self) -> None:
        assert the(unit(), "Service", "KillSignal") == "SIGTERM"  # serve closes with 4200 on it, then exits 0
        hub_shutdown = stop.__defaults__[0]  # the seconds serve gives connections to close
        assert int(the(unit(), "Service", "TimeoutStopSec")) > hub_shutdown + 5

    def test_limits_leave_room_for_the_connection_limit(self) -> None:
        # One thread and one socket per connection; unset, the limit is what LimitNOFILE allows.
        descriptors = int(the(unit(), "Service", "LimitNOFILE"))
        assert limits.connections_for(descriptors, config.MAX_PENDING_REQUESTS) > 10 * config.MAX_CONNECTIONS_EMBEDDED
        assert int(the(unit(), "Service", "TasksMax")) > descriptors

    def test_runs_as_its_own_user_in_its_own_directory(self) -> None:
        service = unit()["Service"]
        assert service["User"] == ["rusty_ws"] and service["Group"] == ["rusty_ws"]
        assert "useradd --system --no-create-home --shell /usr/sbin/nologin rusty_ws" in shell_lines()
        assert service["WorkingDirectory"] == [f"/var/lib/{the(unit(), 'Service', 'StateDirectory')}"]
        assert the(unit(), "Install", "WantedBy") == "multi-user.target"
        assert the(unit(), "Service", "Restart") == "on-failure"

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        assert SYSTEMD_ANALYZE, "systemd-analyze is missing: scripts/test.sh installs the systemd package"
        text = block_named(DOC, "ini", f"# {UNIT_PATH}").text
        here = Path(sys.executable).parent / "rusty-ws"  # this venv's script: /opt/rusty_ws is not here
        assert here.exists()
        argv0 = shlex.split(the(unit(), "Service", "ExecStart"))[0]
        path = tmp_path / "rusty_ws.service"
        path.write_text(text.replace(f"ExecStart={argv0} ", f"ExecStart={here} "))
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True,
                                timeout=WAIT * 10, stdin=subprocess.DEVNULL)
        assert (result.returncode, result.stdout + result.stderr) == (0, "")

    def test_a_typo_would_be_seen(self, tmp_path: Path) -> None:
        assert SYSTEMD_ANALYZE
        path = tmp_path / "typo.service"
        path.write_text(f"[Service]\nExecStart={sys.executable} -c pass\nKilSignal=SIGTERM\n")
        result = subprocess.run([SYSTEMD_ANALYZE, "verify", str(path)], capture_output=True, text=True,
                                timeout=WAIT * 10, stdin=subprocess.DEVNULL)
        assert "Unknown key" in result.stdout + result.stderr


# --------------------------------------------------------------------------- the settings file


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"alice": hash_password("wonderland")}))
    return path


def documented_config(users_file: Path) -> dict[str, Any]:
    values = settings_file()
    assert values["RUSTY_WS_USERS_FILE"] == "/etc/rusty_ws/users.json"
    values["RUSTY_WS_USERS_FILE"] = str(users_file)
    return config_from_environ(values)


class TestSettingsFile:
    def test_a_hub_made_from_it(self, users_file: Path) -> None:
        app = create_app(documented_config(users_file))
        try:
            settings = state_of(app).settings
            assert settings.require_auth and settings.jwt_secret_key
            client = app.test_client()
            base = f"https://{HOST}"
            assert client.post(base + "/auth/token", json={"username": "alice", "password": "wonderland"}).status_code == 200
            # Development mode is off: the demo login is refused.
            assert client.post(base + "/auth/token", json={"username": "testuser", "password": "password"}).status_code == 401
            assert client.get(base + "/healthz").get_json() == {"status": "ok"}
            assert client.get("http://127.0.0.1:8081/healthz").status_code == 200
            assert client.get("http://evil.example/healthz").status_code == 403
        finally:
            state_of(app).hub.shutdown(WAIT)


# --------------------------------------------------------------------------- nginx


def nginx_block() -> str:
    return block_named(DOC, "nginx", "# /etc/nginx/conf.d/rusty_ws.conf").text


@contextlib.contextmanager
def documented_nginx(hub_port: int) -> Iterator[tuple[Nginx, int, Path]]:
    """The page's nginx configuration on free loopback ports, in front of ``hub_port``; yields (nginx, http port, CA)."""
    work_dir = Path(tempfile.mkdtemp(prefix="rusty_ws-deploy-nginx-"))
    try:
        cert, key = make_certificate(work_dir)
        tls_port, plain_port = free_port(), free_port()
        body = nginx_block()
        for old, new in [("listen 443 ssl;", f"listen 127.0.0.1:{tls_port} ssl;"),
                         ("listen 80;", f"listen 127.0.0.1:{plain_port};"),
                         ("proxy_pass http://127.0.0.1:8081;", f"proxy_pass http://127.0.0.1:{hub_port};"),
                         (f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert)),
                         (f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key))]:
            assert body.count(old) == 1, old
            body = body.replace(old, new)
        proxy = Nginx(http_conf(body, str(work_dir)), tls_port, str(work_dir))
        try:
            yield proxy, plain_port, cert
        finally:
            proxy.stop()
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def request(url: str, cafile: Path, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    """One request naming ``HOST`` in its Host header, trusting only ``cafile``; redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    opener = urllib.request.build_opener(
        NoRedirect, urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(cafile))))
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Host": HOST, **({"Content-Type": "application/json"} if data else {})}
    try:
        with opener.open(urllib.request.Request(url, data=data, headers=headers), timeout=WAIT) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


class TestNginx:
    def test_nginx_t(self, tmp_path: Path) -> None:
        cert, key = make_certificate(tmp_path)
        body = nginx_block().replace(f"/etc/letsencrypt/live/{HOST}/fullchain.pem", str(cert)) \
                            .replace(f"/etc/letsencrypt/live/{HOST}/privkey.pem", str(key)) \
                            .replace("listen 443 ssl;", f"listen 127.0.0.1:{free_port()} ssl;") \
                            .replace("listen 80;", f"listen 127.0.0.1:{free_port()};")
        result = check(http_conf(body, str(tmp_path)), str(tmp_path))
        assert result.returncode == 0, result.stderr

    def test_a_login_and_a_websocket_through_it(self, users_file: Path) -> None:
        with running_server(create_app(documented_config(users_file))) as hub, \
                documented_nginx(hub.port) as (proxy, plain_port, ca):
            base = f"https://127.0.0.1:{proxy.port}"
            status, headers, _ = request(f"http://127.0.0.1:{plain_port}/", ca)
            assert (status, headers["Location"]) == (301, f"https://{HOST}/")

            status, _, body = request(base + "/healthz", ca)
            assert (status, json.loads(body)) == (200, {"status": "ok"})
            status, _, body = request(base + "/auth/token", ca, {"username": "alice", "password": "wonderland"})
            assert status == 200, body
            token = json.loads(body)["token"]

            # A page on the allowed origin connects with the token, subscribes and hears itself.
            ws = websocket.create_connection(f"wss://127.0.0.1:{proxy.port}/ws?token={token}", timeout=WAIT,
                                             host=HOST, origin="https://app.example.com",
                                             sslopt={"ca_certs": str(ca)})
            try:
                ws.send(encode_subscribe("Orders"))
                ws.send(encode_ping())
                assert ws.recv() == "pong"
                ws.send(encode_publish("Orders", {"id": 42}))
                delivery = json.loads(ws.recv())
                assert (delivery["payload"], delivery["user"], delivery["session_id"]) == \
                    ({"id": 42}, "alice", "session-alice")
            finally:
                ws.close()
