"""Starting the hub: a bad setting is one line that says what to fix, on the command line too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask

from rusty_ws import ConfigError, PubSub, create_app
from support import ROOT, SECRET, WAIT, hub_config

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
