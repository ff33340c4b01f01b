"""Connections to single Redis Cluster nodes for ``redis_cluster.py``: a client per node, the slot map.

No threads here and no state: the cluster broker's supervisor calls these.
"""

from __future__ import annotations

from typing import Any

from .redis_codec import ClusterUrl
from .redis_slots import SlotMap, parse_cluster_slots

__all__ = ["node_client", "read_slot_map"]


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


def read_slot_map(redis: Any, url: ClusterUrl, candidates: list[str],
                  errors: tuple[type[BaseException], ...]) -> tuple[SlotMap | None, list[str]]:
    """``CLUSTER SLOTS`` from the first of ``candidates`` that answers with a map that has a master.

    Returns:
        The map (None if no node gave one), and what went wrong with each node asked before.
    """
    problems: list[str] = []
    refused: tuple[type[BaseException], ...] = (*errors, ValueError)
    for address in candidates:
        client = node_client(redis, url, address, socket_timeout=2.0, connect_timeout=1.0)
        try:
            found = parse_cluster_slots(client.execute_command("CLUSTER SLOTS"))
            if found.masters:
                return found, problems
            problems.append(f"{address}: no slot served")
        except refused as exc:
            problems.append(f"{address}: {exc}")
        finally:
            client.close()
    return None, problems
