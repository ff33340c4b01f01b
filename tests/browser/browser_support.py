"""Browser test support: Debian's Chromium driven by Playwright, a page object, a static file server.

The browser is always ``/usr/bin/chromium`` from Debian's package (``scripts/test.sh``
installs it); Playwright never downloads one. Every wait is Playwright's own
(``expect``, ``wait_for_*``) with a timeout in multiples of ``WAIT``: nothing sleeps.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, BrowserContext, Locator, Page, Playwright, expect

from support import POLL, WAIT

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
#: Where screenshots go (ignored by git), for a person to look at.
SCREENSHOTS = ROOT / "test-output"
#: The usual wait for something the page should show at once, in ms as Playwright counts.
PAGE_WAIT = 2 * WAIT * 1000
#: Long enough for a reconnection's backoff (first delays: 0-0.5 s, then 0.25-1 s, 0.5-2 s, ...).
RECONNECT_WAIT = 5 * WAIT * 1000

def pretty(payload: object) -> str:
    """How the page shows a JSON object or array: indented by two spaces, as JSON.stringify(p, null, 2)."""
    return json.dumps(payload, indent=2, ensure_ascii=False)


#: The flags of this machine's Chromium recipe: no network of its own, no GPU, no first-run UI.
#: Playwright adds --headless and a fresh, temporary --user-data-dir to every launch.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def launch_chromium(playwright: Playwright, host_rules: dict[str, int] | None = None) -> Browser:
    """Start Debian's headless Chromium.

    Args:
        host_rules: ``{"localhost:8081": port}`` makes the browser reach 127.0.0.1:port when a
            page asks for localhost:8081, so the seed's fixed URLs run unchanged against a
            hub on a free port.
    """
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: run scripts/test.sh (as root it installs Debian's chromium)")
    args = list(CHROMIUM_FLAGS)
    if host_rules:
        rules = ", ".join(f"MAP {name} 127.0.0.1:{port}" for name, port in host_rules.items())
        args.append(f"--host-resolver-rules={rules}")
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)


class PageProblems:
    """Uncaught exceptions and console errors of a context's pages (CSP violations show here).

    A test that provokes errors on purpose (a hub going down, a refused origin) names
    what it expects with ``allow``; anything else fails the test.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._allowed: list[str] = []

    def watch_context(self, context: BrowserContext) -> None:
        context.on("page", self.watch)

    def watch(self, page: Page) -> None:
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: uncaught {error}"))
        page.on("console", lambda message: self.errors.append(f"{page.url}: console: {message.text}")
                if message.type == "error" else None)

    def allow(self, *fragments: str) -> None:
        """Errors containing any of ``fragments`` are expected in this test."""
        self._allowed.extend(fragments)

    def unexpected(self) -> list[str]:
        return [error for error in self.errors if not any(part in error for part in self._allowed)]


class HubPage:
    """The hub's web page, driven the way a person would: fill in, click, read."""

    def __init__(self, page: Page) -> None:
        self.page = page

    @classmethod
    def open(cls, context: BrowserContext, url: str) -> "HubPage":
        page = context.new_page()
        page.goto(url)
        expect(page.locator("body[data-ready=true]")).to_be_attached(timeout=PAGE_WAIT)
        return cls(page)

    # ---------------------------------------------------------------- reading

    @property
    def state(self) -> Locator:
        return self.page.locator("#state")

    @property
    def status(self) -> Locator:
        return self.page.locator("#status")

    @property
    def messages(self) -> Locator:
        return self.page.locator("#messages li.message")

    @property
    def events(self) -> Locator:
        return self.page.locator("#messages li.event")

    def payload(self, text: str) -> Locator:
        """The deliveries whose payload is exactly ``text``."""
        return self.messages.filter(has=self.page.get_by_text(text, exact=True))

    def expect_payload(self, text: str, count: int = 1, timeout: float = PAGE_WAIT) -> None:
        expect(self.payload(text)).to_have_count(count, timeout=timeout)

    def payload_texts(self) -> list[str]:
        return self.messages.locator(".payload").all_text_contents()

    def expect_status(self, text: str) -> None:
        expect(self.status).to_have_text(text, timeout=PAGE_WAIT)

    # ---------------------------------------------------------------- acting

    def front(self) -> None:
        """Make this tab the active one: Chromium throttles background tabs, which slows every click."""
        self.page.bring_to_front()

    def connect(self, name: str, session: str, *, username: str | None = None,
                password: str | None = None, expect_state: str = "connected") -> None:
        self.front()
        self.page.fill("#name", name)
        self.page.fill("#session", session)
        if username is not None:
            self.page.check("#mode-login")
            self.page.fill("#username", username)
            self.page.fill("#password", password or "")
        else:
            self.page.check("#mode-anonymous")
        self.page.click("#connect")
        if expect_state:
            expect(self.state).to_have_text(expect_state, timeout=PAGE_WAIT)

    def subscribe(self, topic: str, expect_ok: bool = True) -> None:
        self.front()
        self.page.fill("#subscribe-topic", topic)
        self.page.click("#subscribe")
        if expect_ok:
            self.expect_status(f"Subscribed to {topic}")

    def publish(self, topic: str, payload: str, *, as_json: bool = False, expect_ok: bool = True) -> None:
        self.front()
        self.page.fill("#publish-topic", topic)
        self.page.fill("#payload", payload)
        self.page.set_checked("#payload-json", as_json)
        self.page.click("#publish")
        if expect_ok:  # then, in parentheses, the ack's offset and how many subscribers got it
            expect(self.status).to_have_text(re.compile(rf"^Published to {re.escape(topic)}( \(.*\))?$"),
                                             timeout=PAGE_WAIT)

    def disconnect(self) -> None:
        self.front()
        self.page.click("#disconnect")
        expect(self.state).to_have_text("disconnected")

    def close(self) -> None:
        """Close the tab (before its hub stops, or the page would log its reconnection attempts)."""
        self.page.close()

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[int]:
    """Serve ``directory`` over HTTP on a free loopback port (yields the port): the seed's port-8080 site."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL},
                              name="test-static-server", daemon=True)
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(PAGE_WAIT / 1000)
