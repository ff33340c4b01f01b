"""The Flask hub: the I/O layer over the pure core and the brokers, never the client.

- ``app``: ``create_app``, the stand-alone hub.
- ``extension``: ``PubSub``, the hub inside an existing Flask app.
- ``state``: the hub state of one app and ``state_of(app)`` (a leaf).
- ``views``: the HTTP routes and the WebSocket upgrade.
- ``hub``: the connections of one app and the road publishes take.
- ``connection``: one WebSocket's command loop, on its request thread.
- ``token_life``: a connection's token: first-frame ``auth:``, ``refresh:``, expiry (4002).
- ``access``: who may use which session and topic (``Access``, ``TopicAction``).
- ``throttle``: failed-login counters of ``/auth/token``, and the client's address.
- ``timers``: deadlines the writer's thread runs (token expiry, the wait for ``auth:``).
- ``redaction``: the logging filter that keeps tokens out of log lines.
- ``registry``: who is subscribed to what.
- ``writer``: every write to the hub's sockets.
- ``hub_server``: the threaded werkzeug server behind ``rusty-ws serve``: its accept loop and bounds before the upgrade.
- ``accept_gate``: its accept thread's admission of new sockets (drains, shedding, pacing, the 503s);
  ``healthz_watch``: the ``/healthz`` ones among what a drain took, served first.
- ``request_handler``: its request handler, on each request's thread; ``request_head``: reading a request head.
- ``pacing``: the ``Retry-After`` of a WebSocket handshake the accept loop turns away.
- ``serve``: the hub as a process: serve until a signal, stop (4200), exit.
- ``serving``: the names these five replaced, for code that imports them from there.
- ``cli``: the click commands of ``rusty-ws`` and ``flask rusty-ws``.

Importing this package loads nothing; each module loads Flask only if it needs it.
"""
