"""What the page tells its user: errors beside the form that caused them, what a publish reached,
and that a hub wants a login (where a browser only sees close code 1006)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import BrowserContext, Locator, expect

from browser_support import HubPage, PageProblems
from rusty_ws import WsClient
from rusty_ws.protocol import CloseCode
from rusty_ws.server.connection import Connection
from support import WAIT, RunningServer, running_server

LOGIN_REQUIRED = "this hub requires a login: choose \u201cLog in\u201d and enter a username and password"


def panel_of(page: HubPage, form: str) -> Locator:
    return page.page.locator("main > .panel").filter(has=page.page.locator(form))


def expect_status_under(page: HubPage, form: str, text: str) -> None:
    """``#status`` says ``text``, in the panel of ``form``, just below it."""
    expect(panel_of(page, form).locator("#status")).to_have_text(text)
    form_box = page.page.locator(form).bounding_box()
    status_box = page.status.bounding_box()
    assert form_box and status_box and 0 <= status_box["y"] - (form_box["y"] + form_box["height"]) < 30


def test_each_error_shows_under_the_form_that_caused_it(server: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Client1", "a|b", expect_state="")
    expect_status_under(page, "#connect-form", "Cannot connect: invalid_session: a session id is 1 to 256 "
                                               "characters, without '|' and without control characters")
    page.connect("Client1", "session-A")
    page.subscribe("a|b", expect_ok=False)
    expect_status_under(page, "#subscribe-form", "Subscribe failed: invalid_topic: a topic is 1 to 256 "
                                                 "characters, without '|' and without control characters")
    page.publish("T", "{not json", as_json=True, expect_ok=False)
    expect(panel_of(page, "#publish-form").locator("#status")).to_contain_text(
        "Not published: the payload is not valid JSON")
    expect(page.status).to_have_class("status error")
    page.subscribe("T")
    expect_status_under(page, "#subscribe-form", "Subscribed to T")
    expect(page.page.locator("footer")).to_have_count(0)  # the old status line, far below the forms


def test_publish_says_where_the_message_went_and_how_many_got_it(server: RunningServer,
                                                                 context: BrowserContext) -> None:
    with WsClient.connect_with_session("Py", "session-A", server.ws_url, timeout=WAIT) as python:
        python.subscribe("Py", "T")
        sender, other = (HubPage.open(context, server.http_url + "/") for _ in range(2))
        for name, page in (("Sender", sender), ("Other", other)):
            page.connect(name, "session-A")
            page.subscribe("T")
        sender.publish("T", "hello")
        expect_status_under(sender, "#publish-form", "Published to T (offset 1, delivered to 3 subscribers on this hub)")
        sender.publish("Nobody", "hello?")
        sender.expect_status("Published to Nobody (offset 1, delivered to 0 subscribers on this hub)")
        other.disconnect()
        sender.publish("T", "again")
        sender.expect_status("Published to T (offset 2, delivered to 2 subscribers on this hub)")


def test_with_history_off_publish_says_how_many_got_it(context: BrowserContext) -> None:
    with running_server(history_size=0) as server:
        page = HubPage.open(context, server.http_url + "/")
        page.connect("Solo", "session-A")
        page.subscribe("T")
        page.publish("T", "x")
        page.expect_status("Published to T (delivered to 1 subscriber on this hub)")
        page.close()


def test_a_hub_that_requires_a_login_says_so(context: BrowserContext, problems: PageProblems) -> None:
    problems.allow("WebSocket connection to")  # Chromium logs the refused handshake (401)
    with running_server(require_auth=True) as server:
        page = HubPage.open(context, server.http_url + "/")
        # The page asks the hub (auth/info) and offers the login at once.
        expect(page.page.locator("#auth-hint")).to_have_text("This hub requires a login.")
        expect(page.page.locator("#mode-login")).to_be_checked()
        page.connect("Anon", "session-A", expect_state="")  # anonymous anyway
        expect_status_under(page, "#connect-form", f"Connection refused: {LOGIN_REQUIRED}")
        expect(page.status).not_to_contain_text("1006")
        expect(page.state).to_have_text("disconnected")
        page.connect("Client1", "", username="testuser", password="password")
        page.subscribe("T")
        page.close()


@pytest.fixture
def closes_anonymous_connections_with_4001(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub as it may become: upgrade first, then close an anonymous connection with 4001."""
    serve = Connection.serve

    def serve_or_refuse(self: Connection, read_ahead: bytes = b"") -> None:
        if self.claims is None:
            self.close(CloseCode.UNAUTHORIZED, "a token is required")
        serve(self, read_ahead)

    monkeypatch.setattr(Connection, "serve", serve_or_refuse)


@pytest.mark.usefixtures("closes_anonymous_connections_with_4001")
def test_a_hub_that_closes_with_4001_after_the_upgrade_gets_the_same_message(server: RunningServer,
                                                                             context: BrowserContext) -> None:
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Anon", "session-A", expect_state="")
    expect_status_under(page, "#connect-form", f"Connection refused: {LOGIN_REQUIRED}")
    expect(page.state).to_have_text("disconnected")
    # The page logs in with first-frame auth: (issue 13), so its login, too, is an upgrade without
    # a token, which this simulated hub closes before auth: is read. (It passed with ?token=; the
    # real hub's RUSTY_WS_REQUIRE_AUTH reads auth: first: test_page_auth.py, and the test above.)
    page.connect("Client1", "", username="testuser", password="password", expect_state="")
    expect_status_under(page, "#connect-form", re.compile(r"^Connection refused: the hub did not accept the login"))
    expect(page.state).to_have_text("disconnected")


def test_a_4001_while_connected_says_a_login_is_required(server: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Anon", "session-A")
    [connection] = server.hub.connections()
    connection.close(CloseCode.UNAUTHORIZED, "a token is required")
    expect(page.state).to_have_text("disconnected")  # 4000-4099: do not reconnect
    expect_status_under(page, "#connect-form", f"Disconnected: {LOGIN_REQUIRED}")
