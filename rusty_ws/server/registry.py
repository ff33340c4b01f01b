"""Who is subscribed to what: (topic, session) -> subscribers.

The only shared mutable state of the hub. One lock guards it; it never calls
out while holding it. Publishing reads an immutable snapshot (a tuple)
without taking the lock, so fan-out never waits for subscribe/unsubscribe and
never copies the subscriber list per publish.

Subscribers are opaque hashable handles (the hub's connections); the registry
never calls them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Hashable

from ..exceptions import ProtocolError
from ..protocol import ErrorCode

__all__ = ["Key", "Registry", "RegistryCounts"]

#: (topic, session_id)
Key = tuple[str, str]


@dataclass(frozen=True)
class RegistryCounts:
    """Sizes reported by ``/healthz``."""

    topics: int
    sessions: int
    subscriptions: int
    subscribers: int


class Registry:
    """Subscriptions of many subscribers to (topic, session) pairs.

    Args:
        max_subscriptions: subscriptions one subscriber may hold.
    """

    def __init__(self, max_subscriptions: int = 1000) -> None:
        self.max_subscriptions = max_subscriptions
        # _lock guards _members, _snapshots' rebuilds and _keys_of. Held only for
        # dict work, never while calling anything outside this class.
        self._lock = threading.Lock()
        self._members: dict[Key, dict[Hashable, None]] = {}
        self._keys_of: dict[Hashable, set[Key]] = {}
        # Read without the lock by subscribers(): a dict lookup is atomic and a
        # tuple never changes. Writers drop a key's snapshot; the next read rebuilds it.
        self._snapshots: dict[Key, tuple[Hashable, ...]] = {}

    def subscribe(self, subscriber: Hashable, topic: str, session_id: str) -> bool:
        """Add a subscription; subscribing twice is harmless.

        Returns:
            True if (topic, session_id) had no subscriber before: interest appeared.

        Raises:
            ProtocolError: ``too_many_subscriptions`` when the subscriber is at its limit.
        """
        key = (topic, session_id)
        with self._lock:
            keys = self._keys_of.setdefault(subscriber, set())
            if key in keys:
                return False
            if len(keys) >= self.max_subscriptions:
                raise ProtocolError(
                    ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                    f"a connection may hold at most {self.max_subscriptions} subscriptions",
                )
            keys.add(key)
            members = self._members.setdefault(key, {})
            members[subscriber] = None
            self._snapshots.pop(key, None)
            return len(members) == 1

    def unsubscribe(self, subscriber: Hashable, topic: str, session_id: str) -> bool:
        """Remove a subscription; removing one that does not exist is harmless.

        Returns:
            True if (topic, session_id) lost its last subscriber: interest vanished.
        """
        key = (topic, session_id)
        with self._lock:
            keys = self._keys_of.get(subscriber)
            if not keys or key not in keys:
                return False
            keys.discard(key)
            return self._drop_member_locked(key, subscriber)

    def remove(self, subscriber: Hashable) -> list[Key]:
        """Forget a subscriber entirely (its connection ended).

        Returns:
            The keys that lost their last subscriber.
        """
        with self._lock:
            keys = self._keys_of.pop(subscriber, set())
            return [key for key in keys if self._drop_member_locked(key, subscriber)]

    def _drop_member_locked(self, key: Key, subscriber: Hashable) -> bool:
        assert self._lock.locked(), "must hold the registry lock"
        members = self._members[key]
        del members[subscriber]
        self._snapshots.pop(key, None)
        if members:
            return False
        del self._members[key]
        return True

    def subscribers(self, topic: str, session_id: str) -> tuple[Hashable, ...]:
        """Everyone subscribed to exactly (topic, session_id), as an immutable snapshot."""
        key = (topic, session_id)
        snapshot = self._snapshots.get(key)
        if snapshot is not None:
            return snapshot
        with self._lock:
            members = self._members.get(key)
            if not members:
                return ()  # not cached: publishing to random topics must not grow memory
            snapshot = self._snapshots[key] = tuple(members)
            return snapshot

    def subscriptions_of(self, subscriber: Hashable) -> set[Key]:
        """A copy of the keys ``subscriber`` is subscribed to."""
        with self._lock:
            return set(self._keys_of.get(subscriber, ()))

    def keys(self) -> list[Key]:
        """Every (topic, session) with at least one subscriber (for brokers that resubscribe)."""
        with self._lock:
            return list(self._members)

    def counts(self) -> RegistryCounts:
        """How many topics, sessions, subscriptions and subscribers there are."""
        with self._lock:
            return RegistryCounts(
                topics=len({topic for topic, _ in self._members}),
                sessions=len({session for _, session in self._members}),
                subscriptions=sum(len(members) for members in self._members.values()),
                subscribers=sum(1 for keys in self._keys_of.values() if keys),
            )
