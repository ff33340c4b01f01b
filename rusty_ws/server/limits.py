"""The stand-alone hub's connection limit, derived from what the process can hold.

Every open WebSocket holds one file descriptor (its socket) and one thread. A
stand-alone hub (``rusty-ws serve``, ``flask --app rusty_ws run``) owns its
process, so when ``RUSTY_WS_MAX_CONNECTIONS`` is not set it raises its soft
``RLIMIT_NOFILE`` to the hard limit (logged) and accepts what that many
descriptors allow, less a reserve:

- ``DESCRIPTOR_RESERVE`` for everything else the process opens: the listening
  socket, stdio and log files, the broker's Redis connections, the writer's
  selector, the HTTP requests being answered (``/healthz``, ``/auth/token``);
- ``RUSTY_WS_MAX_PENDING_REQUESTS``: each socket waiting for its request head
  holds a descriptor too.

Not reserved: what ``HubServer``'s accept gate holds in a storm (up to
``DRAIN_MAX``) and the handshakes under way (up to ``RUSTY_WS_MAX_HANDSHAKES``).
Thousands at once, but each for a moment (a 101 or a 503); reserved, they would
take a storm's worth of descriptors from the connections for good. Instead a
drain takes no more than the limit leaves past ``DESCRIPTOR_RESERVE`` and every
request thread's socket (``AcceptGate.room``), so the reserve stays free for
Redis and the rest; past that the accept loop takes one socket at a time.

The figure is never below ``MINIMUM_CONNECTIONS`` nor below half the limit, so
a small limit still leaves a hub that works (past what the descriptors allow,
``accept()`` fails and the hub logs it: see ``hub_server.py``).

Not derived: under gunicorn (its worker's ``--threads`` bound the connections,
``gunicorn_conf.py`` checks that rule) and in an embedding app (its server's
thread model is unknown): both keep ``config.MAX_CONNECTIONS_EMBEDDED``.
An explicit setting always wins.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from ..config import MAX_CONNECTIONS_EMBEDDED, MAX_PENDING_REQUESTS, PREFIX

try:
    import resource
except ImportError:  # not a POSIX system
    resource = None  # type: ignore[assignment]

__all__ = ["DESCRIPTOR_RESERVE", "MINIMUM_CONNECTIONS", "raise_descriptor_limit", "descriptor_limit",
           "connections_for", "derive_max_connections"]

logger = logging.getLogger("rusty_ws.server")

#: Descriptors kept for what is not a WebSocket: the listening socket, logs, Redis, the writer's selector, HTTP.
DESCRIPTOR_RESERVE = 64
#: The least the derived limit ever is.
MINIMUM_CONNECTIONS = 16


def raise_descriptor_limit(said: list[tuple[int, str]] | None = None) -> int | None:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard one; the soft limit now (None: not POSIX).

    What to log about it is appended to ``said`` (or logged now without it). An
    unlimited hard limit is raised to the kernel's ceiling (``/proc/sys/fs/nr_open``).
    """
    said = _LogNow() if said is None else said
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _nr_open() if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return target if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        said.append((logging.WARNING, f"could not raise the file-descriptor limit from {soft} to {target}: {exc}"))
        return soft
    said.append((logging.INFO, f"raised the file-descriptor limit (RLIMIT_NOFILE) from {soft} to its hard limit {target}"))
    return target


def descriptor_limit() -> int | None:
    """The process's soft ``RLIMIT_NOFILE`` now (None: unlimited, or not POSIX)."""
    if resource is None:
        return None
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft


class _LogNow(list[tuple[int, str]]):
    """A ``said`` list that logs at once."""

    def append(self, item: tuple[int, str]) -> None:
        logger.log(*item)


#: Where Linux says the most descriptors a process may have (what an unlimited hard limit means).
NR_OPEN_PATH = "/proc/sys/fs/nr_open"


def _nr_open() -> int:
    try:
        with open(NR_OPEN_PATH, encoding="ascii") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 1 << 20


def connections_for(descriptors: int, pending_requests: int) -> int:
    """The WebSockets ``descriptors`` can hold beside the reserve and the pending requests."""
    return max(MINIMUM_CONNECTIONS, descriptors // 2, descriptors - DESCRIPTOR_RESERVE - pending_requests)


def _under_gunicorn() -> bool:
    """gunicorn's arbiter loaded the app: its ``--threads`` rule applies, not the descriptors."""
    return "gunicorn.arbiter" in sys.modules


def derive_max_connections(config: MutableMapping[str, Any]) -> list[tuple[int, str]]:
    """The stand-alone hub's start: raise the descriptor limit, and set ``RUSTY_WS_MAX_CONNECTIONS`` if unset.

    See the module. Returns what to log (level, line) once the app is set up,
    so a setting that fails to check is the only line a command prints. An
    explicit value is kept, with a warning when the descriptors cannot hold it;
    one that is not a number is left for ``Settings`` to refuse, and so is a
    ``RUSTY_WS_MAX_PENDING_REQUESTS`` that is not one (the default is counted here).
    """
    key = PREFIX + "MAX_CONNECTIONS"
    given = config.get(key)
    said: list[tuple[int, str]] = []
    if _under_gunicorn():
        if given is None:
            config[key] = MAX_CONNECTIONS_EMBEDDED
            said.append((logging.DEBUG, f"= under gunicorn: RUSTY_WS_MAX_CONNECTIONS={MAX_CONNECTIONS_EMBEDDED} "
                                        "(keep it below --threads)"))
        return said
    descriptors = raise_descriptor_limit(said)
    if descriptors is None:
        if given is None:
            config[key] = MAX_CONNECTIONS_EMBEDDED
        return said
    pending = config.get(PREFIX + "MAX_PENDING_REQUESTS")
    if not isinstance(pending, int) or isinstance(pending, bool) or pending <= 0:
        pending = MAX_PENDING_REQUESTS
    fits = connections_for(descriptors, pending)
    if given is None:
        config[key] = fits
        said.append((logging.INFO, f"accepting up to {fits} WebSocket connections: RUSTY_WS_MAX_CONNECTIONS unset, "
                                   f"derived from the file-descriptor limit {descriptors} (less {DESCRIPTOR_RESERVE} "
                                   f"for the rest of the process and {pending} for requests waiting for their head)"))
    elif isinstance(given, int) and not isinstance(given, bool) and given > fits:
        said.append((logging.WARNING, f"RUSTY_WS_MAX_CONNECTIONS={given} is more than the file-descriptor limit "
                                      f"{descriptors} holds (about {fits}): past it accept() fails; raise the "
                                      "limit (ulimit -n, LimitNOFILE)"))
    return said
