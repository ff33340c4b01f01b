"""Ending the processes a driver started: one signal, a bounded wait, then a kill."""

from __future__ import annotations

import subprocess


def end(process: subprocess.Popen, signum: int | None, timeout: float) -> None:
    """Send ``signum`` to ``process`` (None: none, it ends by itself), wait up to ``timeout`` seconds
    for it to end, else kill it; reaped either way. Nothing is done to a process that has ended."""
    if process.poll() is not None:
        return
    if signum is not None:
        process.send_signal(signum)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
