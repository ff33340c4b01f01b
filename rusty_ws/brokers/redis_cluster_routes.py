"""Where a Redis Cluster broker's commands go, and what it does with "not now" replies: ``redis_cluster.py`` uses it.

``Router.send`` queues a command to the sender of its slot's master in the
broker's current ``View``; ``_settle`` takes the reply on the sender's thread:
it follows a ``MOVED`` once (``redirect``) and an ``ASK`` once (``ask``:
``ASKING`` and the command on one connection, the map unchanged), and holds in
the ``RetryQueue`` (``redis_cluster_retry.py``) what the cluster could not take
yet, for ``flush`` (the broker's supervisor thread) to send again once the slot's
master is connected. ``Redirecting`` is the client history reads run on: the
same redirections, on the reader's thread (``read``).

No thread and no lock of its own: the retry queue has its lock; the view is the
broker's immutable ``View``, read without one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from .redis_cluster_retry import AGAIN_DELAY, Held, Kind, RetryQueue, classify
from .redis_sender import RedisSender
from .redis_shard_listener import ShardListener
from .redis_slots import SlotMap

__all__ = ["View", "Router", "Redirecting", "Trouble", "READ_TRIES"]

logger = logging.getLogger("rusty_ws.server")

#: Tries of a history read answered TRYAGAIN, AGAIN_DELAY apart, on the reader's thread (then: unavailable).
READ_TRIES = 10


class View(NamedTuple):
    """What the publishing threads read: replaced whole by the supervisor, never changed in place."""

    map: SlotMap | None
    listeners: dict[str, ShardListener]  # master address -> its listener
    clients: dict[str, Any]              # master address -> its client (redis.Redis): wake-ups, redirects
    senders: dict[str, RedisSender]      # master address -> its sender


class Trouble(Protocol):
    """Asks the broker's supervisor to read the slot map now. ``moved``: a slot moved under a live master
    (a ``MOVED``): the listeners reconcile even if the map reads the same; else a master was lost."""

    def __call__(self, *, moved: bool) -> None: ...


class Redirecting:
    """The client a history read runs on (``Route.client``): the session's master, whose ``EVALSHA`` replies
    of ``MOVED``, ``ASK`` and ``TRYAGAIN`` are followed (``Router.read``); the rest is the client's."""

    def __init__(self, router: "Router", address: str, client: Any) -> None:
        self._router, self._address, self._client = router, address, client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        return self._router.read(self._address, self._client, ("EVALSHA", sha, numkeys, *keys_and_args))


