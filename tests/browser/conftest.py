"""Fixtures of the browser tests: one Chromium per run, a fresh context (cookies, storage) per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Playwright, sync_playwright

from browser_support import PAGE_WAIT, PageProblems, launch_chromium


@pytest.fixture(scope="session")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = launch_chromium(playwright)
    yield chromium
    chromium.close()


@pytest.fixture
def problems() -> PageProblems:
    """The errors of this test's pages; a test that provokes some on purpose calls ``allow``."""
    return PageProblems()


@pytest.fixture
def context(browser: Browser, problems: PageProblems) -> Iterator[BrowserContext]:
    """A fresh browser context. The test fails if a page threw or logged an error it did not allow."""
    fresh = browser.new_context()
    fresh.set_default_timeout(PAGE_WAIT)
    problems.watch_context(fresh)
    yield fresh
    fresh.close()
    unexpected = problems.unexpected()
    assert not unexpected, "the pages reported errors:\n" + "\n".join(unexpected)
