"""Every shell and Python example of README.md and docs/*.md, run on loopback.

Each fenced ``sh``, ``console`` or ``python`` block is one test, named by its page
and line. What a block needs beyond its own text is declared in ``EXAMPLES``
below, keyed by page and first line, each with the reason; a block not listed
there runs as it is written. So a new example runs by default, and one that
cannot run here (a whole block, or one command of it) is skipped only by an
entry that says why, and shows in pytest's summary as a skip with that reason.

- **Python** blocks run in a subprocess of this venv, in a temporary folder
  (holding embedding.md's ``shop`` package and a users file), against a hub on
  a free port: every ``8081`` in the block becomes that port.
- **Shell** blocks run command by command under bash, with this venv's ``bin``
  first on ``PATH`` (the README's "activate the venv"). A ``console`` block's
  commands are its ``$`` lines; the lines after a command are its documented
  output, which must be checked: JSON is compared key by key, anything else
  needs an ``Output`` pattern in ``EXAMPLES``. ``export`` lines carry over to
  the block's later commands.
- **Servers** (``rusty-ws serve``, ``flask run``, ``gunicorn``, ``serve.sh``)
  start on a free port (their ``8081``/``8000``, or an added ``--port``), must
  answer ``/healthz`` under the app's prefix, and must stop on SIGTERM
  (``rusty-ws serve`` with status 0, as configuration.md says).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest

from docs_support import PAGES, ROOT, Block, blocks
from redis_support import redis_server
from rusty_ws import PubSub
from rusty_ws.auth import hash_password
from support import WAIT, RunningServer, ServerProcess, free_port, login

LANGUAGES = {"sh", "console", "python"}
VENV_BIN = str(Path(sys.executable).parent)
RUN_TIMEOUT = WAIT * 20
SERVER = re.compile(r"\b(rusty-ws|flask)\b.*\b(serve|run)\b|\bgunicorn\b|scripts/serve\.sh")


@dataclass(frozen=True)
class Skip:
    """The block cannot run here; ``reason`` says why and what covers it instead."""

    reason: str


@dataclass(frozen=True)
class Output:
    """A pattern (``re.search``, multiline) the command's standard output must match."""

    pattern: str


@dataclass(frozen=True)
class Server:
    """How to check a server command once it answers."""

    prefix: str = ""
    host: str | None = None                     #: the Host header of the check
    healthz: dict[str, Any] = field(default_factory=lambda: {"status": "ok"})   #: items the answer holds
    log: str | None = None                      #: text its log must show ({port} is its port)
    returncode: int | None = 0                  #: after SIGTERM; None: not checked


@dataclass(frozen=True)
class Run:
    """What a block needs to run here, and what to check; ``why`` explains any change to it."""

    why: str = ""
    replace: tuple[tuple[str, str], ...] = ()   #: (old, new), each old must be in the block
    prelude: str = ""                            #: Python run before the block
    epilogue: str = ""                           #: Python run after it
    stdin: str | None = None
    output: str | None = None                    #: a pattern for the whole stdout
    check: Callable[[Block, str], None] | None = None  #: called with the block and its stdout
    commands: dict[str, Skip | Output | Server] = field(default_factory=dict)  #: per command (by prefix)
    cwd: str = "work"                            #: "work" (a temporary folder) or "checkout"
    signature: Callable[..., Any] | None = None  #: the block is this function's signature


def connected(name: str = "Client1", how: str = "connect") -> str:
    if how == "auth":
        return ("from rusty_ws import WsClient\nclient = WsClient.connect_with_auth(\"Client1\", "
                "\"ws://127.0.0.1:8081/ws\", \"http://127.0.0.1:8081/auth/token\", \"testuser\", \"password\")\n")
    return f"from rusty_ws import WsClient\nclient = WsClient.connect({name!r}, \"ws://127.0.0.1:8081/ws\")\n"


def same_keys_as_documented_output(block: Block, stdout: str) -> None:
    """The printed dict has the keys of the page's ``Output`` block that follows the example."""
    page = ROOT / block.page
    following = [other for other in blocks(page) if other.line > block.line]
    documented = ast.literal_eval(following[0].text.strip())
    printed = ast.literal_eval(stdout.strip().splitlines()[-1])
    assert list(printed) == list(documented), f"printed {list(printed)}, the page shows {list(documented)}"


