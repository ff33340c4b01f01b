"""The listener's subscriber connection: commands written at once, pushes read off the socket by hiredis.

``Listener`` (``redis_listener.py``) makes a ``PushLink`` for each connection
attempt and is the only thread that touches it: nothing else reads or writes
its socket. It replaces redis-py's ``PubSub``, whose ``get_message`` cost about
15 us per message received (a select, a health check, a dict per message, the
bookkeeping of every channel; docs/performance.md): here one ``recv`` feeds a
``hiredis.Reader`` with whatever arrived, and ``read`` hands back every push
parsed from it as a raw list (``[b"message", channel, data]``,
``[b"pong", data]``, ``[b"subscribe", channel, count]``, ...), whether the
connection speaks RESP3 (redis-py 8's default: pushes, and a PING's reply as a
plain reply) or RESP2. Without hiredis the connection's own parser reads the
pushes, one at a time.

An error reply (a cluster's ``MOVED`` to an ``SSUBSCRIBE``) comes as
``[ERROR, exception]``, in its place among the pushes: what came before it is
still handled, and the listener decides whether it costs the connection.
"""

from __future__ import annotations

from typing import Any

from . import redis_link  # its _hiredis and _pack, read when used (the tests switch hiredis off there)

__all__ = ["ERROR", "PushLink"]

#: The kind of the push ``read`` makes of an error reply: ``[ERROR, exception]`` (no server push has a str kind).
ERROR = "error"


class PushLink:
    """One subscriber connection, made from ``client``'s pool (its URL, TLS, auth, name), on first use.

    Args:
        client: a ``redis.Redis``; only its connection settings are used.
        exceptions: ``redis.exceptions``.
    """

    def __init__(self, client: Any, exceptions: Any) -> None:
        self.client = client
        self.exceptions = exceptions
        self._connection: Any = None
        self._sock: Any = None
        self._timeout: float | None = None  # the socket's timeout now: reads and writes want different ones
        self._write_timeout: float | None = None
        self._reader: Any = None

    def _connect(self) -> None:
        connection = self.client.connection_pool.make_connection()
        connection.connect()  # with its handshake (AUTH, client name), within the client's timeouts
        self._connection = connection
        self._write_timeout = connection.socket_timeout
        self._sock = connection._sock
        self._timeout = self._write_timeout
        if redis_link._hiredis is not None:
            self._reader = redis_link._hiredis.Reader(protocolError=self.exceptions.InvalidResponse,
                                           replyError=self.exceptions.ResponseError)

    def _set_timeout(self, timeout: float | None) -> None:
        if timeout != self._timeout:  # settimeout is a system call: only when it changes
            self._sock.settimeout(timeout)
            self._timeout = timeout

    def send(self, *command: Any) -> None:
        """Write one command (its replies come back as pushes); connects first if need be."""
        if self._connection is None:
            self._connect()
        self._set_timeout(self._write_timeout)
        self._connection.send_packed_command([redis_link._pack([command])], check_health=False)

    def subscribe(self, *channels: bytes) -> None:
        self.send(b"SUBSCRIBE", *channels)

    def unsubscribe(self, *channels: bytes) -> None:
        self.send(b"UNSUBSCRIBE", *channels)

    def ssubscribe(self, *channels: bytes) -> None:
        self.send(b"SSUBSCRIBE", *channels)

    def sunsubscribe(self, *channels: bytes) -> None:
        self.send(b"SUNSUBSCRIBE", *channels)

    def ping(self, message: bytes) -> None:
        """PING; while subscribed Redis answers ``[b"pong", message]``."""
        self.send(b"PING", message)

    def read(self, timeout: float) -> list[Any]:
        """The pushes that arrived, waiting up to ``timeout`` seconds for the first; [] if none came.

        A reply that is no list (a PING's under RESP3, or once nothing is subscribed)
        is given as ``[b"pong", data]``, as redis-py's ``PubSub`` does; an error reply
        (``MOVED``, ...) as ``[ERROR, exception]``, in its place.

        Raises:
            ConnectionError, OSError: the connection broke.
        """
        if self._connection is None:
            raise self.exceptions.ConnectionError("nothing was sent on this connection yet")
        reader = self._reader
        if reader is None:
            return self._read_plain(timeout)
        pushes: list[Any] = []
        gets = reader.gets
        push = gets()
        if push is False:
            self._set_timeout(timeout)
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                return pushes
            if not data:
                raise self.exceptions.ConnectionError("Redis closed the connection")
            reader.feed(data)
            push = gets()
        while push is not False:
            if not isinstance(push, list):  # RESP3's pushes are a list subclass (hiredis.PushNotification)
                push = self._odd(push)
            pushes.append(push)
            push = gets()
        return pushes

    def _read_plain(self, timeout: float) -> list[Any]:
        """Without hiredis: the connection's parser, one push per call."""
        connection = self._connection
        if not connection.can_read(timeout=timeout):
            return []
        # push_request: under RESP3, return a push rather than read on for a reply. Raises a ResponseError it
        # read (whole: the connection stays in step).
        try:
            push = connection.read_response(disconnect_on_error=False, push_request=True)
        except self.exceptions.ResponseError as exc:
            return [[ERROR, exc]]
        return [push if isinstance(push, list) else self._odd(push)]

    def _odd(self, reply: Any) -> list[Any]:
        if isinstance(reply, self.exceptions.ResponseError):  # hiredis gives an error reply as its instance
            return [ERROR, reply]
        if isinstance(reply, BaseException):
            raise reply
        if isinstance(reply, bytes):
            return [b"pong", b"" if reply == b"PONG" else reply]
        raise self.exceptions.InvalidResponse(f"not a pub/sub push: {reply!r:.100}")

    def close(self) -> None:
        """Close the connection; never raises."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.disconnect()
            except Exception:
                pass
