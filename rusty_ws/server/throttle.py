"""Login throttling for ``/auth/token``: failed attempts counted per client address and per (username, address).

Past a limit, logins from that address (for that username, or for any) are
answered 429 with ``Retry-After`` and never reach the password check, so
guessing costs the hub no hashing; the right password is refused too until
the window passes. Another address is never affected, so nobody can lock an
account out from afar.

- A failure counts within ``window`` seconds of the first failure of its
  counter; the failure that reaches the limit blocks for a full ``window``
  from then on.
- The views ask before a login waits for a free password check and again
  once it has one, so guesses running at the same time can pass a limit by
  at most the checks that run at once (``RUSTY_WS_MAX_CONCURRENT_LOGINS``),
  and logins that succeed at the same time are never refused for each other.
- A success clears its (username, address) counter only: one valid account
  does not reset the address's budget for guessing others.
- IPv6 clients are counted per /64 network (what one host usually has), IPv4
  per address; usernames are kept as 16-byte digests. Each counter table holds
  at most ``max_tracked`` entries, the oldest forgotten first (logged).

``client_address`` says who the client is behind trusted reverse proxies
(``RUSTY_WS_TRUSTED_PROXIES``); a header is believed only from a trusted peer.
"""

from __future__ import annotations

import collections
import hashlib
import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["LoginThrottle", "client_address", "address_key"]

logger = logging.getLogger("rusty_ws.server")

_Address = Any  # ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse_address(text: str | None) -> _Address | None:
    """An IP address from a peer or a forwarded hop (``1.2.3.4``, ``1.2.3.4:5``, ``[::1]:5``, ``::1``)."""
    if not text:
        return None
    text = text.strip()
    if text.startswith("["):  # [v6] or [v6]:port
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Any, ...]) -> str:
    """The client's address: the socket's peer, or, when that peer is a trusted proxy, from ``X-Forwarded-For``.

    The header's hops are read from the right (the hop the trusted proxy saw)
    and trusted proxies skipped; the first other hop is the client. A hop that
    is no address means the chain cannot be believed: the peer is used then.

    Args:
        peer: the socket's peer address (``request.remote_addr``).
        forwarded_for: the ``X-Forwarded-For`` header values, in order.
        trusted: the networks of ``RUSTY_WS_TRUSTED_PROXIES``.
    """
    peer_address = _parse_address(peer)
    if peer_address is None or not trusted or not _in(peer_address, trusted):
        return str(peer_address) if peer_address is not None else (peer or "?")
    hops = [hop for value in forwarded_for for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        address = _parse_address(hop)
        if address is None:
            return str(peer_address)
        if not _in(address, trusted):
            return str(address)
    return str(peer_address) if not hops else str(_parse_address(hops[0]))


def _in(address: _Address, networks: tuple[Any, ...]) -> bool:
    return any(address.version == network.version and address in network for network in networks)


def address_key(address: str) -> str:
    """What one client's failures are counted under: an IPv4 address, an IPv6 /64, else the text."""
    parsed = _parse_address(address)
    if parsed is None:
        return address[:64]
    if parsed.version == 6:
        return str(ipaddress.IPv6Network((int(parsed) >> 64 << 64, 64)))
    return str(parsed)


class LoginThrottle:
    """Failure counters for ``/auth/token``, safe from every request thread.

    Args:
        per_address: failures from one address within ``window`` that block it; 0: no limit.
        per_user_address: failures for one username from one address that block that pair; 0: no limit.
        window: seconds failures are counted over, and a block lasts; 0 turns throttling off.
        max_tracked: counters kept per table; past it the oldest are forgotten.
        clock: ``time.monotonic`` by default; tests inject their own.
    """

    def __init__(self, per_address: int, per_user_address: int, window: float, max_tracked: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = float(window)
        self.max_tracked = max_tracked
        self._clock = clock
        self._limits = (per_address if window else 0, per_user_address if window else 0)
        # _counts_lock guards both tables. Each maps a key to [failures, reset_at], kept in
        # the order of reset_at (an entry moves to the end whenever its reset_at changes).
        self._counts_lock = threading.Lock()
        self._tables: tuple[collections.OrderedDict, collections.OrderedDict] = (
            collections.OrderedDict(), collections.OrderedDict())
        self._forgotten = 0  # entries dropped for room since the last warning

    @property
    def enabled(self) -> bool:
        return any(self._limits)

    def refusal(self, address: str, username: str) -> int | None:
        """Seconds (whole, at least 1) until ``username`` may try from ``address`` again, or None: go ahead."""
        if not self.enabled:
            return None
        now = self._clock()
        wait = 0.0
        with self._counts_lock:
            for table, limit, key in zip(self._tables, self._limits, self._keys(address, username)):
                self._expire_locked(table, now)
                entry = table.get(key)
                if limit and entry is not None and entry[0] >= limit:
                    wait = max(wait, entry[1] - now)
        return max(1, math.ceil(wait)) if wait > 0 else None

    def failed(self, address: str, username: str) -> None:
        """Count a wrong password (or an unknown username) for ``username`` from ``address``."""
        if not self.enabled:
            return
        now = self._clock()
        with self._counts_lock:
            for table, limit, key in zip(self._tables, self._limits, self._keys(address, username)):
                if not limit:
                    continue
                self._expire_locked(table, now)
                entry = table.get(key)
                if entry is None:
                    table[key] = entry = [0, now + self.window]
                    self._bound_locked(table)
                entry[0] += 1
                if entry[0] == limit:  # blocked from now on, for a whole window
                    entry[1] = now + self.window
                    table.move_to_end(key)

    def succeeded(self, address: str, username: str) -> None:
        """The right password: forget the failures of ``username`` from ``address`` (not the address's)."""
        if self.enabled:
            with self._counts_lock:
                self._tables[1].pop(self._keys(address, username)[1], None)

    def tracked(self) -> tuple[int, int]:
        """How many address and (username, address) counters are kept (for tests and reports)."""
        with self._counts_lock:
            return len(self._tables[0]), len(self._tables[1])

    @staticmethod
    def _keys(address: str, username: str) -> tuple[str, tuple[str, bytes]]:
        where = address_key(address)
        digest = hashlib.blake2b(username.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return where, (where, digest)

    def _expire_locked(self, table: collections.OrderedDict, now: float) -> None:
        while table:
            key, entry = next(iter(table.items()))
            if entry[1] > now:
                return
            del table[key]

    def _bound_locked(self, table: collections.OrderedDict) -> None:
        while len(table) > self.max_tracked:
            table.popitem(last=False)
            self._forgotten += 1
        if self._forgotten and self._forgotten % 1000 == 1:
            logger.warning("login throttling tracks %d clients (RUSTY_WS_LOGIN_MAX_TRACKED): forgot the "
                           "oldest %d so far; many addresses are failing logins", self.max_tracked,
                           self._forgotten)
