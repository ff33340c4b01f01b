"""Reading the documentation as data: its fenced blocks, its headings' anchors, its links.

The tests that hold the docs to the code (``test_docs.py``, ``test_docs_examples.py``,
``test_deployment.py``) read README.md and docs/*.md through these helpers only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Every page of documentation, README first.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ ]{0,3})```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S)


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page (relative to the repository), line, language and text."""

    page: str
    line: int
    language: str
    text: str

    @property
    def first_line(self) -> str:
        return next((line.strip() for line in self.text.splitlines() if line.strip()), "")

    def __str__(self) -> str:
        return f"{self.page}:{self.line} ({self.language or 'no language'}): {self.first_line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, in order."""
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(ROOT).as_posix()
    return [
        Block(name, text.count("\n", 0, match.start()) + 1, match["info"].strip().split(" ")[0],
              match["body"])
        for match in _FENCE.finditer(text)
    ]


def block_named(page: Path, language: str, first_line: str) -> Block:
    """The one block of ``page`` in ``language`` whose first line is ``first_line`` (e.g. a path comment)."""
    [found] = [block for block in blocks(page) if block.language == language and block.first_line == first_line]
    return found


def prose(page: Path) -> str:
    """``page`` without its fenced blocks."""
    return _FENCE.sub("", page.read_text(encoding="utf-8"))


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the headings of ``page`` (lower case, punctuation dropped, spaces to ``-``)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", prose(page), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = "".join(ch for ch in text.lower()
                       if ch in " -_" or unicodedata.category(ch)[0] in "LN").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of ``page``'s Markdown links, outside code blocks and code spans."""
    text = re.sub(r"`[^`\n]*`", "", prose(page))
    return re.findall(r"\]\(([^)\s]+)\)", text)
