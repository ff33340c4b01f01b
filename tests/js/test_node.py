"""The JavaScript modules under Node's test runner, against real hubs started here.

``scripts/test.sh`` runs ``npm ci`` in this folder first (it brings the ``ws``
package, the WebSocket implementation Node 20 lacks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from werkzeug.security import generate_password_hash

from rusty_ws.protocol import (
    MAX_EPOCH_LENGTH,
    MAX_NAME_LENGTH,
    MAX_OFFSET,
    MAX_PUBLISH_ID_LENGTH,
    MAX_SESSION_LENGTH,
    MAX_TOPIC_LENGTH,
    CloseCode,
    Since,
    close_policy,
    encode_history,
    encode_subscribe_json,
)
from support import WAIT, running_server

JS_DIR = Path(__file__).resolve().parent
PROTOCOL_JS = JS_DIR.parent.parent / "rusty_ws" / "static" / "protocol.js"


def node() -> str:
    found = shutil.which("node")
    assert found, "Node.js 20+ is needed for these tests (Debian: apt-get install nodejs)"
    return found


def run_node(*args: str, env: dict[str, str] | None = None, timeout: float = 60 * WAIT) -> subprocess.CompletedProcess:
    return subprocess.run([node(), *args], cwd=JS_DIR, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def test_node_test_runner_against_the_hub(tmp_path: Path) -> None:
    assert (JS_DIR / "node_modules" / "ws").is_dir(), "run scripts/test.sh: it runs `npm ci` in tests/js"
    files = sorted(path.name for path in JS_DIR.glob("*.test.mjs"))
    assert len(files) >= 3, files
    # A hub with a session policy: testuser/password may have js-mine only (in development
    # mode the demo user may have any session, so forbidden_session needs a users file).
    users = tmp_path / "users.json"
    users.write_text(json.dumps({"testuser": {
        "password_hash": generate_password_hash("password", method="pbkdf2:sha256:1000"), "sessions": ["js-mine"]}}))
    with running_server(max_subscriptions=8) as hub, running_server(jwt_expiration_seconds=4) as short, \
            running_server(users_file=str(users)) as policy, \
            running_server(require_auth=True, jwt_expiration_seconds=4) as require_auth, \
            running_server(history_size=2000) as history, running_server(history_size=0) as no_history:
        result = run_node("--test", "--test-reporter=spec", f"--test-concurrency={len(files)}", *files, env={
            "RUSTY_WS_HTTP_URL": hub.http_url,
            "RUSTY_WS_SHORT_TOKEN_HTTP_URL": short.http_url,
            "RUSTY_WS_POLICY_HTTP_URL": policy.http_url,
            "RUSTY_WS_REQUIRE_AUTH_HTTP_URL": require_auth.http_url,
            "RUSTY_WS_HISTORY_HTTP_URL": history.http_url,
            "RUSTY_WS_NO_HISTORY_HTTP_URL": no_history.http_url,
        })
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    assert "\u2139 fail 0" in result.stdout, result.stdout[-5_000:]


def test_javascript_mirrors_the_python_protocol() -> None:
    codes = sorted({*range(999, 1016), *range(2999, 3002), *range(3999, 4301), 4999, 5000, *CloseCode})
    streams = [["T", None, None, None], ["Tópico:x", "session-A", None, None],
               ["T", "s", {"offset": 41, "epoch": "3f-4"}, None], ["T", "s", {"offset": 0, "epoch": "é"}, 5],
               ["T", None, None, 1]]
    script = (
        f"import * as p from {json.dumps(PROTOCOL_JS.as_uri())};\n"
        f"const codes = {json.dumps(codes)};\n"
        f"const streams = {json.dumps(streams)};\n"
        "console.log(JSON.stringify({policies: codes.map(p.closePolicy), closeCodes: p.CloseCode,\n"
        "  limits: [p.MAX_TOPIC_LENGTH, p.MAX_SESSION_LENGTH, p.MAX_NAME_LENGTH, p.MAX_PUBLISH_ID_LENGTH,\n"
        "           p.MAX_EPOCH_LENGTH, p.MAX_OFFSET],\n"
        "  subscribes: streams.map(([t, s, since]) => p.subscribeJsonCommand(t, s, since)),\n"
        "  histories: streams.map(([t, s, since, limit]) => p.historyCommand(t, s, {since, limit}))}));\n"
    )
    result = run_node("--input-type=module", "-e", script, timeout=10 * WAIT)
    assert result.returncode == 0, result.stderr
    mirrored = json.loads(result.stdout)
    assert mirrored["policies"] == [close_policy(code).value for code in codes]
    assert mirrored["closeCodes"] == {code.name: code.value for code in CloseCode}
    assert mirrored["limits"] == [MAX_TOPIC_LENGTH, MAX_SESSION_LENGTH, MAX_NAME_LENGTH, MAX_PUBLISH_ID_LENGTH,
                                  MAX_EPOCH_LENGTH, MAX_OFFSET]
    python = [(topic, session, Since(**since) if since else None, limit) for topic, session, since, limit in streams]
    assert mirrored["subscribes"] == [encode_subscribe_json(t, s, since) for t, s, since, _ in python]
    assert mirrored["histories"] == [encode_history(t, s, limit, since) for t, s, since, limit in python]
