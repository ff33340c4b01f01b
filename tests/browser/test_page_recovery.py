"""Recovery in Chromium: a page whose connection is cut gets what it missed, and says when it cannot.

The page is loaded through a ``TcpProxy``, so its modules, its WebSocket and its
``/healthz`` polls all go through it; cutting the proxy resets them without a close
frame, as a network failure does. Every wait is Playwright's (``expect``,
``wait_for_function``) with a timeout.
"""

from __future__ import annotations

import json

from playwright.sync_api import BrowserContext, expect

from browser_support import PAGE_WAIT, RECONNECT_WAIT, HubPage, PageProblems
from support import Client, running_server
from tcp_proxy import tcp_proxy

#: What Chromium logs about connections that were reset or refused on purpose.
CUT_ERRORS = ("ERR_CONNECTION_REFUSED", "ERR_CONNECTION_RESET", "ERR_EMPTY_RESPONSE", "WebSocket connection to",
              "Failed to load resource")

#: A RustyWsClient of the page's own modules, collecting one topic's payloads in window.numbers.
MODULE_CLIENT = """async ([session, topic]) => {
  const { RustyWsClient } = await import(new URL("rusty_ws/rusty_ws.js", location.href).href);
  const url = new URL("ws", location.href);
  url.protocol = "ws:";
  const client = new RustyWsClient(url.href, { name: "module", sessionId: session, keepaliveInterval: 0,
                                               backoff: { initial: 20, cap: 200 } });
  window.numbers = [];
  window.replayed = 0;
  window.failures = [];
  client.onMessage(topic, (payload, message, { replayed }) => {
    window.numbers.push(payload);
    if (replayed) window.replayed += 1;
  });
  client.addEventListener("recoveryfailed", (event) => window.failures.push(event.detail));
  await client.connect();
  await client.subscribe(topic);
  window.moduleClient = client;
}"""


def publish_all(publisher: Client, topic: str, session: str, payloads: list) -> None:
    """Publish every payload, then wait for the hub to have handled them all (one sync at the end)."""
    for payload in payloads:
        publisher.send("publish-json:" + json.dumps({"topic": topic, "session_id": session, "payload": payload}))
    publisher.sync()


def test_a_cut_connection_recovers_1000_messages_and_the_page_marks_replayed_ones(
        context: BrowserContext, problems: PageProblems) -> None:
    problems.allow(*CUT_ERRORS)
    session = "session-N"
    with running_server(history_size=2000) as server, tcp_proxy(server.port) as proxy, \
            server.connect() as publisher:
        page = HubPage.open(context, f"http://127.0.0.1:{proxy.port}/")
        page.connect("Watcher", session)
        page.subscribe("Blip")
        page.page.evaluate(MODULE_CLIENT, [session, "Numbers"])
        publish_all(publisher, "Blip", session, ["before the cut"])
        page.expect_payload("before the cut")

        publish_all(publisher, "Numbers", session, list(range(1, 301)))
        page.page.wait_for_function("() => window.numbers.length >= 200", timeout=PAGE_WAIT)
        proxy.hold()  # the network stays down while 301-600 are published
        assert proxy.cut() >= 2  # both WebSockets (and any polling connection), without close frames
        publish_all(publisher, "Numbers", session, list(range(301, 601)))
        publish_all(publisher, "Blip", session, ["missed 1", "missed 2"])
        proxy.release()
        publish_all(publisher, "Numbers", session, [*list(range(601, 1001)), "end"])

        page.page.wait_for_function("() => window.numbers.at(-1) === 'end'", timeout=RECONNECT_WAIT)
        numbers = page.page.evaluate("window.numbers")
        assert numbers == [*range(1, 1001), "end"]  # all, in order, once each
        replayed = page.page.evaluate("window.replayed")
        assert replayed >= 300, replayed  # 301-600 at least came from the hub's history
        assert page.page.evaluate("window.failures") == []

        # The page's own client: the missed messages are shown, marked as recovered.
        page.expect_payload("missed 2", timeout=RECONNECT_WAIT)
        for text in ("missed 1", "missed 2"):
            expect(page.payload(text).locator(".recovered")).to_have_text("recovered")
        expect(page.payload("before the cut").locator(".recovered")).to_have_count(0)
        expect(page.events.filter(has_text="Blip: 2 missed message(s) recovered")).to_have_count(1)
        expect(page.state).to_have_text("connected")
        publish_all(publisher, "Blip", session, ["live again"])
        page.expect_payload("live again")
        expect(page.payload("live again").locator(".recovered")).to_have_count(0)
        assert page.payload_texts() == ["before the cut", "missed 1", "missed 2", "live again"]
        page.screenshot("page-recovered")
        page.page.evaluate("window.moduleClient.close()")
        page.close()


def test_the_page_says_when_recovery_failed_after_a_hub_restart(
        context: BrowserContext, problems: PageProblems) -> None:
    problems.allow(*CUT_ERRORS)
    with running_server() as first:
        port = first.port
        page = HubPage.open(context, first.http_url + "/")
        page.connect("Amnesia", "session-E")
        page.subscribe("Lost")
        with first.connect() as publisher:
            publish_all(publisher, "Lost", "session-E", ["before the restart"])
        page.expect_payload("before the restart")
    expect(page.state).to_have_text("reconnecting", timeout=RECONNECT_WAIT)
    with running_server(port=port) as second:
        failed = page.events.filter(has_text="recovery failed")
        expect(failed).to_have_count(1, timeout=RECONNECT_WAIT)
        expect(failed.locator(".text")).to_have_text(
            "Lost: recovery failed (the hub restarted or the stream expired, so its history is gone); "
            "messages may have been missed")
        expect(failed).to_have_class("event warning")
        expect(page.state).to_have_text("connected")
        with second.connect() as publisher:
            publish_all(publisher, "Lost", "session-E", ["after the restart"])
        page.expect_payload("after the restart")
        expect(page.messages.locator(".recovered")).to_have_count(0)
        page.screenshot("page-recovery-failed")
        page.close()
