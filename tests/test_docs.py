"""The documentation stands on its own and names what exists.

- Links between pages point at files and headings that exist, and so do the
  paths the pages name (``rusty_ws/server/views.py``); nothing points outside
  the repository's tree (the protocol's origin is a public URL).
- "seed" (the original protocol's old name here) appears only in code names.
- Every install command works today: from a checkout or a built wheel; the
  index form only where the text says it is for after a release, and never in
  the package's own messages.
- The version is one: wheel names in the docs, CHANGELOG.md and LICENSE agree
  with ``rusty_ws.__version__`` and setup.cfg.
"""

from __future__ import annotations

import configparser
import re

import pytest

import rusty_ws
from docs_support import PAGES, ROOT, anchors, blocks, links, prose

PAGE_IDS = [page.relative_to(ROOT).as_posix() for page in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_links_point_at_pages_and_headings_that_exist(page) -> None:
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        assert ROOT in linked.parents or linked == ROOT, f"{page.name}: {target} is outside the repository"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_reference_outside_the_repository(page) -> None:
    text = page.read_text(encoding="utf-8")
    assert "shared/" not in text.replace("tests/browser/seed/", ""), f"{page.name} names shared/"
    assert "/work/" not in text


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_seed_is_only_a_code_name(page) -> None:
    outside_code = re.sub(r"`[^`\n]*`", "", prose(page))
    assert not re.search(r"\bseed", outside_code, re.I), \
        f"{page.name}: say 'Rusty WebSocket' or 'the original protocol' in prose"


REPO_PATH = re.compile(r"(?<![\w/.<>~-])((?:rusty_ws|tests|scripts|docs)/[\w./-]*\w)")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "CHANGELOG.md"], ids=[*PAGE_IDS, "CHANGELOG.md"])
def test_paths_into_the_repository_exist(page) -> None:
    # A path such as rusty_ws/server/views.py or tests/server/test_writer.py, not a URL path (/rusty_ws/...).
    for path in REPO_PATH.findall(page.read_text(encoding="utf-8")):
        if any(ch in path for ch in "*{"):
            continue
        assert (ROOT / path).exists() or (ROOT / path.rstrip(".")).exists(), f"{page.name} names {path}: not there"


def test_configuration_names_every_broker_the_code_accepts() -> None:
    from rusty_ws.brokers import broker_from_url

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    paragraph = text.split("**`RUSTY_WS_BROKER_URL`.**", 1)[1].split("\n#", 1)[0]
    named = re.findall(r"`([a-z+]+)://", paragraph)
    assert set(named) == {"memory", "redis", "rediss", "unix", "redis+cluster", "rediss+cluster"}, named
    for scheme in named:  # each is accepted (made, not started: nothing connects)
        broker_from_url({"memory": "memory://", "unix": "unix:///run/redis.sock", "redis+cluster": "redis+cluster://h:1,h:2/",
                         "rediss+cluster": "rediss+cluster://h:1/"}.get(scheme, f"{scheme}://h:1/0"))
    with pytest.raises(ValueError, match="names no broker rusty_ws knows"):
        broker_from_url("carrier-pigeon://coop")


def test_the_origin_is_described_with_its_public_url() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_paragraphs = readme.split("## Quick start")[0]
    assert "Rusty WebSocket" in first_paragraphs
    assert "https://github.com/yourusername/rusty_websocket" in first_paragraphs


INSTALL = re.compile(r"pip install\s+(\S+)")


def install_commands() -> list[tuple[str, str, str]]:
    """(page, argument, the paragraph or block around it) for every ``pip install`` in the docs."""
    found = []
    for page in PAGES:
        name = page.relative_to(ROOT).as_posix()
        for paragraph in re.split(r"\n\s*\n", prose(page)):
            found += [(name, match[1], paragraph) for match in INSTALL.finditer(paragraph)]
        for block in blocks(page):
            found += [(name, match[1], block.text) for match in INSTALL.finditer(block.text)]
    return found


def test_install_commands_work_today() -> None:
    commands = install_commands()
    assert len(commands) >= 5
    for page, argument, context in commands:
        target = argument.strip("'\"`")
        if target.startswith("rusty_ws") and not target.startswith(f"rusty_ws-{rusty_ws.__version__}"):
            # From the index: only as the form for after a release.
            assert "after a release" in context.lower(), f"{page}: pip install {argument} does not work yet:\n{context}"
        else:
            assert target.startswith((".", "./", "dist/", "rusty_ws-", "build", "redis")) or \
                target.startswith("-"), f"{page}: pip install {argument}"


def test_the_package_never_suggests_installing_from_the_index() -> None:
    for path in (ROOT / "rusty_ws").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"pip install\s+['\"]?rusty_ws\b", text), f"{path}: suggests an install that fails"


def test_wheel_and_sdist_names_carry_the_version() -> None:
    for page in PAGES:
        for version in re.findall(r"rusty_ws-(\d+\.\d+\.\d+)(?:-py3-none-any\.whl|\.tar\.gz)", page.read_text()):
            assert version == rusty_ws.__version__, f"{page.name} names rusty_ws-{version}"


def test_one_version_license_and_changelog() -> None:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["version"] == "attr: rusty_ws.__version__"
    assert setup["metadata"]["license"] == "MIT"
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "the rusty_ws authors" in license_text
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## (.+)$", changelog, re.M)
    assert headings[0] == "Unreleased" and rusty_ws.__version__ in headings
