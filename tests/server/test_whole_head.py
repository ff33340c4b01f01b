"""The request head taken whole (``HubRequestHandler._whole_head``), against a real hub.

A head that has all arrived when its thread starts is taken off the socket
in one read and parsed from memory (what the read took past it is given back
to the request's reader); anything else goes the bounded way of
``_HeadReader``. These tests send the same odd-but-legal heads both
ways and check that Flask sees the same request: a head whose lines end in a
bare LF always goes the bounded way (only ``\\r\\n\\r\\n`` ends a whole head),
so each case runs deterministically through each path. An app route reports
which path served it, so a case that silently fell back would fail.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from typing import Any

import pytest
from flask import Flask, jsonify, request

from rusty_ws import PubSub
from rusty_ws.protocol import encode_ping, encode_subscribe
from rusty_ws.server.request_handler import HEAD_ONLY_KEY
from support import MS, WAIT, client_frame, hub_config, raw_http, read_response, running_server, wait_hung_up

KEY = base64.b64encode(b"0123456789abcdef").decode()


def echo_app(**settings: Any) -> Flask:
    """An embedding app with a route that shows what werkzeug and Flask made of the head."""
    app = Flask("echo")
    app.config.update(hub_config(**settings))
    seen_by_hook: list[str] = []

    @app.before_request
    def count() -> None:  # the app's own hook runs on both paths
        seen_by_hook.append(request.path)

    @app.get("/echo/<path:rest>")
    def echo(rest: str) -> Any:
        return jsonify({
            "whole": bool(request.environ.get(HEAD_ONLY_KEY)),
            "rest": rest,
            "args": request.args.to_dict(flat=False),
            "headers": sorted([name.lower(), value] for name, value in request.headers.items()),
            "hooked": seen_by_hook[-1],
        })

    PubSub().init_app(app)
    return app


def head(lines: list[str], ending: str) -> bytes:
    return (ending.join(lines) + ending + ending).encode("latin-1")


ODD_HEADS = {
    "header-case": ["GET /echo/a HTTP/1.1", "hOsT: 127.0.0.1", "X-MiXeD-CaSe: Value"],
    "duplicates": ["GET /echo/a HTTP/1.1", "Host: 127.0.0.1", "X-Twice: one", "X-Twice: two"],
    "folded": ["GET /echo/a HTTP/1.1", "Host: 127.0.0.1", "X-Folded: first", " second", "\tthird"],
    "spaces": ["GET /echo/a HTTP/1.1", "Host:    127.0.0.1   ", "X-Spaced:\t  padded value  "],
    "empty-value": ["GET /echo/a HTTP/1.1", "Host: 127.0.0.1", "X-Empty:"],
    "query": ["GET /echo/a%20b/c?x=1&x=2&y=%C3%A9&z HTTP/1.1", "Host: 127.0.0.1"],
    "http-1.0": ["GET /echo/a HTTP/1.0", "Host: 127.0.0.1"],
    "double-slash": ["GET //echo/a HTTP/1.1", "Host: 127.0.0.1"],
}


@pytest.mark.parametrize("name", sorted(ODD_HEADS))
def test_an_odd_but_legal_head_reads_the_same_both_ways(name: str) -> None:
    with running_server(echo_app()) as server:
        answers = {}
        for ending in ("\r\n", "\n"):
            status, _, body = raw_http(server.port, head(ODD_HEADS[name], ending))
            assert status == 200, body
            answers[ending] = json.loads(body)
        whole, bounded = answers["\r\n"], answers["\n"]
        assert whole.pop("whole") is True, "a head that had all arrived was not taken whole"
        assert bounded.pop("whole") is False
        # werkzeug drops the "\r\n" of a folded line, not a bare "\n": the heads differ there.
        bounded["headers"] = [[name, value.replace("\n", "")] for name, value in bounded["headers"]]
        assert whole == bounded
        assert whole["hooked"].startswith("/echo/")
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_what_the_odd_heads_read_as() -> None:
    """The values themselves, so that both paths being wrong the same way fails too."""
    with running_server(echo_app()) as server:
        def echo(name: str) -> dict[str, Any]:
            status, _, body = raw_http(server.port, head(ODD_HEADS[name], "\r\n"))
            assert status == 200, body
            return json.loads(body)  # type: ignore[no-any-return]

        assert ["x-mixed-case", "Value"] in echo("header-case")["headers"]
        assert ["x-twice", "one,two"] in echo("duplicates")["headers"]
        assert ["x-folded", "first second\tthird"] in echo("folded")["headers"]
        spaced = dict(echo("spaces")["headers"])
        # http.server (email's parser) drops the leading blanks of a value and keeps the trailing ones.
        assert spaced["host"] == "127.0.0.1   " and spaced["x-spaced"] == "padded value  "
        assert dict(echo("empty-value")["headers"])["x-empty"] == ""
        query = echo("query")
        assert query["rest"] == "a b/c" and query["args"] == {"x": ["1", "2"], "y": ["é"], "z": [""]}
        assert echo("double-slash")["rest"] == "a"


@pytest.mark.parametrize("lines", [
    ["GET /ws?token={token}&extra=1 HTTP/1.1", "host: 127.0.0.1", "UPGRADE: WebSocket",
     "connection: keep-alive,   Upgrade", f"sec-websocket-key: {KEY}", "SEC-WEBSOCKET-VERSION:  13 "],
    ["GET /ws?extra=1&token={token} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket",
     "Connection: keep-alive", "Connection: Upgrade", f"Sec-WebSocket-Key:   {KEY}  ",
     "Sec-WebSocket-Version: 13", "X-Folded: a", " b"],
], ids=["case-and-spaces", "duplicate-connection-and-folding"])
@pytest.mark.parametrize("ending", ["\r\n", "\n"], ids=["whole", "bounded"])
def test_an_odd_upgrade_head_opens_a_websocket(lines: list[str], ending: str) -> None:
    with running_server() as server:
        token = server.token("alice", "s1")
        text = [line.format(token=token) for line in lines]
        early = client_frame(encode_subscribe("T").encode()) + client_frame(encode_ping().encode())
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
            sock.sendall(head(text, ending) + early)  # frames before the 101, in the same write
            status, headers, rest = read_response(sock)
            assert status == 101, rest
            assert headers["upgrade"].lower() == "websocket"
            data = rest
            while b"pong" not in data:
                chunk = sock.recv(65536)
                assert chunk, f"the hub hung up: {data!r}"
                data += chunk
            assert b"error" not in data, data
            connection, = server.hub.connections()
            assert connection.claims is not None and connection.claims.sub == "alice"
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_a_head_at_the_size_limit_is_whole_and_one_byte_more_is_refused() -> None:
    limit = 4096
    with running_server(echo_app(max_request_head_size=limit)) as server:
        base = head(["GET /echo/a HTTP/1.1", "Host: 127.0.0.1", "X-Pad: "], "\r\n")
        pad = limit - len(base)
        fits = base.replace(b"X-Pad: ", b"X-Pad: " + b"a" * pad)
        assert len(fits) == limit
        status, _, body = raw_http(server.port, fits)
        assert status == 200 and json.loads(body)["whole"] is True
        assert raw_http(server.port, fits.replace(b"X-Pad: ", b"X-Pad: a"))[0] == 431
        assert server.hub.pending_requests.wait_for(0, WAIT)


@pytest.mark.parametrize("request_bytes, answer", [
    # http.server answers a request line it cannot read as HTTP/0.9 would be: a body, no status line.
    (b"GARBAGE\r\n\r\n", b"Error code: 400"),
    (b"GET /echo/a HTTP/9.9\r\nHost: 127.0.0.1\r\n\r\n", b"Error code: 505"),
    (b"GET /echo/a HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % n for n in range(101)) + b"\r\n",
     b"HTTP/1.1 431 "),
    (b"GET /echo/a HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n", b"HTTP/1.1 200 "),
], ids=["no-request-line", "version", "too-many-headers", "line-without-colon"])
def test_a_malformed_whole_head_is_answered_as_before(request_bytes: bytes, answer: bytes) -> None:
    """What http.server made of these before the fast path (which still parses them), both ways."""
    with running_server(echo_app()) as server:
        answers = []
        for data in (request_bytes, request_bytes.replace(b"\r\n", b"\n")):
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
                sock.sendall(data)
                answers.append(wait_hung_up(sock))
        if answer.startswith(b"HTTP/"):  # the Date header may differ: the status lines
            assert [a.split(b"\r\n", 1)[0][:len(answer)] for a in answers] == [answer] * 2, answers
        else:
            assert answer in answers[0], answers[0]
            assert answers[0] == answers[1]
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_a_head_sent_after_the_thread_started_waiting_is_still_taken_whole() -> None:
    """The socket is accepted (and counted) before its client writes: the thread waits for the first bytes."""
    with running_server(echo_app()) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        assert server.hub.pending_requests.wait_for(1, WAIT)
        sock.sendall(head(ODD_HEADS["duplicates"], "\r\n"))
        status, _, body = read_response(sock)
        assert status == 200 and json.loads(body)["whole"] is True
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_expect_100_continue_is_answered_on_the_plain_path() -> None:
    """http.server's parse_request answers "Expect: 100-continue"; the plain parser must too."""
    with running_server(echo_app()) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        body = json.dumps({"username": "testuser", "password": "password"}).encode()
        sock.sendall(b"POST /auth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        status, _, _ = read_response(sock)
        assert status == 100
        sock.sendall(body)
        # werkzeug's run_wsgi sends a 100 Continue of its own after http.server's (both paths, as
        # before): read past any second one.
        for _ in range(3):
            status, _, answer = read_response(sock)
            if status != 100:
                break
        assert status == 200 and "token" in json.loads(answer), answer


@pytest.mark.parametrize("ending", ["\r\n", "\n"], ids=["whole", "bounded"])
def test_a_body_in_the_same_write_as_the_head_is_read_by_the_app(ending: str) -> None:
    """What one read took past the head is given back to the request's reader, before the socket."""
    with running_server(echo_app()) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        body = json.dumps({"username": "testuser", "password": "password"}).encode()
        lines = ["POST /auth/token HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 f"Content-Length: {len(body)}"]
        sock.sendall(head(lines, ending) + body)
        status, _, answer = read_response(sock)
        assert status == 200 and "token" in json.loads(answer), answer
        assert server.hub.pending_requests.wait_for(0, WAIT)


def test_a_body_larger_than_the_read_buffer_arrives_whole_and_in_order() -> None:
    """Part of the body came with the head (given back), the rest from the socket."""
    with running_server(echo_app()) as server, \
            socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
        body = json.dumps({"username": "testuser", "password": "password", "pad": "x" * 20_000}).encode()
        lines = ["POST /auth/token HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json",
                 f"Content-Length: {len(body)}"]
        sock.sendall(head(lines, "\r\n") + body[:3000])
        sock.sendall(body[3000:])
        status, _, answer = read_response(sock)
        assert status == 200 and "token" in json.loads(answer), answer


def test_a_default_socket_timeout_does_not_cut_the_head_deadline_short() -> None:
    """An embedding process's ``socket.setdefaulttimeout`` gives accepted sockets a timeout of their own."""
    with running_server(echo_app(request_head_timeout=WAIT)) as server:
        socket.setdefaulttimeout(100 * MS)  # process-wide: every socket made from now on
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as sock:
                assert server.hub.pending_requests.wait_for(1, WAIT)
                paced = threading.Event()  # never set: its wait outlasts the default timeout
                paced.wait(300 * MS)
                sock.sendall(head(ODD_HEADS["header-case"], "\r\n"))
                status, _, body = read_response(sock)
        finally:
            socket.setdefaulttimeout(None)
        assert status == 200 and json.loads(body)["whole"] is True, body


def test_plain_headers_answer_as_emails_parser_does() -> None:
    """``_PlainHeaders`` reads its list without email's policy: the same answers as http.client's parse."""
    import http.client
    import io

    from rusty_ws.server.request_head import _PlainHeaders

    block = (b"Host: a\r\nX-Dup: one\r\nx-dup:two\r\nX-Latin: caf\xe9\r\nX-Empty:\r\n"
             b"X-Spaces: \t padded \r\n\r\n")
    parsed = http.client.parse_headers(io.BytesIO(block))
    plain = _PlainHeaders()
    for line in block.decode("iso-8859-1").split("\r\n")[:-2]:
        name, _, value = line.partition(":")
        plain._headers.append((name, value.lstrip(" \t")))  # type: ignore[attr-defined]
    assert plain.items() == parsed.items() and plain.values() == parsed.values()
    assert plain.keys() == parsed.keys() and len(plain) == len(parsed)
    for name in ("host", "X-DUP", "x-latin", "X-Empty", "X-Spaces", "missing"):
        assert plain.get(name) == parsed.get(name), name
        assert plain[name] == parsed[name], name
        assert plain.get(name, "default") == parsed.get(name, "default"), name
        assert plain.get_all(name) == parsed.get_all(name), name
        assert plain.get_all(name, []) == parsed.get_all(name, []), name
        assert (name in plain) == (name in parsed), name
