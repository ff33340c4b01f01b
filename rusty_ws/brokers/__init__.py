"""Brokers carry publishes between hub processes; see ``base.Broker``."""

from __future__ import annotations

import re

from ..exceptions import ConfigError
from .base import Broker
from .memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "broker_from_url", "masked_url"]


def broker_from_url(url: str, max_envelope_size: int | None = None, *, send_queue: int | None = None,
                    send_queue_bytes: int | None = None, retry_timeout: float | None = None) -> Broker:
    """The broker a ``RUSTY_WS_BROKER_URL`` names.

    ``redis://`` (``rediss://``, ``unix://``) and ``redis+cluster://`` (``rediss+cluster://``)
    need the ``redis`` extra.
    ``max_envelope_size`` bounds what a distributed broker sends and accepts, in bytes;
    ``send_queue``/``send_queue_bytes`` bound what its sender holds (None: the defaults);
    ``retry_timeout`` is how long the cluster broker holds a command to send it again (None: its default).

    Raises:
        ConfigError: the URL's scheme is not one we know, Redis refuses the URL, or it
            names Redis and the ``redis`` package is missing. The message shows the URL
            with its password masked.
    """
    setting = "RUSTY_WS_BROKER_URL"
    scheme = url.partition("://")[0].lower()
    if scheme in ("", "memory"):
        return MemoryBroker()
    if scheme in ("redis", "rediss", "unix"):
        from .redis import RedisBroker  # lazily: the redis package is an extra

        try:
            queue_bounds = {name: value for name, value in (("send_queue", send_queue),
                                                            ("send_queue_bytes", send_queue_bytes)) if value}
            return RedisBroker(url, max_envelope_size=max_envelope_size, **queue_bounds)
        except RuntimeError as exc:  # the redis package is missing
            problem = str(exc)
            raise ConfigError(setting, masked_url(url), problem.partition(" but ")[2] or problem) from None
        except ValueError as exc:
            raise ConfigError(setting, masked_url(url), f"is no Redis URL that works ({exc})") from None
    if scheme in ("redis+cluster", "rediss+cluster"):
        from .redis_cluster import RETRY_TIMEOUT, RedisClusterBroker  # lazily, as above

        try:
            queue_bounds = {name: value for name, value in (("send_queue", send_queue),
                                                            ("send_queue_bytes", send_queue_bytes)) if value}
            return RedisClusterBroker(url, max_envelope_size=max_envelope_size, **queue_bounds,
                                      retry_timeout=RETRY_TIMEOUT if retry_timeout is None else retry_timeout)
        except RuntimeError as exc:
            problem = str(exc)
            raise ConfigError(setting, masked_url(url), problem.partition(" but ")[2] or problem) from None
        except ValueError as exc:
            raise ConfigError(setting, masked_url(url), f"is no Redis Cluster URL that works ({exc})") from None
    raise ConfigError(setting, masked_url(url), "names no broker rusty_ws knows: "
                                                "use memory:// or redis://host:port/db")


def masked_url(url: str) -> str:
    """``url`` with the password of its user part masked: ``redis://:***@host:6379/0``."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)
