"""How the Redis sender talks to Redis: a ``Link`` writes a pipeline and reads its replies.

``RedisSender._open_link`` makes one per connection; another topology (Redis
Cluster) replaces that method and brings its own ``Link``. ``ConnectionLink``
is the one for a single Redis server, on a redis-py ``Connection``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["Link", "ConnectionLink"]


class Link(Protocol):
    """One connection the sender writes pipelines on (``RedisSender._open_link`` makes it)."""

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Write ``commands`` at once, then read their replies, in order.

        A command Redis refused has its error (a ``ResponseError``) as reply.
        Raises one of the sender's ``errors`` when the connection broke.
        """

    def close(self) -> None:
        """Close the connection; never raises."""


class ConnectionLink:
    """A ``Link`` on one redis-py ``Connection``, which made the connection (URL, TLS, auth, name).

    Its pipelines skip redis-py's per-command layers, which cost more than Redis
    itself (docs/performance.md): every command is packed into one buffer
    (``hiredis.pack_command`` when hiredis is installed) and written at once;
    the replies are parsed by a ``hiredis.Reader`` fed straight from the socket,
    or without hiredis by the connection's own parser. The link owns the
    connection: nothing else reads or writes it.
    """

    def __init__(self, connection: Any, exceptions: Any) -> None:
        self.connection = connection
        self.exceptions = exceptions
        self._reader: Any = None
        if _hiredis is not None:
            self._reader = _hiredis.Reader(protocolError=exceptions.InvalidResponse,
                                           replyError=exceptions.ResponseError)

    def execute(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        connection = self.connection
        connection.send_packed_command([_pack(commands)], check_health=False)
        if self._reader is not None:
            return self._read_hiredis(len(commands))
        refused = self.exceptions.ResponseError
        replies: list[Any] = []
        read = connection.read_response
        for _ in range(len(commands)):
            try:
                replies.append(read())
            except refused as exc:
                replies.append(exc)
        return replies

    def _read_hiredis(self, count: int) -> list[Any]:
        reader, sock = self._reader, self.connection._sock
        refused, noscript = self.exceptions.ResponseError, self.exceptions.NoScriptError
        replies: list[Any] = []
        gets = reader.gets
        while len(replies) < count:
            reply = gets()
            if reply is False:
                data = sock.recv(65536)
                if not data:
                    raise self.exceptions.ConnectionError("Redis closed the connection")
                reader.feed(data)
                continue
            if isinstance(reply, refused) and str(reply).startswith("NOSCRIPT"):
                reply = noscript(str(reply))
            replies.append(reply)
        return replies

    def close(self) -> None:
        try:
            self.connection.disconnect()
        except Exception:
            pass


def _pack_plain(commands: Sequence[tuple[Any, ...]]) -> bytes:
    """RESP for ``commands`` (bytes, str, int, float arguments), without hiredis."""
    out: list[bytes] = []
    add = out.append
    for command in commands:
        add(b"*%d\r\n" % len(command))
        for arg in command:
            if arg.__class__ is not bytes:
                arg = arg.encode("utf-8") if isinstance(arg, str) else repr(arg).encode("ascii")
            add(b"$%d\r\n" % len(arg))
            add(arg)
            add(b"\r\n")
    return b"".join(out)


def _pack_hiredis(commands: Sequence[tuple[Any, ...]]) -> bytes:
    pack = _hiredis.pack_command
    return b"".join([pack(command) for command in commands])


_hiredis: Any
try:
    import hiredis as _hiredis
except ImportError:  # optional: the sender is about 3x cheaper per command with it
    _hiredis = None
_pack = _pack_hiredis if _hiredis is not None else _pack_plain
