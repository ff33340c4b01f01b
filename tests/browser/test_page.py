"""The hub's web page in headless Chromium: sessions, login, hostile text, errors, restarts, Python peers.

Absence is checked without sleeping: the hub handles one connection's commands
in order and fans a publish out before it answers the publisher, so once a
later message has arrived, an earlier one that was going to arrive has too.
"""

from __future__ import annotations

import pytest
from flask import Flask
from playwright.sync_api import BrowserContext, expect

from browser_support import RECONNECT_WAIT, HubPage, PageProblems, pretty
from rusty_ws import PubSub, WsClient
from rusty_ws.protocol import encode_publish
from support import WAIT, RunningServer, deliveries, hub_config, messages, running_server


def test_two_pages_in_one_session_exchange_messages_and_another_session_sees_nothing(
        server: RunningServer, context: BrowserContext) -> None:
    alice, bob, carol = (HubPage.open(context, server.http_url + "/") for _ in range(3))
    alice.connect("Alice", "session-A")
    bob.connect("Bob", "session-A")
    carol.connect("Carol", "session-B")
    for page in (alice, bob, carol):
        page.subscribe("Chat")

    alice.publish("Chat", "hello from Alice")
    bob.expect_payload("hello from Alice")
    alice.expect_payload("hello from Alice")  # a subscriber gets its own messages too

    carol.publish("Chat", "hello from Carol")
    carol.expect_payload("hello from Carol")
    # Alice's message was fanned out before Alice saw it, long before Carol's arrived.
    assert carol.payload_texts() == ["hello from Carol"]

    bob.publish("Chat", "Bob again")
    alice.expect_payload("Bob again")
    bob.expect_payload("Bob again")
    # Carol's message was fanned out before she saw it, so before Bob published.
    assert alice.payload_texts() == ["hello from Alice", "Bob again"]
    assert bob.payload_texts() == ["hello from Alice", "Bob again"]

    first = alice.messages.first
    expect(first.locator(".topic")).to_have_text("Chat")
    expect(first.locator(".publisher")).to_have_text("Alice")
    alice.screenshot("page-two-sessions-alice")
    carol.screenshot("page-two-sessions-carol")


def test_counts_come_live_from_healthz(server: RunningServer, context: BrowserContext) -> None:
    first = HubPage.open(context, server.http_url + "/")
    first.connect("One", "session-A")
    first.subscribe("T1")
    second = HubPage.open(context, server.http_url + "/")
    second.connect("Two", "session-B")
    second.subscribe("T2")
    # The first page polls: it sees the second page's connection and subscription arrive.
    for name, value in {"connections": "2", "sessions": "2", "topics": "2", "subscriptions": "2"}.items():
        expect(first.page.locator(f"#count-{name}")).to_have_text(value)
    second.disconnect()
    expect(first.page.locator("#count-connections")).to_have_text("1")


