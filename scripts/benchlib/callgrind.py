"""Running under ``valgrind --tool=callgrind`` and reading what it wrote: the scripts that count instructions share it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile

__all__ = ["drain", "instructions_per_unit", "total_instructions"]


def total_instructions(path: str) -> int:
    """The instruction count of a callgrind dump (its ``summary:`` or ``totals:`` line)."""
    with open(path) as dump:
        for line in dump:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"no total in {path}")


def instructions_per_unit(script: str, label: str, sizes: tuple[int, int], run_length: int) -> int:
    """Instructions per unit of ``script run LABEL SIZE RUN_LENGTH`` under callgrind, at two sizes.

    The difference of the two runs' totals over the difference of their sizes,
    so that what every run does once (imports, start-up, the end) cancels out.
    """
    totals = []
    with tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        for size in sizes:
            out = os.path.join(tmp, f"callgrind.{label}.{size}")
            done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
                                   script, "run", label, str(size), str(run_length)],
                                  capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode:
                raise SystemExit(f"{label} failed ({done.returncode}):\n{done.stderr[-3000:]}")
            totals.append(total_instructions(out))
    return round((totals[1] - totals[0]) / (sizes[1] - sizes[0]))


def drain(sock: socket.socket) -> int:
    """Read a non-blocking socket until it has nothing more for now; the bytes read."""
    received = 0
    while True:
        try:
            received += len(sock.recv(1 << 20))
        except BlockingIOError:
            return received
