"""Reading a request head before Flask sees it: the plain parse, and the bounded reader for the rest.

Split out of the server so that what a head *means* sits apart from who reads
it. The cheap path of nearly every connection (``_plain_head``,
``_upgrade_environ``, ``_asks_upgrade``, ``_PlainHeaders``) turns a head that
came whole into what http.server and werkzeug would have made of it, without
email's parser or werkzeug's environ. ``_HeadReader`` is what any other head is
read through, with the deadline (``RUSTY_WS_REQUEST_HEAD_TIMEOUT``) and the
byte budget (``RUSTY_WS_MAX_REQUEST_HEAD_SIZE``) of ``docs/security.md``,
"Before the upgrade"; ``_Replay`` gives back what was read past a head.

Used by ``request_handler`` (``HubRequestHandler``) and ``hub_server``
(``HubServer._upgrade_plainly``); its only I/O is the reads ``_HeadReader`` and
``_Replay`` make on what they are given.
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import time
from typing import Any, BinaryIO

#: A plain header block (``HubRequestHandler._parse_plain``): at most 99 lines (http.client's limit
#: counts the blank line too) of a name in email's header-name bytes, a colon, and a value of
#: printable or Latin-1 bytes and tabs; then the blank line.
_PLAIN_HEADERS = re.compile(rb"(?:[!-9;-~]+:[\t -~\x80-\xff]*\r\n){0,99}\r\n")
_PLAIN_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})
_PLAIN_MAX = 65536  # http.client's longest line: a head past it is left to http.server's own checks


class _PlainHeaders(http.client.HTTPMessage):
    """The headers of a plain head (``_parse_plain``): an ``HTTPMessage`` read without email's policy.

    ``email.message.Message`` passes every value it returns through its policy
    (compat32: ``_sanitize_header``, which looks for surrogates), ~1 us a value;
    werkzeug's environ reads every header once and the handler a few more. Values
    decoded from Latin-1 hold no surrogates, so the policy returns them as they
    are: these read the list directly, with the same answers.
    """

    def get(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        for key, value in self._headers:  # type: ignore[attr-defined]
            if key.lower() == name:
                return value
        return failobj

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def get_all(self, name: str, failobj: Any = None) -> Any:
        name = name.lower()
        values = [value for key, value in self._headers if key.lower() == name]  # type: ignore[attr-defined]
        return values or failobj

    def values(self) -> list[Any]:
        return [value for _, value in self._headers]  # type: ignore[attr-defined]

    def items(self) -> list[tuple[str, Any]]:
        return list(self._headers)  # type: ignore[attr-defined]


def _plain_head(head: bytes) -> tuple[str, list[str], list[tuple[str, str]]] | None:
    """A plain whole head's request line, its three words and its header fields; None: not plain.

    Plain: a request line of three words (``HTTP/1.1`` or ``HTTP/1.0``) and every
    header line ``name:value`` on one line (``_PLAIN_HEADERS``), at most
    ``_PLAIN_MAX`` bytes. http.server (``email.feedparser``) reads such a head
    into the same fields: the same names, values without their leading blanks,
    in order, repeats kept.
    """
    end = head.find(b"\n") + 1  # the request line, as http.server's readline takes it
    if not end or len(head) > _PLAIN_MAX:
        return None
    requestline = head[:end].decode("iso-8859-1").rstrip("\r\n")
    words = requestline.split(" ")
    if len(words) != 3 or words[2] not in _PLAIN_VERSIONS or requestline.split() != words:
        return None
    block = head[end:]
    if _PLAIN_HEADERS.fullmatch(block) is None:
        return None
    fields = []
    for line in block.decode("iso-8859-1").split("\r\n")[:-2]:
        name, _, value = line.partition(":")
        fields.append((name, value.lstrip(" \t")))
    return requestline, words, fields


def _upgrade_environ(command: str, target: str, version: str, fields: list[tuple[str, str]],
                     sock: socket.socket, client_address: Any, server_address: Any) -> dict[str, Any] | None:
    """What ``views.plain_upgrade`` reads of werkzeug's environ, for a plain head and a plain path; else None.

    werkzeug's ``make_environ`` (~77k instructions a connection) splits the URL,
    unquotes and re-encodes its path, and adds a dozen keys nobody reads when
    ``plain_upgrade`` takes the handshake; no app code sees this environ (it is
    taken only where nothing but the hub's code runs, ``views._plain_app``), and
    a handshake it does not take goes to Flask with werkzeug's own. The keys it
    has hold what werkzeug's would: only for an ASCII path of one leading slash
    with no percent sign and no fragment (``PATH_INFO`` is then the path as it
    came), no header named twice (werkzeug joins repeats), and names with ``_``
    left out as werkzeug leaves them out.
    """
    if (not target.startswith("/") or target.startswith("//") or "%" in target or "#" in target
            or not target.isascii() or type(client_address) is not tuple):
        return None
    path, _, query = target.partition("?")
    environ: dict[str, Any] = {
        "wsgi.url_scheme": "http",
        "werkzeug.socket": sock,
        "REQUEST_METHOD": command,
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "REQUEST_URI": target,
        "REMOTE_ADDR": client_address[0],
        "SERVER_NAME": server_address[0],
        "SERVER_PORT": str(server_address[1]),
        "SERVER_PROTOCOL": version,
    }
    for name, value in fields:  # werkzeug's loop; a plain value holds no line break
        if "_" in name:
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if key in environ:
            return None
        environ[key] = value
    return environ


def _asks_upgrade(environ: dict[str, Any]) -> bool:
    """``HubRequestHandler._is_websocket_upgrade`` on an ``_upgrade_environ``, and no ``Expect`` to answer."""
    return (environ["REQUEST_METHOD"] == "GET" and environ.get("HTTP_UPGRADE", "").lower() == "websocket"
            and "upgrade" in {token.strip(" \t") for token in environ.get("HTTP_CONNECTION", "").lower().split(",")}
            and "CONTENT_LENGTH" not in environ and "HTTP_TRANSFER_ENCODING" not in environ
            and "HTTP_EXPECT" not in environ)


class _HeadTooLarge(Exception):
    """The request head is larger than ``RUSTY_WS_MAX_REQUEST_HEAD_SIZE``."""

    def __init__(self, in_request_line: bool) -> None:
        super().__init__("request line" if in_request_line else "request headers")
        self.in_request_line = in_request_line


class _HeadTimedOut(Exception):
    """The request head did not arrive within ``RUSTY_WS_REQUEST_HEAD_TIMEOUT``."""


class _HeadReader:
    """What the handler reads a request head through: its ``rfile``, with a deadline and a byte budget.

    http.server reads the head with ``readline`` only, so that is all this
    offers. Every wait on the socket gets only what is left of the deadline, so
    the deadline bounds the whole head, not each read; and a line is never read
    further than the budget allows, so what a head can hold in memory is bounded.
    """

    def __init__(self, rfile: BinaryIO, sock: socket.socket, budget: int, deadline: float) -> None:
        self.rfile = rfile
        self.sock = sock
        self.left = budget
        self.deadline = deadline  # time.monotonic() by which the whole head must be in
        self.lines = 0  # lines read: 0 while the request line is awaited
        self.started = False  # some byte of a head arrived

    def readline(self, limit: int = -1) -> bytes:
        """One line, at most ``limit`` bytes; raises ``_HeadTooLarge`` or ``_HeadTimedOut``."""
        if limit < 0 or limit > self.left + 1:
            limit = self.left + 1
        parts = []
        while limit > 0:
            chunk = self._peek()
            if not chunk:  # EOF
                break
            end = chunk.find(b"\n", 0, limit)
            take = end + 1 if end >= 0 else min(len(chunk), limit)
            parts.append(self.rfile.read(take))  # buffered already: no read on the socket
            limit -= take
            if end >= 0:
                break
        line = b"".join(parts)
        self.left -= len(line)
        if self.left < 0:
            raise _HeadTooLarge(in_request_line=self.lines == 0)
        self.lines += 1
        return line

    def _peek(self) -> bytes:
        """What is buffered, or else what one read brings within the deadline (b"" at EOF)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _HeadTimedOut()
        self.sock.settimeout(remaining)
        try:
            chunk = self.rfile.peek(1)  # type: ignore[attr-defined]
        except TimeoutError:
            raise _HeadTimedOut() from None
        self.started = self.started or bool(chunk)
        return chunk


class _Replay(io.RawIOBase):
    """A socket's raw reader that first gives back bytes already taken off it (``_whole_head``'s)."""

    def __init__(self, data: bytes, raw: Any) -> None:
        super().__init__()
        self.data = data
        self.raw = raw  # the socket's SocketIO: its reference keeps the descriptor open (see _release_head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.data
        if not data:
            return self.raw.readinto(buffer)
        count = min(len(buffer), len(data))
        buffer[:count] = data[:count]
        self.data = data[count:]
        return count

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        self.raw.close()
        super().close()
