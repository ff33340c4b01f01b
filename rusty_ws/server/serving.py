"""The names ``rusty_ws.server.serving`` has always offered, now kept by the modules that own them.

This was one module of five jobs; each now has its own (``docs/architecture.md``):

- ``request_head``: reading a request head (the plain parse, the bounded reader);
- ``request_handler``: ``HubRequestHandler``, on each request's thread;
- ``pacing``: ``_Pacer``, the ``Retry-After`` of a handshake turned away;
- ``hub_server``: ``HubServer`` and ``make_server``, the accept loop and its bounds
  (its admission of new sockets since split off: ``accept_gate``, ``healthz_watch``);
- ``serve``: ``serve``, ``stop``, ``exit_now``, ``freeze_startup_objects``, the process.

What embedders and scripts import from here still works: the same objects, by
the same names. Only what is read is offered, never a setting that is patched:
a patch of a copy here would change nothing the code reads, so patch the module
that owns it (``monkeypatch.setattr(accept_gate, "DRAIN_EVERY", ...)``); a knob
left out here makes a stale patch fail rather than pass unnoticed.
"""

from __future__ import annotations

from .accept_gate import LOG_EVERY as LOG_EVERY
from .hub_server import DRAIN_FROM as DRAIN_FROM
from .hub_server import HubServer, make_server
from .pacing import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from .pacing import MIN_PACED_RATE as MIN_PACED_RATE
from .pacing import TURN_AWAY_COST as TURN_AWAY_COST
from .pacing import _Pacer as _Pacer
from .request_handler import HEAD_ONLY_KEY as HEAD_ONLY_KEY
from .request_handler import RELEASE_HEAD_KEY as RELEASE_HEAD_KEY
from .request_handler import HubRequestHandler
from .request_head import _PlainHeaders as _PlainHeaders
from .serve import FULL_COLLECTION_THRESHOLD as FULL_COLLECTION_THRESHOLD
from .serve import exit_now, freeze_startup_objects, serve, stop

__all__ = ["HubServer", "HubRequestHandler", "freeze_startup_objects", "exit_now", "make_server", "serve", "stop"]
