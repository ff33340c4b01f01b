"""Who is subscribed to what: (topic, session) -> subscribers.

The only shared mutable state of the hub. One lock guards it; it never calls
out while holding it. Publishing reads an immutable snapshot (a tuple)
without taking the lock, so fan-out never waits for subscribe/unsubscribe and
never copies the subscriber list per publish.

Subscribers are opaque hashable handles (the hub's connections); the registry
never calls them.

The sizes ``/healthz`` reports are kept up to date by every change, so
``counts()`` costs the same with a million subscriptions as with one: no
call holds the lock for work that grows with the registry (``keys()`` without
``among``, for a broker that resubscribes everything after a reconnect, is the
one exception).
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from ..exceptions import ProtocolError
from ..protocol import ErrorCode

__all__ = ["Key", "Registry", "RegistryCounts"]

#: (topic, session_id)
Key = tuple[str, str]


@dataclass(frozen=True)
class RegistryCounts:
    """Sizes reported by ``/healthz``.

    ``sessions`` counts the sessions that have a subscription; ``sessions_in_use``
    also those that an open connection is in (``enter_session``).
    """

    topics: int
    sessions: int
    subscriptions: int
    subscribers: int
    sessions_in_use: int = 0


def _add_ref(refs: dict[str, int], name: str) -> None:
    refs[name] = refs.get(name, 0) + 1


def _drop_ref(refs: dict[str, int], name: str) -> None:
    left = refs[name] - 1
    if left:
        refs[name] = left
    else:
        del refs[name]


class Registry:
    """Subscriptions of many subscribers to (topic, session) pairs.

    Args:
        max_subscriptions: subscriptions one subscriber may hold.
    """

    def __init__(self, max_subscriptions: int = 1000) -> None:
        self.max_subscriptions = max_subscriptions
        # _lock guards _members, _snapshots' rebuilds, _keys_of and the counts below. Held
        # only for dict work of one key or one subscriber, never while calling anything
        # outside this class.
        self._lock = threading.Lock()
        self._members: dict[Key, dict[Hashable, None]] = {}
        self._keys_of: dict[Hashable, set[Key]] = {}
        # The counts, kept up to date by every change (counts() never walks the dicts):
        self._topic_refs: dict[str, int] = {}    # topic -> keys with subscribers in it
        self._session_refs: dict[str, int] = {}  # session -> keys with subscribers in it
        self._session_uses: dict[str, int] = {}  # session -> those keys + connections in it
        self._subscriptions = 0                  # (subscriber, key) pairs
        self._subscribers = 0                    # subscribers holding at least one key
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
            self._subscriptions += 1
            self._subscribers += len(keys) == 1
            members = self._members.setdefault(key, {})
            members[subscriber] = None
            self._snapshots.pop(key, None)
            if len(members) > 1:
                return False
            topic, session = key
            _add_ref(self._topic_refs, topic)
            _add_ref(self._session_refs, session)
            _add_ref(self._session_uses, session)
            return True

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
            self._subscribers -= not keys
            return self._drop_member_locked(key, subscriber)

    def remove(self, subscriber: Hashable) -> list[Key]:
        """Forget a subscriber entirely (its connection ended).

        Returns:
            The keys that lost their last subscriber.
        """
        with self._lock:
            keys = self._keys_of.pop(subscriber, set())
            self._subscribers -= bool(keys)
            return [key for key in keys if self._drop_member_locked(key, subscriber)]

    def _drop_member_locked(self, key: Key, subscriber: Hashable) -> bool:
        assert self._lock.locked(), "must hold the registry lock"
        members = self._members[key]
        del members[subscriber]
        self._subscriptions -= 1
        self._snapshots.pop(key, None)
        if members:
            return False
        del self._members[key]
        topic, session = key
        _drop_ref(self._topic_refs, topic)
        _drop_ref(self._session_refs, session)
        _drop_ref(self._session_uses, session)
        return True

    def enter_session(self, session_id: str) -> None:
        """An open connection is in ``session_id`` (counted by ``sessions_in_use``)."""
        with self._lock:
            _add_ref(self._session_uses, session_id)

    def leave_session(self, session_id: str) -> None:
        """Undo one ``enter_session``: the connection ended or moved to another session."""
        with self._lock:
            _drop_ref(self._session_uses, session_id)

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

    def keys(self, among: Iterable[Key] | None = None) -> list[Key]:
        """Every (topic, session) with at least one subscriber (for brokers that resubscribe).

        Args:
            among: look only at these keys (their number bounds the work done under
                the lock): those of them that have a subscriber.
        """
        if among is None:
            with self._lock:
                return list(self._members)
        wanted = list(among)
        with self._lock:
            return [key for key in wanted if key in self._members]

    def counts(self) -> RegistryCounts:
        """How many topics, sessions, subscriptions and subscribers there are. Constant time."""
        with self._lock:
            return RegistryCounts(
                topics=len(self._topic_refs),
                sessions=len(self._session_refs),
                subscriptions=self._subscriptions,
                subscribers=self._subscribers,
                sessions_in_use=len(self._session_uses),
            )
