"""STAND-IN for ``redis_sender.RedisSender`` (branch ``r-sender``), until that module is on main.

Same interface (``submit``, ``script_load``, ``start``, ``stop``, ``status``), but
synchronous: ``submit`` runs the command on the calling thread, through the
broker's redis-py client (its connection pool), and calls ``on_reply`` there with
the reply or the exception. One thread's commands therefore reach Redis in the
order it made them. ``EVALSHA`` answered ``NOSCRIPT`` (a Redis restarted or
flushed) loads every known script again and runs the command once more.
No lock: the client's pool is thread-safe and nothing here is shared but the
script table, written before any submit (``script_load`` at start-up).
Delete this module when ``redis_sender.py`` lands.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

__all__ = ["StandInSender"]


class StandInSender:
    """A synchronous ``RedisSender`` look-alike (see the module's docstring)."""

    def __init__(self, *, client: Any, errors: tuple[type[BaseException], ...], node_id: str) -> None:
        import redis.exceptions  # the broker imported it already: this is the redis extra

        self.client = client
        self.errors = errors
        self.node_id = node_id
        self._noscript: type[Exception] = redis.exceptions.NoScriptError
        self._scripts: dict[str, str] = {}  # sha1 -> source

    def start(self, timeout: float) -> None:
        """Nothing to start: there is no thread."""

    def stop(self, timeout: float = 0.0) -> None:
        """Nothing to stop: the broker closes the client."""

    def script_load(self, source: str) -> str:
        """Remember ``source``; returns its SHA1 (loaded on the first ``NOSCRIPT``)."""
        sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
        self._scripts[sha] = source
        return sha

    def submit(self, args: tuple[Any, ...], on_reply: Callable[[Any], None] | None = None) -> None:
        """Run ``args`` now; call ``on_reply`` with the reply, or the exception instance."""
        try:
            try:
                reply = self.client.execute_command(*args)
            except self._noscript:
                for source in self._scripts.values():
                    self.client.script_load(source)
                reply = self.client.execute_command(*args)
        except Exception as exc:  # handed over, not raised: the real sender does the same
            reply = exc
        if on_reply is not None:
            on_reply(reply)

    def status(self) -> dict[str, Any]:
        return {}