def token_for_alice(block: Block, stdout: str) -> None:
    claims = jwt.decode(stdout.strip(), "change-me-to-a-long-random-string", algorithms=["HS256"])
    assert (claims["sub"], claims["sid"]) == ("alice", "session-A")


SHOP_SERVER = Server(prefix="/realtime")
NOT_PLACEHOLDER = "placeholder credentials: the test's hub is in development mode (testuser/password)"
CLIENT_FRAGMENT = "a fragment that goes on from a connected client: the prelude connects one, the epilogue closes it"

#: What each block needs, by (page, first line). Blocks not listed run as written.
EXAMPLES: dict[tuple[str, str], Skip | Run] = {
    # ------------------------------------------------------------------ README.md
    ("README.md", "scripts/serve.sh   # sets up .venv and runs the hub on ws://127.0.0.1:8081/ws"): Run(
        cwd="checkout",
        commands={"scripts/test.sh": Skip("the command that runs this very test suite (.ci/run runs it)")}),
    ("README.md", "python3 -m venv .venv"): Skip(
        "makes or changes the checkout's .venv, which runs these tests; tests/test_package.py builds the "
        "same source and installs it into a fresh venv"),
    ("README.md", ".venv/bin/pip install build"): Skip(
        "tests/test_package.py runs python -m build on a copy of the checkout and installs the wheel into a "
        "fresh venv outside it"),
    ("README.md", "from flask import Flask"): Run(
        why="the last line is 'anywhere in server code': it runs after the factory made the app",
        replace=(("# anywhere in server code:", "app = create_app()"),)),
    ("README.md", "from rusty_ws import WsClient"): Run(output=r"^Network connected$"),
    # ------------------------------------------------------------------ configuration.md
    ("docs/configuration.md", "import os"): Run(
        why="goes on from an app and a PubSub of the embedding page",
        prelude="from flask import Flask\nfrom rusty_ws import PubSub\napp = Flask(__name__)\npubsub = PubSub()\n",
        epilogue="pubsub.shutdown(app)\n"),
    ("docs/configuration.md", "$ rusty-ws hash-password"): Run(
        why="the password is typed twice", stdin="wonderland\nwonderland\n",
        commands={"rusty-ws hash-password": Output(r"^scrypt:32768:8:1\$\S+\$[0-9a-f]{128}$")}),
    ("docs/configuration.md", "$ rusty-ws hash-password --password wonderland"): Run(
        commands={"rusty-ws hash-password": Output(r"^scrypt:32768:8:1\$\S+\$[0-9a-f]{128}$")}),
    ("docs/configuration.md", "$ RUSTY_WS_USERS_FILE=/etc/rusty_ws/users.json rusty-ws serve"): Run(
        why="the users file is one the test wrote", replace=(("/etc/rusty_ws/users.json", "users.json"),)),
    ("docs/configuration.md", "$ python3 -c \"import secrets; print(secrets.token_urlsafe(48))\""): Run(
        commands={"python3 -c": Output(r"^[A-Za-z0-9_-]{64}$")}),
    ("docs/configuration.md", "$ rusty-ws serve --port 8081                  # the stand-alone hub"): Run(
        commands={"flask --app shop": SHOP_SERVER}),
    ("docs/configuration.md", "$ JWT_SECRET_KEY=change-me-to-a-long-random-string rusty-ws token alice --session session-A"): Run(
        check=token_for_alice),
    ("docs/configuration.md", "$ export JWT_SECRET_KEY=\"$(cat /etc/rusty_ws/secret)\""): Run(
        why="the secret and users files are ones the test wrote",
        replace=(("/etc/rusty_ws/secret", "secret"), ("/etc/rusty_ws/users.json", "users.json")),
        commands={"rusty-ws serve": Server(host="hub.example.com")}),
    # ------------------------------------------------------------------ deployment.md
    ("docs/deployment.md", "python3 -m venv .venv"): Skip(
        "tests/test_package.py builds the wheel the same way (python -m build) and installs it into a fresh venv"),
    ("docs/deployment.md", "useradd --system --no-create-home --shell /usr/sbin/nologin rusty_ws"): Skip(
        "changes the machine (a system user, /opt/rusty_ws); tests/test_deployment.py checks these lines against "
        "the unit, and tests/test_package.py installs the wheel into a fresh venv"),
    ("docs/deployment.md", "install -d -m 750 -o root -g rusty_ws /etc/rusty_ws"): Skip(
        "writes /etc/rusty_ws as root; its two printing commands are configuration.md's, which run here"),
    ("docs/deployment.md", "systemctl daemon-reload"): Skip(
        "needs systemd running as PID 1; tests/test_deployment.py runs systemd-analyze verify on the unit and a "
        "hub with its settings behind its nginx configuration"),
    # ------------------------------------------------------------------ embedding.md
    ("docs/embedding.md", "# shop/__init__.py"): Run(
        why="a module: the epilogue makes the app and places an order, which publishes",
        epilogue="assert create_app().test_client().post('/orders/42').get_json() == {'placed': 42}\n"),
    ("docs/embedding.md", "app = Flask(__name__)"): Run(
        why="goes on from the imports of the example above it",
        prelude="from flask import Flask\nfrom rusty_ws import PubSub\n"),
    ("docs/embedding.md", "pubsub.publish(session_id, topic, payload, *, publisher_name=\"server\", timestamp=None, app=None)"):
        Run(signature=PubSub.publish),
    ("docs/embedding.md", "import threading"): Run(
        why="goes on from a PubSub set up on one app",
        prelude="from flask import Flask\nfrom rusty_ws import PubSub\npubsub = PubSub(Flask(__name__))\n"),
    ("docs/embedding.md", "@pubsub.session_policy"): Run(
        why="goes on from a PubSub", prelude="from rusty_ws import PubSub\npubsub = PubSub()\n"),
    ("docs/embedding.md", "from rusty_ws.server.access import TopicAction"): Run(
        why="goes on from a PubSub", prelude="from rusty_ws import PubSub\npubsub = PubSub()\n"),
    ("docs/embedding.md", "@pubsub.check_credentials"): Run(
        why="goes on from a PubSub", prelude="from rusty_ws import PubSub\npubsub = PubSub()\n"),
    ("docs/embedding.md", "@app.post(\"/my-token\")"): Run(
        why="login_required and current_user are the app's own (Flask-Login's, say): stand-ins here",
        prelude=textwrap.dedent("""\
            from types import SimpleNamespace
            from flask import Flask
            from rusty_ws import PubSub
            app = Flask(__name__)
            app.config["RUSTY_WS_JWT_SECRET_KEY"] = "change-me-to-a-long-random-string"
            pubsub = PubSub(app)
            login_required = lambda view: view
            current_user = SimpleNamespace(name="alice")
            """),
        epilogue=textwrap.dedent("""\
            reply = app.test_client().post("/my-token").get_json()
            assert reply["token"] and reply["expires_in"] == 3600, reply
            """)),
    ("docs/embedding.md", "pubsub.shutdown(app=None, timeout=5.0)"): Run(signature=PubSub.shutdown),
    ("docs/embedding.md", "$ flask --app shop run --port 8000"): Run(
        commands={"flask": Server(prefix="/realtime", returncode=None)}),  # Flask's development server
    ("docs/embedding.md", "$ flask --app shop rusty-ws serve --port 8000"): Run(
        commands={"flask": Server(prefix="/realtime", log=":{port}/realtime/ws")}),
    ("docs/embedding.md", "$ gunicorn -w 1 --threads 100 -b 127.0.0.1:8000 'shop:create_app()'"): Run(
        commands={"gunicorn": SHOP_SERVER}),
    # ------------------------------------------------------------------ protocol.md
    ("docs/protocol.md", "import json"): Run(check=same_keys_as_documented_output),
    # ------------------------------------------------------------------ python-client.md
    ("docs/python-client.md", "from rusty_ws import WsClient"): Run(
        why="the page says importing it does not import Flask: the epilogue checks",
        epilogue="import sys\nassert 'flask' not in sys.modules, 'WsClient imported Flask'\n"),
    ("docs/python-client.md", "# Connect with default session ID (derived from client name): session-Client1"): Run(
        why=NOT_PLACEHOLDER, replace=(('"username",', '"testuser",'),),
        prelude="from rusty_ws import WsClient\n", epilogue="client.close()\n"),
    ("docs/python-client.md", "# Subscribe to topics within the client's session"): Run(
        why=CLIENT_FRAGMENT, prelude=connected(), epilogue="client.close()\n"),
    ("docs/python-client.md", "from datetime import datetime, timezone"): Run(
        why=CLIENT_FRAGMENT, prelude=connected(), epilogue="client.close()\n"),
    ("docs/python-client.md", "if client.is_authenticated():"): Run(
        why=CLIENT_FRAGMENT + " (logged in)", prelude=connected(how="auth"), epilogue="client.close()\n",
        output=r"^Client is authenticated via JWT\nCurrent JWT token: eyJ\S+\nToken is still valid$"),
    ("docs/python-client.md", "import queue"): Run(output=r"^Hello from Rust client$"),
    ("docs/python-client.md", "client.on_connect = lambda c: print(\"connected, subscriptions restored\")"): Run(
        why=CLIENT_FRAGMENT, prelude=connected(), epilogue="client.close()\n"),
    ("docs/python-client.md", "from rusty_ws import RecoveryFailure"): Run(
        why=CLIENT_FRAGMENT, prelude=connected(), epilogue="client.close()\n"),
    ("docs/python-client.md", "ack = client.publish(\"Client1\", \"NetworkConnectedEvent\", \"Network connected\")"): Run(
        why=CLIENT_FRAGMENT, prelude=connected(), epilogue="client.close()\n", output=r"^\S+ 1 \S+$"),
    ("docs/python-client.md", "client.publish(\"Kiosk\", \"RegistrationCompleteEvent\", {\"user\": 7}, publish_id=\"registration-7\")"):
        Run(why=CLIENT_FRAGMENT, prelude=connected("Kiosk"), epilogue="client.close()\n"),
    ("docs/python-client.md", "futures = [client.publish_async(\"Loader\", \"Readings\", reading) for reading in readings]"):
        Run(why=CLIENT_FRAGMENT + ", with some readings", prelude=connected("Loader") + "readings = [20.5, 21.0, 21.5]\n",
            epilogue="client.close()\n", output=r"^last offset 3$"),
    ("docs/python-client.md", "reply = client.history(\"DetectCustomerEvent\", limit=10)"): Run(
        why=CLIENT_FRAGMENT + ", after one publish to the stream",
        prelude=connected() + "client.publish('Client1', 'DetectCustomerEvent', 'customer at the door')\n",
        epilogue="client.close()\n", output=r"^1 customer at the door\nstream is at 1 \S+$"),
    # ------------------------------------------------------------------ scaling.md
    ("docs/scaling.md", "RUSTY_WS_BROKER_URL=redis://redis.internal:6379/0 \\"): Run(
        why="redis.internal is a placeholder: a redis-server of the test's own stands in; the test binds "
            "loopback only, not 0.0.0.0",
        replace=(("redis://redis.internal:6379/0", "{redis}"), ("--bind 0.0.0.0:8081", "--bind 127.0.0.1:8081")),
        commands={"RUSTY_WS_BROKER_URL": Server(healthz={"status": "ok", "broker": {"name": "redis", "connected": True}})}),
}

