"""The seed's JavaScript, unmodified, in Chromium, on a page from another origin (the seed's port 8080).

The code blocks are read from the seed's own text (a copy kept in ``seed/``, checked
against ``shared/seed`` when that is beside the checkout) and run as they are.
Their fixed URLs (``localhost:8080`` for the page, ``localhost:8081`` for the hub)
reach servers on free loopback ports through Chromium's ``--host-resolver-rules``,
so nothing in the code changes and nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, Playwright

from browser_support import PAGE_WAIT, ROOT, PageProblems, launch_chromium, static_server
from rusty_ws import WsClient
from support import WAIT, deliveries, running_server

SEED_COPY = Path(__file__).parent / "seed" / "rusty_websocket.md"
SHARED_SEEDS = [ROOT.parent / "shared" / "seed" / "rusty_websocket.md", Path("/work/shared/seed/rusty_websocket.md")]
#: The seed's pages import "./jwt_utils.js"; on the 8080 site that file hands over to the hub's module.
SITE_JWT_UTILS = 'export * from "http://localhost:8081/rusty_ws/jwt_utils.js";\n'
SITE_INDEX = ('<!doctype html>\n<meta charset="utf-8">\n<title>seed page</title>\n<link rel="icon" href="data:,">\n'
              '<script type="module" src="{script}"></script>\n')


def javascript_blocks(section: str) -> list[str]:
    """The ```javascript blocks of one ``## section`` of the seed, exactly as written."""
    text = SEED_COPY.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```javascript\n(.*?)```", text[start:end if end != -1 else None], re.S)


def seed_import_line() -> str:
    """The seed's own import of jwt_utils.js (the Complete Example uses it without repeating it)."""
    line = javascript_blocks("JavaScript Client Usage")[0].splitlines()[0]
    assert line == "import { jwtManager, createAuthenticatedWebSocket } from './jwt_utils.js';"
    return line


@contextlib.contextmanager
def seed_site(tmp_path: Path, script: str, hub_port: int, playwright: Playwright,
              problems: PageProblems) -> Iterator[Page]:
    """A page at http://localhost:8080/ running ``script`` as a module, with the hub at localhost:8081."""
    (tmp_path / "jwt_utils.js").write_text(SITE_JWT_UTILS)
    (tmp_path / "seed.js").write_text(script)
    (tmp_path / "index.html").write_text(SITE_INDEX.format(script="seed.js"))
    (tmp_path / "blank.html").write_text(SITE_INDEX.format(script="jwt_utils.js"))
    with static_server(tmp_path) as site_port:
        browser = launch_chromium(playwright, {
            "localhost:8081": hub_port,
            "localhost:8080": site_port,
            "localhost:8079": site_port,  # the same site, on an origin the hub may not list
        })
        try:
            context = browser.new_context()
            context.set_default_timeout(PAGE_WAIT)
            problems.watch_context(context)
            yield context.new_page()
            context.close()
        finally:
            browser.close()
    unexpected = problems.unexpected()
    assert not unexpected, "the pages reported errors:\n" + "\n".join(unexpected)


def test_the_seed_copy_is_the_seed() -> None:
    shared = [path for path in SHARED_SEEDS if path.exists()]
    if not shared:
        pytest.skip("shared/seed is not beside this checkout; the copy in tests/browser/seed is used")
    assert SEED_COPY.read_text(encoding="utf-8") == shared[0].read_text(encoding="utf-8")


def test_complete_javascript_example_runs_unmodified(playwright: Playwright, tmp_path: Path) -> None:
    [example] = javascript_blocks("Complete JavaScript Example")
    # The hub lists only the seed's page origin, as a real deployment would.
    with running_server(cors_origins=["http://localhost:8080"]) as hub, \
            WsClient.connect_with_session("Watcher", "session-A", hub.ws_url, timeout=WAIT) as watcher:
        received = deliveries(watcher, "NetworkConnectedEvent")
        watcher.subscribe("Watcher", "NetworkConnectedEvent")
        script = seed_import_line() + "\n" + example
        with seed_site(tmp_path, script, hub.port, playwright, PageProblems()) as page:
            logs: list[str] = []
            page.on("console", lambda message: logs.append(message.text) if message.type == "log" else None)
            with page.expect_console_message(lambda m: "Received message" in m.text, timeout=PAGE_WAIT) as seen:
                page.goto("http://localhost:8080/index.html")
            assert seen.value.text == ("[Client1:session-A] Received message: "
                                       "Topic=NetworkConnectedEvent, Payload=Hello from client!")
            assert logs[0] == "Client1: Authentication successful with session session-A"
            assert page.evaluate("location.origin") == "http://localhost:8080"
        delivery = received.get(timeout=WAIT)
        assert (delivery.publisher_name, delivery.user, delivery.payload) == ("Client1", "testuser", "Hello from client!")
        assert delivery.session_id == "session-A"


def test_javascript_client_usage_snippets_run_unmodified(playwright: Playwright, tmp_path: Path) -> None:
    # The section's four blocks, one after the other, make one program.
    program = "\n".join(javascript_blocks("JavaScript Client Usage"))
    with running_server() as hub, \
            WsClient.connect_with_session("PyClient", "user-session-456", hub.ws_url, timeout=WAIT) as python:
        received = deliveries(python, "NetworkConnectedEvent")
        python.subscribe("PyClient", "NetworkConnectedEvent")
        with seed_site(tmp_path, program, hub.port, playwright, PageProblems()) as page:
            logs: list[str] = []
            page.on("console", lambda message: logs.append(message.text) if message.type == "log" else None)
            page.goto("http://localhost:8080/index.html")
            delivery = received.get(timeout=WAIT)  # the snippet's publish, sent after its subscribe
            assert (delivery.publisher_name, delivery.payload) == ("Client1", "Network connected successfully")
            assert delivery.user == "testuser"
            with page.expect_console_message(lambda m: "Message details" in m.text, timeout=PAGE_WAIT) as seen:
                python.publish("PyClient", "DetectCustomerEvent", "customer at the door")
            assert seen.value.text == "Message details: Publisher=PyClient, Session=user-session-456"
            assert "Received message: Topic=DetectCustomerEvent, Payload=customer at the door" in logs
            assert logs[:2] == ["Client is authenticated", "Have valid token"]


PROBE = """async () => {
    const fetched = await fetch("http://localhost:8081/auth/token", {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({username: "testuser", password: "password"}),
    }).then((r) => (r.ok ? "ok" : `status ${r.status}`), () => "blocked");
    const socket = await new Promise((resolve) => {
        const ws = new WebSocket("ws://localhost:8081/ws");
        ws.onopen = () => { ws.close(); resolve("open"); };
        ws.onclose = (event) => resolve(`closed ${event.code}`);
    });
    const module = await import("http://localhost:8081/rusty_ws/rusty_ws.js").then(() => "imported", () => "blocked");
    return {fetched, socket, module};
}"""


def test_only_listed_origins_may_use_the_hub(playwright: Playwright, tmp_path: Path) -> None:
    problems = PageProblems()
    problems.allow("blocked by CORS policy", "net::ERR_FAILED", "WebSocket connection to", "status of 403")
    with running_server(cors_origins=["http://localhost:8080"]) as hub:
        with seed_site(tmp_path, "", hub.port, playwright, problems) as page:
            page.goto("http://localhost:8080/blank.html")
            assert page.evaluate(PROBE) == {"fetched": "ok", "socket": "open", "module": "imported"}
            page.goto("http://localhost:8079/blank.html")
            assert page.evaluate(PROBE) == {"fetched": "blocked", "socket": "closed 1006", "module": "blocked"}
