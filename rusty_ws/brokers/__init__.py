"""Brokers carry publishes between hub processes; see ``base.Broker``."""

from __future__ import annotations

from .base import Broker
from .memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "broker_from_url"]


def broker_from_url(url: str, max_envelope_size: int | None = None) -> Broker:
    """The broker a ``RUSTY_WS_BROKER_URL`` names.

    ``redis://`` (``rediss://``, ``unix://``) needs the ``redis`` extra.
    ``max_envelope_size`` bounds what a distributed broker sends and accepts, in bytes.

    Raises:
        ValueError: the URL's scheme is not one we know.
        RuntimeError: the URL names Redis and the ``redis`` package is missing.
    """
    scheme = url.partition("://")[0].lower()
    if scheme in ("", "memory"):
        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBroker  # lazily: the redis package is an extra

        return RedisBroker(url, max_envelope_size=max_envelope_size)
    raise ValueError(f"unknown broker URL {url!r}: use memory:// or redis://host:port/db")
