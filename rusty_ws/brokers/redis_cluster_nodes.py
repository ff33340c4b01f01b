"""Connections to single Redis Cluster nodes for ``redis_cluster.py``: a client per node, the slot map.

No threads here: the cluster broker's supervisor calls these (``MapReader`` keeps one connection).
"""

from __future__ import annotations

from typing import Any

from .redis_codec import ClusterUrl
from .redis_slots import SlotMap, parse_cluster_slots

__all__ = ["node_client", "MapReader"]


def node_client(redis: Any, url: ClusterUrl, address: str, *, name: str | None = None,
                socket_timeout: float = 5.0, connect_timeout: float = 2.0) -> Any:
    """A ``redis.Redis`` for the node at ``address`` ("host:port"), with the URL's credentials and TLS.

    No retries inside redis-py: a retried SPUBLISH could arrive twice; the listeners
    and senders reconnect themselves.
    """
    host, _, port = address.rpartition(":")
    return redis.Redis(
        host=host, port=int(port), username=url.username, password=url.password, ssl=url.ssl,
        socket_timeout=socket_timeout, socket_connect_timeout=connect_timeout, socket_keepalive=True,
        retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0), client_name=name,
    )


class MapReader:
    """Reads ``CLUSTER SLOTS`` from the first node that answers, on a connection kept to the last one that did.

    While a master is lost the broker's supervisor reads the map every few tenths of a
    second to see its replica promoted: one round trip each, not a new connection each.
    One thread only (the supervisor); ``close`` drops the kept connection.
    """

    def __init__(self, redis: Any, url: ClusterUrl, errors: tuple[type[BaseException], ...]) -> None:
        self._redis, self._url = redis, url
        self._refused: tuple[type[BaseException], ...] = (*errors, ValueError)
        self._kept: tuple[str, Any] | None = None  # (address, client) of the node that answered last

    def read(self, candidates: list[str]) -> tuple[SlotMap | None, list[str]]:
        """The map of the first of ``candidates`` that gives one with a master, and what went wrong before it."""
        problems: list[str] = []
        for address in candidates:
            if self._kept is not None and self._kept[0] == address:
                client = self._kept[1]
            else:
                client = node_client(self._redis, self._url, address, socket_timeout=2.0, connect_timeout=1.0)
            try:
                found = parse_cluster_slots(client.execute_command("CLUSTER SLOTS"))
            except self._refused as exc:
                problems.append(f"{address}: {exc}")
                found = None
            if found is not None and found.masters:
                if self._kept is None or self._kept[1] is not client:
                    self.close()
                    self._kept = (address, client)
                return found, problems
            if found is not None:
                problems.append(f"{address}: no slot served")
            if self._kept is not None and self._kept[1] is client:
                self._kept = None
            client.close()
        return None, problems

    def close(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept[1].close()
