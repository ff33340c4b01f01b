"""Reading what ``valgrind --tool=callgrind`` wrote: the scripts that count instructions share it."""

from __future__ import annotations

__all__ = ["total_instructions"]


def total_instructions(path: str) -> int:
    """The instruction count of a callgrind dump (its ``summary:`` or ``totals:`` line)."""
    with open(path) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no total in {path}")