class Router:
    """Sends a slot's commands to its master now, follows redirections, holds and sends again what must wait.

    Args:
        view: the broker's current ``View``.
        exceptions: ``redis.exceptions``; errors: what a failed connection raises.
        retries: the broker's ``RetryQueue``.
        idempotent: whether a command may run twice (the publish script with an id).
        as_eval: a known script's ``EVALSHA`` as an ``EVAL`` (for a master that may lack it).
        trouble: asks the supervisor to read the slot map now (``Trouble``); wake: wakes it (a wave may go).
        count_unsent: counts a command that reached no master, for ``/healthz``.
        stopped: whether the broker stops (nothing is held then); pause: waits (returns early on stop).
    """

    def __init__(self, *, view: Callable[[], View], exceptions: Any, errors: tuple[type[BaseException], ...],
                 retries: RetryQueue, idempotent: Callable[[tuple[Any, ...]], bool],
                 as_eval: Callable[[tuple[Any, ...]], tuple[Any, ...]], trouble: Trouble,
                 wake: Callable[[], None], count_unsent: Callable[[str, str], None], stopped: Callable[[], bool],
                 pause: Callable[[float], Any]) -> None:
        self._view, self._exceptions, self._errors, self.retries = view, exceptions, errors, retries
        self._idempotent, self._as_eval, self._trouble, self._wake = idempotent, as_eval, trouble, wake
        self._count_unsent, self._stopped, self._pause = count_unsent, stopped, pause

    def redirect(self, address: str, target: str, command: tuple[Any, ...]) -> Any:
        """Send once more, now, to the master a MOVED named (the reply was not executed); its reply or a
        ``ConnectionError``.

        On the sender thread of ``address``: a round trip there, only while a slot has
        just moved (the supervisor is reading the new map meanwhile).
        """
        self._trouble(moved=True)
        logger.info("a command to %s was MOVED to %s (a slot moved): sending it there", address, target)
        client = self._view().clients.get(target)
        if client is None:
            return ConnectionError(f"MOVED to {target}, a master this node does not know yet")
        try:
            return client.execute_command(*self._as_eval(command))
        except self._errors as exc:
            return ConnectionError(f"{type(exc).__name__}: {exc}")

    def ask(self, address: str, target: str, command: tuple[Any, ...]) -> Any:
        """``ASKING`` and the command, once, on the master an ASK named (a migrating slot whose keys went
        there); its reply or a ``ConnectionError``. The slot map stays: the slot is still ``address``'s.

        On the sender thread of ``address``, like ``redirect``: one round trip, on one
        connection (``ASKING`` holds for the next command of its connection only).
        """
        client = self._view().clients.get(target)
        if client is None:
            self._trouble(moved=True)
            return ConnectionError(f"ASK to {target}, a master this node does not know yet")
        logger.debug("- a command to %s was ASKed to %s (a slot migrates): ASKING there", address, target)
        try:
            pipeline = client.pipeline(transaction=False)
            pipeline.execute_command("ASKING")
            pipeline.execute_command(*self._as_eval(command))
            return pipeline.execute(raise_on_error=False)[1]
        except self._errors as exc:
            return ConnectionError(f"{type(exc).__name__}: {exc}")

    def read(self, address: str, client: Any, command: tuple[Any, ...]) -> Any:
        """A history read on ``address``'s client (the caller's thread), following ``MOVED`` and ``ASK`` and
        waiting out ``TRYAGAIN`` a few times (a migrating slot whose keys are split: ``READ_TRIES``).

        Raises what the last try raised (the history answers ``unavailable``).
        """
        exceptions = self._exceptions
        for attempt in range(READ_TRIES):
            try:
                reply = client.execute_command(*command)
            except exceptions.ResponseError as exc:
                reply = exc
            kind, target = classify(reply, exceptions)
            if kind is Kind.MOVED:
                reply = self.redirect(address, target, command)
            elif kind is Kind.ASK:
                reply = self.ask(address, target, command)
            kind, _ = classify(reply, exceptions)
            if kind is Kind.DONE or attempt == READ_TRIES - 1:
                break
            if kind is Kind.LOST:
                break
            self._pause(AGAIN_DELAY)  # TRYAGAIN: the slot's keys are moving (bounded: READ_TRIES)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def send(self, slot: int, command: tuple[Any, ...], on_reply: Callable[[Any], None],
              held: Held | None = None) -> None:
        """Queue ``command`` to the sender of ``slot``'s master now; ``_settle`` takes its reply.

        It may be held instead (``RetryQueue.admit``): an idempotent command behind the slot's
        held ones, any command while another master's sender still has commands of the slot.
        ``held``: the ``Held`` it is sent again from (by the supervisor).
        """
        idempotent = self._idempotent(command)
        view = self._view()
        address = view.map.owners[slot] if view.map else ""
        sender = view.senders.get(address)
        seq = self.retries.admit(slot, address if sender is not None else "", command, on_reply, idempotent, held)
        if seq is None:
            return  # waits behind the slot's held commands, or the old master's answers
        if sender is None:
            self._settle(slot, address, command, on_reply, held, idempotent,
                         ConnectionError("no Redis Cluster master serves this session's slot"), seq, counted=False)
            return

        def replied(reply: Any) -> None:  # on the sender's thread
            self._settle(slot, address, command, on_reply, held, idempotent, reply, seq, counted=True)

        sender.submit(command, replied)

    def _settle(self, slot: int, address: str, command: tuple[Any, ...], on_reply: Callable[[Any], None],
                held: Held | None, idempotent: bool, reply: Any, seq: int, counted: bool) -> None:
        """Follow a ``MOVED`` or ``ASK`` once; hold for a retry what the cluster could not take yet; else answer.

        On the sender's thread (or the caller's when no sender serves the slot). Held:
        ``TRYAGAIN``/``CLUSTERDOWN`` (never run), a redirection that fails again, and an
        idempotent command whose connection failed or whose slot has no master now.
        ``counted``: a sender counted ``reply`` as ``unsent`` already if it is a lost connection.
        ``seq``: its place among the slot's commands (``RetryQueue.admit``), kept if it is held.
        """
        kind, target = classify(reply, self._exceptions)
        counted = counted and kind is Kind.LOST
        if kind in (Kind.MOVED, Kind.ASK, Kind.AGAIN) and self.retries.held_before(slot, seq):
            # Not run, and older commands of the slot wait for a retry (held first now, or sent in the same
            # wave and failed again): redirected now, this one could run before them (the slot finished
            # moving in between). It waits behind them instead.
            if kind is Kind.MOVED:
                self._trouble(moved=True)
            kind = Kind.AGAIN
        elif kind is Kind.MOVED:
            reply = self.redirect(address, target, command)
            kind, target = classify(reply, self._exceptions)
        elif kind is Kind.ASK:
            reply = self.ask(address, target, command)
            kind, target = classify(reply, self._exceptions)
        if kind in (Kind.MOVED, Kind.ASK):  # redirected twice: the map is read again, try once it is
            self._trouble(moved=True)
            kind = Kind.AGAIN
        if kind is Kind.LOST:
            self._trouble(moved=False)  # a master lost (or none serves the slot): its replica may be master now
        else:
            counted = False
        retry = kind is Kind.AGAIN or (kind is Kind.LOST and idempotent)
        if not (retry and not self._stopped() and self.retries.hold(
                slot, seq, held, command, on_reply, reply, idempotent, AGAIN_DELAY if kind is Kind.AGAIN else 0.0)):
            if kind is not Kind.DONE and not isinstance(reply, ConnectionError):
                reply = ConnectionError(f"the Redis Cluster could not take it: {reply}")
            if kind is not Kind.DONE and not counted:
                self._count_unsent(address, str(reply))
            try:
                on_reply(reply)
            except Exception:
                logger.exception("a Redis Cluster reply's callback failed (%s)", command[0])
        if self.retries.settled(slot):
            self._wake()  # the slot's next wave may go

    def flush(self) -> None:
        """Send again what is held for the slots whose master is connected now; fail what waited too long.

        On the supervisor's thread; ``submit`` may block while a sender's queue is full.
        """
        for held in self.retries.expire():
            if classify(held.failure, self._exceptions)[0] is not Kind.LOST:
                self._count_unsent("", "held past RUSTY_WS_BROKER_RETRY_TIMEOUT")  # (a sender counted the rest)
            failure = held.failure if isinstance(held.failure, ConnectionError) else ConnectionError(
                f"the Redis Cluster could not take it within RUSTY_WS_BROKER_RETRY_TIMEOUT: {held.failure}")
            try:
                held.on_reply(failure)
            except Exception:
                logger.exception("a Redis Cluster reply's callback failed (%s)", held.command[0])
        view = self._view()
        for slot in self.retries.slots():
            address = view.map.owners[slot] if view.map else ""
            sender, listener = view.senders.get(address), view.listeners.get(address)
            # This node's listener too: its own subscribers must not miss what the retry publishes.
            if sender is None or not sender.connected or listener is None or not listener.connected:
                continue
            for held in self.retries.take_wave(slot):
                self.send(slot, held.command, held.on_reply, held)

