"""First-frame ``auth:`` from Chromium: the page's login, and raw sockets from the page's context (issue 13).

Against a hub with ``require_auth=True``: a connection that does not send a valid
``auth:{token}`` first is closed with 4001, so a page that works there used first-frame
auth. Every WebSocket URL and every request the page makes is recorded: no token in any.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import BrowserContext, WebSocket, expect

from browser_support import HubPage
from support import WAIT, RunningServer, running_server


@pytest.fixture
def require_auth() -> Iterator[RunningServer]:
    with running_server(require_auth=True) as hub:
        yield hub


def test_the_page_logs_in_with_first_frame_auth_and_no_token_in_any_url(
        require_auth: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, require_auth.http_url + "/")
    sockets: list[tuple[str, list[str]]] = []
    requests: list[str] = []

    def opened(ws: WebSocket) -> None:
        sent: list[str] = []
        sockets.append((ws.url, sent))
        ws.on("framesent", lambda payload: sent.append(payload if isinstance(payload, str) else payload.decode()))

    page.page.on("websocket", opened)
    page.page.on("request", lambda request: requests.append(request.url))
    page.connect("Client1", "", username="testuser", password="password")
    expect(page.events.last).to_contain_text("connected as Client1 in session-testuser (logged in)")
    page.subscribe("Signed")
    page.publish("Signed", "first-frame auth")
    page.expect_payload("first-frame auth")
    expect(page.messages.first.locator(".publisher")).to_have_text("Client1 (testuser)")

    [(url, sent)] = sockets
    assert url == require_auth.ws_url, url
    assert sent[0].startswith("auth:eyJ"), sent[:2]
    assert sent[1:3] == ["register-name:Client1", "register-session:session-testuser"], sent[:4]
    assert requests and not [r for r in requests if "token=" in r or "eyJ" in r], requests


def test_a_raw_auth_frame_from_the_page_context(require_auth: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, require_auth.http_url + "/")
    attempt = """async ([url, token, timeout]) => new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        const frames = [];
        const timer = setTimeout(() => reject(new Error("no close in time")), timeout);
        ws.onopen = () => { ws.send(`auth:${token}`); ws.send("ping"); };
        ws.onmessage = (event) => {
          frames.push(event.data);
          if (event.data === "pong") ws.close(1000);
        };
        ws.onclose = (event) => { clearTimeout(timer); resolve({ frames, code: event.code }); };
    })"""
    bad = page.page.evaluate(attempt, [require_auth.ws_url, "not-a-token", WAIT * 1000])
    assert bad["code"] == 4001, bad
    assert len(bad["frames"]) == 1 and bad["frames"][0].startswith("error:"), bad
    assert '"code":"token_invalid"' in bad["frames"][0].replace(" ", ""), bad

    good = page.page.evaluate(attempt, [require_auth.ws_url, require_auth.token("testuser"), WAIT * 1000])
    assert good["code"] == 1000, good
    assert good["frames"][0].startswith("authenticated:") and '"sub":"testuser"' in good["frames"][0], good
    assert good["frames"][1:] == ["pong"], good