ALL = [block for page in PAGES for block in blocks(page) if block.language in LANGUAGES]


def key(block: Block) -> tuple[str, str]:
    return block.page, block.first_line


def test_every_example_has_one_key_and_every_entry_an_example() -> None:
    keys = [key(block) for block in ALL]
    assert len(keys) == len(set(keys)), "two examples of one page start with the same line"
    assert not set(EXAMPLES) - set(keys), f"entries for examples the docs no longer have: {set(EXAMPLES) - set(keys)}"
    for spec in EXAMPLES.values():
        if isinstance(spec, Run) and (spec.replace or spec.prelude or spec.epilogue):
            assert spec.why, f"{spec}: say why the example needs it"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The examples' working folder: embedding.md's shop package, a users file, a secret."""
    [shop] = [block for block in ALL if key(block) == ("docs/embedding.md", "# shop/__init__.py")]
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text(shop.text)
    (tmp_path / "users.json").write_text(json.dumps({"alice": hash_password("wonderland")}))
    (tmp_path / "secret").write_text("x" * 48 + "\n")
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    env.update(PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), VIRTUAL_ENV=str(Path(VENV_BIN).parent),
               PYTHONUNBUFFERED="1", **extra)
    return env


def rewritten(block: Block, spec: Run) -> str:
    text = block.text
    for old, new in spec.replace:
        assert old in text, f"{block}: the example no longer has {old!r}"
        text = text.replace(old, new)
    return text


#: Commands that a block's entry skips while the rest of the block runs: reported as skips of their own.
SKIPPED_COMMANDS = [(block, command, skip.reason) for block in ALL
                    for spec in [EXAMPLES.get(key(block))] if isinstance(spec, Run)
                    for command, skip in spec.commands.items() if isinstance(skip, Skip)]


@pytest.mark.parametrize("block, command, reason", SKIPPED_COMMANDS,
                         ids=[f"{block.page}:{block.line}:{command}" for block, command, _ in SKIPPED_COMMANDS])
def test_skipped_command(block: Block, command: str, reason: str) -> None:
    assert any(without_comment(c.text).strip().startswith(command) for c in commands_of(block, block.text)), \
        f"{block}: no command {command!r} to skip"
    pytest.skip(reason)


@pytest.mark.parametrize("block", ALL, ids=[f"{block.page}:{block.line}" for block in ALL])
def test_example(block: Block, server: RunningServer, work: Path) -> None:
    spec = EXAMPLES.get(key(block), Run())
    if isinstance(spec, Skip):
        pytest.skip(spec.reason)
    if spec.signature is not None:
        check_signature(block.text, spec.signature)
    elif block.language == "python":
        run_python(block, spec, server, work)
    else:
        run_shell(block, spec, server, work)


# --------------------------------------------------------------------------- Python


def check_signature(text: str, function: Callable[..., Any]) -> None:
    """The block ``name(params)`` lists ``function``'s parameters, kinds and defaults (``self`` aside)."""
    documented = ast.parse(f"def f({text.strip().partition('(')[2].rpartition(')')[0]}): pass").body[0].args
    real = [p for p in inspect.signature(function).parameters.values() if p.name != "self"]
    shown = [(a.arg, "positional") for a in documented.args] + [(a.arg, "keyword") for a in documented.kwonlyargs]
    kinds = {inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional", inspect.Parameter.KEYWORD_ONLY: "keyword"}
    assert shown == [(p.name, kinds[p.kind]) for p in real]
    defaults = [ast.literal_eval(d) for d in documented.defaults] + \
        [ast.literal_eval(d) for d in documented.kw_defaults if d is not None]
    assert defaults == [p.default for p in real if p.default is not inspect.Parameter.empty]


def run_python(block: Block, spec: Run, server: RunningServer, work: Path) -> None:
    code = spec.prelude + rewritten(block, spec) + "\n" + spec.epilogue
    code = re.sub(r"\b8081\b", str(server.port), code)
    (work / "example.py").write_text(code)
    result = subprocess.run([sys.executable, "example.py"], cwd=work, env=environment(), capture_output=True,
                            text=True, timeout=RUN_TIMEOUT, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{block} failed:\n{result.stdout}\n{result.stderr}"
    check_stdout(block, spec.output, result.stdout)
    if spec.check:
        spec.check(block, result.stdout)


def check_stdout(block: Block, pattern: str | None, stdout: str) -> None:
    if pattern is not None:
        assert re.search(pattern, stdout.strip(), re.M), f"{block}: output does not match {pattern!r}:\n{stdout}"


# --------------------------------------------------------------------------- shell


def contains(answer: Any, expected: Any) -> bool:
    """``expected``'s items are in ``answer``, nested dicts compared the same way."""
    if isinstance(expected, dict):
        return isinstance(answer, dict) and all(k in answer and contains(answer[k], v) for k, v in expected.items())
    return answer == expected


@dataclass
class Command:
    text: str
    output: list[str]


def commands_of(block: Block, text: str) -> list[Command]:
    """``$`` lines (console) or every line (sh), continuation lines joined, documented output attached."""
    found: list[Command] = []
    continuing = False
    for line in text.splitlines():
        if continuing:
            found[-1].text += "\n" + line
        elif block.language == "console" and not line.startswith("$ "):
            if found and line.strip():
                found[-1].output.append(line)
            continue
        elif line.strip() and not line.lstrip().startswith("#"):
            found.append(Command(line[2:] if block.language == "console" else line, []))
        else:
            continue
        continuing = found[-1].text.endswith("\\")
    return found


def without_comment(command: str) -> str:
    return "\n".join(re.sub(r"\s+#\s.*$", "", line) for line in command.splitlines())


def spec_for(spec: Run, command: str) -> Skip | Output | Server | None:
    matches = [value for prefix, value in spec.commands.items() if command.startswith(prefix)]
    assert len(matches) <= 1, command
    return matches[0] if matches else None


def run_shell(block: Block, spec: Run, server: RunningServer, work: Path) -> None:
    cwd = ROOT if spec.cwd == "checkout" else work
    exports: list[str] = []
    ran = 0
    for command in commands_of(block, rewritten(block, spec)):
        text = without_comment(command.text).strip()
        what = spec_for(spec, text)
        if isinstance(what, Skip):
            continue  # reported by test_skipped_command
        if text.startswith("export "):
            exports.append(text)
            continue
        if SERVER.search(text):
            if not isinstance(what, Server):
                # Flask's development server has no SIGTERM handler of its own (configuration.md: it
                # does not close with 4200 either); the others exit 0.
                what = Server(returncode=None if re.search(r"\bflask\b.*\brun\b", text) else 0)
            run_server(block, text, exports, what, cwd, work)
        else:
            run_command(block, spec, command, text, exports, what if isinstance(what, Output) else None,
                        server, cwd)
        ran += 1
    assert ran, f"{block}: no command ran"


def run_command(block: Block, spec: Run, command: Command, text: str, exports: list[str], output: Output | None,
                server: RunningServer, cwd: Path) -> None:
    text = re.sub(r"\b8081\b", str(server.port), text)
    env = environment(TOKEN=login(server)) if "$TOKEN" in text else environment()
    script = "\n".join(["set -euo pipefail", *exports, text])
    result = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=RUN_TIMEOUT, input=spec.stdin)
    assert result.returncode == 0, f"{block}: {text!r} failed:\n{result.stdout}\n{result.stderr}"
    stdout = result.stdout.strip()
    if command.output:
        documented = "\n".join(command.output)
        if output is None and spec.check is None:
            # Documented JSON: the same keys (values vary: tokens, counts).
            try:
                shown, printed = json.loads(documented), json.loads(stdout)
            except ValueError:
                raise AssertionError(f"{block}: {text!r} documents output {documented!r}: give it an Output "
                                     f"pattern in EXAMPLES (it printed {stdout!r})") from None
            assert sorted(printed) == sorted(shown), f"{block}: printed {printed}, the page shows {shown}"
    if output is not None:
        check_stdout(block, output.pattern, stdout.splitlines()[-1] if stdout else "")
    if spec.check:
        spec.check(block, stdout)


def run_server(block: Block, text: str, exports: list[str], how: Server, cwd: Path, work: Path) -> None:
    if "{redis}" in text:
        with redis_server() as redis:
            return run_server(block, text.replace("{redis}", redis.url), exports, how, cwd, work)
    port = free_port()
    if re.search(r"\b(8081|8000)\b", text):
        text = re.sub(r"\b(8081|8000)\b", str(port), text)
    else:
        text += f" --port {port}"
    # `exec` after the leading assignments, so that the signal reaches the server itself.
    assignments, rest = re.match(r"((?:[A-Za-z_][A-Za-z0-9_]*=\S*\s+(?:\\\n\s*)?)*)(.*)", text, re.S).groups()
    script = "\n".join(["set -euo pipefail", *exports, f"{assignments}exec {rest}"])
    with ServerProcess(["bash", "-c", script], port=port, cwd=str(cwd), env=environment(),
                       ready_path=how.prefix + "/healthz", ready_timeout=RUN_TIMEOUT,
                       expect_returncode=how.returncode, log_dir=str(work)) as process:
        headers = {"Host": how.host} if how.host else {}
        request = urllib.request.Request(f"{process.base}{how.prefix}/healthz", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                answer = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{block}: {text!r}: /healthz answered {exc.code}:\n{process.output()}") from None
        assert contains(answer, how.healthz), f"{block}: {text!r}: /healthz said {answer}"
        if how.log:
            assert how.log.format(port=port) in process.output(), f"{block}: {text!r}:\n{process.output()}"