def test_login_binds_the_page_to_its_session(server: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Client1", "", username="testuser", password="password")
    # No session asked for: the token's, session-{username}, as the seed says.
    expect(page.page.locator("#session")).to_have_value("session-testuser")
    expect(page.events.last).to_contain_text("connected as Client1 in session-testuser (logged in)")
    expect(page.page.locator("#password")).to_have_value("")  # not left lying in the form
    page.subscribe("NetworkConnectedEvent")
    page.publish("NetworkConnectedEvent", "signed")
    page.expect_payload("signed")
    expect(page.messages.first.locator(".publisher")).to_have_text("Client1 (testuser)")


def test_wrong_password_is_refused(server: RunningServer, context: BrowserContext,
                                   problems: PageProblems) -> None:
    problems.allow("status of 401")  # Chromium logs the refused login
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Client1", "session-A", username="testuser", password="wrong", expect_state="")
    page.expect_status("Login refused: bad_credentials: wrong username or password")
    expect(page.state).to_have_text("disconnected")
    expect(page.page.locator("#subscribe")).to_be_disabled()


def test_hostile_text_is_shown_as_text(server: RunningServer, context: BrowserContext) -> None:
    page = HubPage.open(context, server.http_url + "/")
    page.connect("Viewer", "session-X")
    topic = "<i>T</i>"
    page.subscribe(topic)
    hostile = '<img src=x onerror="window.pwned = 1">'
    with server.connect() as attacker:
        fields = {"session_id": "session-X", "publisher_name": "<b onmouseover=alert(1)>boss</b>",
                  "user": "<script>x()</script>"}
        attacker.command(encode_publish(topic, hostile, **fields))
        attacker.command(encode_publish(topic, {"html": hostile}, **fields))
    page.expect_payload(hostile)
    page.expect_payload(pretty({"html": hostile}))  # an object: indented JSON
    entry = page.messages.first
    expect(entry.locator(".topic")).to_have_text(topic)
    expect(entry.locator(".publisher")).to_have_text("<b onmouseover=alert(1)>boss</b>")
    assert page.page.locator("#messages img, #messages b, #messages i, #messages script").count() == 0
    assert page.page.evaluate("window.pwned") is None
    expect(page.page.locator("#subscriptions .topic")).to_have_text(topic)
    page.screenshot("page-hostile-text")


def test_bad_input_is_refused_with_a_reason(context: BrowserContext) -> None:
    with running_server(max_subscriptions=1) as server:
        page = HubPage.open(context, server.http_url + "/")
        page.connect("Client1", "a|b", expect_state="")
        page.expect_status("Cannot connect: invalid_session: a session id is 1 to 256 characters, "
                           "without '|' and without control characters")
        page.connect("", "session-A", expect_state="")
        page.expect_status("Cannot connect: invalid_name: a name is 1 to 256 characters "
                           "and without control characters")
        page.connect("Client1", "session-A")

        for topic in ("a|b", "", "tab\there"):
            page.subscribe(topic, expect_ok=False)
            expect(page.status).to_contain_text("Subscribe failed: invalid_topic")
        for field in ("#subscribe-topic", "#publish-topic"):  # the protocol's MAX_TOPIC_LENGTH, 256
            page.page.fill(field, "x" * 300)
            expect(page.page.locator(field)).to_have_value("x" * 256)
        page.subscribe("First")
        page.subscribe("Second", expect_ok=False)  # the hub's limit: its error: reply, as a rejection
        page.expect_status("Subscribe failed: too_many_subscriptions: "
                           "a connection may hold at most 1 subscriptions")
        expect(page.page.locator("#subscriptions li")).to_have_count(1)

        page.publish("First", "{not json", as_json=True, expect_ok=False)
        expect(page.status).to_contain_text("Not published: the payload is not valid JSON")
        page.publish("First", '{"n": [1, 2]}', as_json=True)
        page.expect_payload(pretty({"n": [1, 2]}))
        page.publish("a|b", "x", expect_ok=False)
        expect(page.status).to_contain_text("Publish failed: invalid_topic")
        assert page.payload_texts() == [pretty({"n": [1, 2]})]
        page.screenshot("page-bad-input")
        page.close()


@pytest.mark.parametrize("login, new_secret", [(False, False), (True, False), (True, True)],
                         ids=["anonymous", "logged-in", "logged-in-and-the-hub-has-a-new-secret"])
def test_reconnects_after_a_server_restart(context: BrowserContext, problems: PageProblems,
                                           login: bool, new_secret: bool) -> None:
    # While the hub is down, Chromium logs the refused connections: that is the point here.
    # ERR_SOCKET_NOT_CONNECTED: an attempt that reached the old hub as its listener closed (seen under load).
    problems.allow("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "ERR_SOCKET_NOT_CONNECTED",
                   "WebSocket connection to")
    credentials = {"username": "testuser", "password": "password"} if login else {}
    with running_server() as first:
        port = first.port
        page = HubPage.open(context, first.http_url + "/")
        page.connect("Phoenix", "session-R", **credentials)
        page.subscribe("Restarts")
    expect(page.state).to_have_text("reconnecting", timeout=RECONNECT_WAIT)
    # Nothing to subscribe, publish or unsubscribe with until the connection is back.
    for control in ("#subscribe", "#publish", "#subscribe-topic", "#payload", "#subscriptions button"):
        expect(page.page.locator(control)).to_be_disabled()
    expect(page.page.locator("#disconnect")).to_be_enabled()
    closed = page.events.filter(has_text="connection closed (")
    expect(closed).to_have_count(1)
    assert "connection closed (4200 server restarting)" in closed.text_content(), page.events.all_text_contents()
    # A new secret refuses the old token: the page must log in again by itself.
    overrides = {"jwt_secret_key": "another-secret-" + "y" * 32} if new_secret else {}
    with running_server(port=port, **overrides) as second:
        expect(page.state).to_have_text("connected", timeout=RECONNECT_WAIT)
        expect(page.events.filter(has_text="reconnected; 1 subscription(s) restored")).to_have_count(1)
        for control in ("#subscribe", "#publish", "#subscriptions button"):
            expect(page.page.locator(control)).to_be_enabled()
        with second.connect() as publisher:  # the restored subscription delivers
            publisher.command(encode_publish("Restarts", "back", session_id="session-R"))
        page.expect_payload("back")
        page.publish("Restarts", "me too")
        page.expect_payload("me too")
        publisher_shown = "Phoenix (testuser)" if login else "Phoenix"
        expect(page.payload("me too").locator(".publisher")).to_have_text(publisher_shown)
        page.screenshot(f"page-after-restart-{'login' if login else 'anonymous'}")
        page.close()


def test_page_and_python_client_exchange_messages(server: RunningServer, context: BrowserContext) -> None:
    with WsClient.connect_with_session("PyClient", "session-P", server.ws_url, timeout=WAIT) as python:
        received = deliveries(python, "Chat")
        python.subscribe("PyClient", "Chat")
        page = HubPage.open(context, server.http_url + "/")
        page.connect("Browser", "session-P")
        page.subscribe("Chat")

        page.publish("Chat", '{"from": "browser", "n": 1}', as_json=True)
        delivery = received.get(timeout=WAIT)
        assert (delivery.publisher_name, delivery.payload) == ("Browser", {"from": "browser", "n": 1})
        assert delivery.session_id == "session-P"

        python.publish("PyClient", "Chat", "from python")
        page.expect_payload("from python")
        expect(page.payload("from python").locator(".publisher")).to_have_text("PyClient")


def test_page_under_an_embedding_apps_prefix(context: BrowserContext) -> None:
    pubsub = PubSub()
    app = Flask("shop")
    app.config.update(hub_config())
    pubsub.init_app(app, url_prefix="/realtime")
    with running_server(app, prefix="/realtime") as server:
        page = HubPage.open(context, server.http_url + "/")
        page.connect("Shop", "session-shop")
        page.subscribe("OrderPlaced")
        pubsub.publish("session-shop", "OrderPlaced", {"id": 42}, publisher_name="shop")
        page.expect_payload(pretty({"id": 42}))
        page.close()


def test_own_page_connects_when_cors_origins_are_restricted(context: BrowserContext) -> None:
    with running_server(cors_origins=["http://localhost:8080"]) as server:
        page = HubPage.open(context, server.http_url + "/")
        page.connect("Local", "session-A")
        page.subscribe("T")
        page.close()


def test_compressing_pages_and_a_plain_python_client_share_a_topic(context: BrowserContext) -> None:
    # Chromium offers permessage-deflate on every WebSocket; with RUSTY_WS_COMPRESSION on, it gets it.
    with running_server(compression=6) as server, \
            WsClient.connect_with_session("PyClient", "session-Z", server.ws_url, timeout=WAIT) as python:
        received = messages(python, "Zip")
        python.subscribe("PyClient", "Zip")
        pages = [HubPage.open(context, server.http_url + "/") for _ in range(2)]
        for name, page in zip(("One", "Two"), pages):
            page.connect(name, "session-Z")
            page.subscribe("Zip")
        compressing = [conn for conn in server.hub.connections() if conn.outbox.deflate]
        assert len(compressing) == 2  # the two pages; websocket-client never offers compression
        long_text = ("a long, compressible message " * 30).strip()
        pages[0].publish("Zip", long_text)
        for page in pages:
            page.expect_payload(long_text)
        assert received.get(timeout=WAIT) == long_text
        python.publish("PyClient", "Zip", ("back from python " * 20).strip())
        pages[1].expect_payload(("back from python " * 20).strip())
        for page in pages:
            page.close()
