"""The page's layout in Chromium at a laptop's width and a phone's: nothing leaves its panel.

Checked on element bounding boxes, not on pixels; the screenshots go to the
test's tmp dir for a person to look at (``pytest --basetemp=DIR`` keeps them
somewhere known).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from browser_support import PAGE_WAIT, HubPage, PageProblems, pretty
from rusty_ws import WsClient
from support import WAIT, RunningServer

#: One word, so it cannot wrap at a space: the Unsubscribe button beside it must stay in its panel.
LONG_TOPIC = "OrderFulfilmentWarehouseShipmentDispatchedEvent"
LONG_PUBLISHER = "inventory-service-eu-west-1-replica-7"
#: Long words and an object, as payloads really are.
TEXT_PAYLOAD = "see https://shop.example/orders/2026/12/01/" + "a1b2c3d4" * 8 + " for the details"
OBJECT_PAYLOAD = {"order": 42, "items": [{"sku": "BK-7", "qty": 2}], "note": "leave at the door"}

#: Every rendered element of every panel whose box leaves the panel's (1 px of rounding allowed),
#: whether the page scrolls sideways, and how wide the narrowest topic, publisher and payload of the
#: log are, in characters of their own font.
MEASURE = """() => {
  const outside = [];
  for (const panel of document.querySelectorAll("main > .panel")) {
    const box = panel.getBoundingClientRect();
    for (const element of panel.querySelectorAll("*")) {
      if (element.getClientRects().length === 0) continue;  // not rendered: hidden, a datalist...
      const r = element.getBoundingClientRect();
      if (r.left < box.left - 1 || r.right > box.right + 1) {
        outside.push(`${element.tagName.toLowerCase()}#${element.id}.${element.className}: ` +
          `${Math.round(r.left)}..${Math.round(r.right)} outside ${Math.round(box.left)}..${Math.round(box.right)}`);
      }
    }
  }
  const probe = document.createElement("span");
  probe.textContent = "0".repeat(20);
  document.querySelector("#messages .payload").after(probe);
  const character = probe.getBoundingClientRect().width / 20;
  probe.remove();
  const narrowest = (selector) => Math.min(...[...document.querySelectorAll(`#messages li.message ${selector}`)]
    .map((cell) => cell.getBoundingClientRect().width)) / character;
  const overlaps = [...document.querySelectorAll("#subscriptions li")].filter((item) =>
    item.querySelector(".topic").getBoundingClientRect().right > item.querySelector("button").getBoundingClientRect().left);
  return {
    outside,
    scrollsSideways: document.documentElement.scrollWidth > window.innerWidth,
    characters: { topic: narrowest(".topic"), publisher: narrowest(".publisher"), payload: narrowest(".payload") },
    overlaps: overlaps.length,
  };
}"""


@pytest.mark.parametrize("width", [1280, 420])
def test_nothing_overflows_its_panel_and_payloads_have_room(browser: Browser, server: RunningServer,
                                                              problems: PageProblems, tmp_path: Path,
                                                              width: int) -> None:
    context = browser.new_context(viewport={"width": width, "height": 900})
    context.set_default_timeout(PAGE_WAIT)
    problems.watch_context(context)
    try:
        with WsClient.connect_with_session(LONG_PUBLISHER, "session-A", server.ws_url, timeout=WAIT) as python:
            page = HubPage.open(context, server.http_url + "/")
            page.connect("Alice", "session-A")
            for topic in ("NetworkConnectedEvent", LONG_TOPIC):
                page.subscribe(topic)
            page.publish(LONG_TOPIC, TEXT_PAYLOAD)
            python.publish(LONG_PUBLISHER, LONG_TOPIC, OBJECT_PAYLOAD)
            page.expect_payload(TEXT_PAYLOAD)
            page.expect_payload(pretty(OBJECT_PAYLOAD))  # an object is shown indented
            page.subscribe("a|b", expect_ok=False)  # an error under the Subscribe form
            expect(page.status).to_contain_text("Subscribe failed")
            page.page.screenshot(path=str(tmp_path / f"page-{width}.png"), full_page=True)
            measured = page.page.evaluate(MEASURE)
            page.close()
    finally:
        context.close()
    assert measured["outside"] == [], f"at {width} px: " + "\n".join(measured["outside"])
    assert not measured["scrollsSideways"], f"the page scrolls sideways at {width} px"
    assert measured["overlaps"] == 0, "an Unsubscribe button overlaps its topic"
    # At 420 px the payload wrapped one character per line; now it gets a line of its own.
    characters = measured["characters"]
    assert characters["payload"] >= 30 and characters["topic"] >= 12 and characters["publisher"] >= 12, characters
    assert not problems.unexpected(), problems.unexpected()
