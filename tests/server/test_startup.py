"""Starting the hub: a bad setting is one line that says what to fix, on the command line too."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from rusty_ws import ConfigError, PubSub, create_app
from rusty_ws.config import MAX_PENDING_REQUESTS
from rusty_ws.protocol import encode_register_name, encode_register_session
from rusty_ws.server import limits
from support import ROOT, SECRET, WAIT, Client, HubProcess, http, hub_config

SERVE = [sys.executable, "-c", "from rusty_ws.cli import main; main()", "serve", "--port", "0"]
FLASK_RUN = [sys.executable, "-m", "flask", "--app", "rusty_ws", "run", "--port", "0"]


def run_to_the_end(args: list[str], **settings: str) -> tuple[int, str]:
    """Run a command that should stop by itself; its exit status and its output (stdout and stderr)."""
    env = dict(os.environ, PYTHONPATH=ROOT, JWT_SECRET_KEY=SECRET, PYTHONUNBUFFERED="1", **settings)
    done = subprocess.run(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=5 * WAIT)
    return done.returncode, done.stdout


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    """A users file with a JSON typo (a trailing comma) on its second line."""
    path = tmp_path / "users.json"
    path.write_text('{"alice": "scrypt:32768:8:1$salt$hash",\n}\n', encoding="utf-8")
    return path


def test_a_users_file_with_a_json_typo_names_the_setting_the_path_and_where(users_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        create_app(hub_config(users_file=str(users_file)))
    assert str(caught.value) == (f"RUSTY_WS_USERS_FILE={str(users_file)!r}: not valid JSON at line 2, column 1: "
                                 "Expecting property name enclosed in double quotes")
    assert caught.value.setting == "RUSTY_WS_USERS_FILE" and caught.value.value == str(users_file)


@pytest.mark.parametrize("content, problem", [
    (None, "cannot be read: No such file or directory"),
    (b'["alice"]', "a users file is a JSON object"),
    (b'{"alice": "\xff"}', "not UTF-8 text"),
], ids=["missing", "a-list", "not-utf-8"])
def test_a_users_file_that_cannot_be_used_is_one_line(tmp_path: Path, content: bytes | None,
                                                      problem: str) -> None:
    path = tmp_path / "users.json"
    if content is not None:
        path.write_bytes(content)
    app = Flask("embedding")
    app.config.update(hub_config(users_file=str(path)))
    with pytest.raises(ConfigError) as caught:
        PubSub(app)
    message = str(caught.value)
    assert message.startswith(f"RUSTY_WS_USERS_FILE={str(path)!r}: {problem}") and "\n" not in message, message
    assert "rusty_ws" not in app.extensions


@pytest.mark.parametrize("command", [SERVE, FLASK_RUN], ids=["rusty-ws serve", "flask run"])
@pytest.mark.parametrize("setting, value, line", [
    ("RUSTY_WS_MAX_CONNECTIONS", "0", "Error: RUSTY_WS_MAX_CONNECTIONS=0: must be a whole number > 0"),
    ("RUSTY_WS_PING_TIMEOUT", "soon", "Error: RUSTY_WS_PING_TIMEOUT='soon': must be a number of seconds > 0"),
    ("RUSTY_WS_BROKER_URL", "carrier-pigeon://coop",
     "Error: RUSTY_WS_BROKER_URL='carrier-pigeon://coop': names no broker rusty_ws knows: "
     "use memory:// or redis://host:port/db"),
], ids=["max-connections", "ping-timeout", "broker-url"])
def test_the_command_line_prints_one_line_and_exits_1(command: list[str], setting: str, value: str,
                                                        line: str) -> None:
    status, output = run_to_the_end(command, **{setting: value})
    assert (status, output) == (1, line + "\n")


@pytest.mark.parametrize("command", [SERVE, FLASK_RUN], ids=["rusty-ws serve", "flask run"])
def test_the_command_line_names_a_users_files_typo_in_one_line(command: list[str], users_file: Path) -> None:
    status, output = run_to_the_end(command, RUSTY_WS_USERS_FILE=str(users_file))
    assert (status, output) == (1, f"Error: RUSTY_WS_USERS_FILE={str(users_file)!r}: not valid JSON at line 2, "
                                   "column 1: Expecting property name enclosed in double quotes\n")


def flask_run_log_until_ready(nofile: tuple[int, int]) -> list[str]:
    """``flask --app rusty_ws run`` with no logging configured and ``RLIMIT_NOFILE`` at ``nofile``: its output
    until werkzeug says where it runs (bounded); the process is stopped."""
    env = dict(os.environ, PYTHONPATH=ROOT, JWT_SECRET_KEY=SECRET, PYTHONUNBUFFERED="1")
    env.pop("RUSTY_WS_MAX_CONNECTIONS", None)
    process = subprocess.Popen(FLASK_RUN, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile))  # noqa: PLW1509
    seen: list[str] = []
    try:
        for _ in range(200):  # the process writes a line at least when it is ready, or ends
            line = process.stdout.readline()
            seen.append(line)
            if "Running on" in line or (not line and process.poll() is not None):
                break
    finally:
        process.terminate()
        process.wait(WAIT)
        process.stdout.close()
    assert any("Running on" in line for line in seen), "".join(seen)
    return seen


def test_flask_run_says_the_derived_connection_limit_once_though_nothing_configured_logging() -> None:
    seen = flask_run_log_until_ready((300, 700))
    expected = limits.connections_for(700, MAX_PENDING_REQUESTS)
    for said in ("raised the file-descriptor limit (RLIMIT_NOFILE) from 300 to its hard limit 700",
                 f"accepting up to {expected} WebSocket connections: RUSTY_WS_MAX_CONNECTIONS unset"):
        lines = [line for line in seen if said in line]
        assert len(lines) == 1, "".join(seen)
        assert lines[0].startswith("[") and "] INFO in limits: " in lines[0]  # Flask's default_handler's format


def test_where_logging_is_configured_the_derived_limit_is_logged_once_in_its_format() -> None:
    with HubProcess(nofile=(300, 700)) as hub:
        hub.wait_for_line("rusty_ws hub on")
        lines = [line for line in hub.lines if "accepting up to" in line]
    assert len(lines) == 1 and LOG_LINE.match(lines[0].rstrip("\n")).group(1, 2) == ("INFO", "rusty_ws.server")


# --------------------------------------------------------------------------- the log of rusty-ws serve

#: ``2026-12-01 10:25:56 INFO rusty_ws.server: ...``: a timestamp, the level as a word, the logger.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR|CRITICAL) ([\w.]+): (.+)$")


def parsed(log: str) -> list[tuple[str, str, str]]:
    """Every line of ``log`` as (level, logger, message); fails on a line in another format."""
    lines = []
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        assert match, f"a line in another format: {line!r}"
        lines.append(match.groups())
    return lines


def test_serve_logs_in_one_format_with_the_page_url_and_no_internals() -> None:
    with HubProcess() as hub:
        hub.wait_for_line("the hub's page")
        log = parsed(hub.log)
    messages = [message for _, _, message in log]
    assert f"rusty_ws hub on ws://127.0.0.1:{hub.port}/ws" in messages
    assert f"the hub's page: open http://127.0.0.1:{hub.port}/ in a browser" in messages
    assert {level for level, _, _ in log} <= {"INFO", "WARNING"}  # DEBUG is off by default
    assert not any(word in message for message in messages for word in ("froze", "GIL"))
    # websockets' debug prefixes (> < = % - !) are for DEBUG lines only
    assert not [message for message in messages if message[:2] in ("! ", "= ", "- ", "> ", "< ", "% ")]
    assert {name for _, name, _ in log} <= {"rusty_ws.server", "werkzeug"}


def test_polling_and_the_pages_modules_leave_no_access_lines_but_errors_and_other_requests_do() -> None:
    with HubProcess() as hub:
        for _ in range(3):
            assert http("GET", hub.http_url + "/healthz")[0] == 200
        for module in ("page.js", "rusty_ws.js", "style.css"):
            assert http("GET", f"{hub.http_url}/rusty_ws/{module}")[0] == 200
        assert http("GET", hub.http_url + "/rusty_ws/missing.js")[0] == 404
        assert http("GET", hub.http_url + "/")[0] == 200
        hub.wait_for_line('"GET / HTTP/1.1" 200')
        access = [message for _, name, message in parsed(hub.log) if name == "werkzeug"]
    assert access == ['127.0.0.1 "GET /rusty_ws/missing.js HTTP/1.1" 404 -', '127.0.0.1 "GET / HTTP/1.1" 200 -']


def test_under_debug_the_polling_shows_and_so_do_the_internals() -> None:
    with HubProcess(args=("--log-level", "debug")) as hub:
        assert http("GET", hub.http_url + "/healthz")[0] == 200
        line = hub.wait_for_line('"GET /healthz HTTP/1.1" 200')
        assert LOG_LINE.match(line.rstrip("\n")).group(1, 2) == ("DEBUG", "werkzeug")
        assert " DEBUG rusty_ws.server: = froze " in hub.wait_for_line("start-up objects")


def test_connection_lines_say_who_from_where_and_how_it_ended() -> None:
    with HubProcess() as hub:
        token = http("POST", hub.http_url + "/auth/token", {"username": "testuser", "password": "password"})[2]["token"]
        with Client(f"ws://127.0.0.1:{hub.port}/ws?token={token}") as alice:
            alice.command(encode_register_name("Alice"))
            alice.ws.close(status=1001, reason=b"off to lunch")
        line = hub.wait_for_line("conn-1 disconnected")
        assert re.search(r"INFO rusty_ws.server: conn-1 disconnected after \d+\.\ds: 'Alice' \(user 'testuser'\) "
                         r"in session 'session-testuser' from 127\.0\.0\.1; closed by the client with 1001 "
                         r"'off to lunch'$", line.rstrip("\n")), line
        assert ("conn-1 connected from 127.0.0.1 as user 'testuser' in session 'session-testuser'"
                in hub.wait_for_line("conn-1 connected"))

        dropped = Client(f"ws://127.0.0.1:{hub.port}/ws")
        dropped.command(encode_register_session("session-B"))
        dropped.ws.sock.close()  # no close frame: EOF
        assert hub.wait_for_line("conn-2 disconnected").rstrip("\n").endswith(
            "unnamed (anonymous) in session 'session-B' from 127.0.0.1; EOF without a close frame")

        with Client(f"ws://127.0.0.1:{hub.port}/ws") as bob:
            bob.command(encode_register_name("Bob"))
            hub.process.send_signal(signal.SIGTERM)
            assert bob.recv_close() == (4200, "server restarting")
        assert hub.process.wait(WAIT) == 0
        assert hub.wait_for_line("conn-3 disconnected").rstrip("\n").endswith(
            "'Bob' (anonymous) in session 'default' from 127.0.0.1; closed by the hub with 4200 server restarting")
        assert "SIGTERM: closing connections and stopping" in hub.log
    assert token not in hub.log and "token=[redacted]" not in hub.log  # the WebSocket's access line is at DEBUG
    parsed(hub.log)


def test_a_token_in_an_access_line_is_masked() -> None:
    with HubProcess(args=("--log-level", "debug")) as hub:
        token = http("POST", hub.http_url + "/auth/token", {"username": "testuser", "password": "password"})[2]["token"]
        with Client(f"ws://127.0.0.1:{hub.port}/ws?token={token}") as client:
            client.sync()
        assert http("GET", f"{hub.http_url}/nowhere?token={token}")[0] == 404  # an error: at INFO
        hub.wait_for_line('"GET /ws?token=[redacted] HTTP/1.1" 101')
        assert 'INFO werkzeug: 127.0.0.1 "GET /nowhere?token=[redacted] HTTP/1.1" 404' in hub.wait_for_line("/nowhere")
    assert token not in hub.log


#: What the serve entry (``rusty-ws serve``, ``flask --app rusty_ws run``) must not load before its first request
#: with no broker URL set: the Redis client and its parser, the Redis broker and cluster modules, and the client
#: package (docs/performance.md, "Start-up, session 15").
NOT_AT_START = ("redis", "hiredis", "rusty_ws.brokers.redis", "rusty_ws.client")  # brokers.redis*: the cluster too


def test_the_serve_entry_with_no_broker_loads_no_redis_and_no_client() -> None:
    code = ("import sys\n"
            "import rusty_ws.cli\n"
            "import rusty_ws.server.serve\n"
            "from rusty_ws.server.app import create_app\n"
            "from rusty_ws.server.hub_server import make_server\n"
            "app = create_app()\n"
            "make_server(app, '127.0.0.1', 0).server_close()\n"
            f"print(sorted(name for name in sys.modules if name.startswith({NOT_AT_START!r})))\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("RUSTY_WS_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(env, PYTHONPATH=ROOT, JWT_SECRET_KEY=SECRET),
                          capture_output=True, text=True, timeout=5 * WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_the_hubs_commands_are_found_without_flasks_scan_for_plugin_commands() -> None:
    """``rusty-ws serve`` skips the ``flask.commands`` entry points (every distribution's metadata); others do not."""
    code = ("import importlib.metadata, click\n"
            "scans = []\n"
            "scan = importlib.metadata.entry_points\n"
            "importlib.metadata.entry_points = lambda **kw: scans.append(kw) or scan(**kw)\n"
            "from rusty_ws.cli import cli, group\n"
            "ctx = click.Context(cli)\n"
            "found = [cli.get_command(ctx, name) is group.commands[name] for name in ('serve', 'token', 'hash-password')]\n"
            "print(found, scans)\n"
            "print(cli.get_command(ctx, 'routes').name, scans)\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                          capture_output=True, text=True, timeout=5 * WAIT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[True, True, True] []", "routes [{'group': 'flask.commands'}]"]
