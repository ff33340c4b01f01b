"""The wire grammar, with literal strings only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import ClassVar

import pytest

from rusty_ws import protocol
from rusty_ws.client.supervisor import first_delay
from rusty_ws.exceptions import ProtocolError
from rusty_ws.protocol import (
    CLOSE_CODE_EXPLANATIONS,
    MAX_JSON_DEPTH,
    SERVER_PUBLISHER,
    Ack,
    CloseCode,
    ClosePolicy,
    Delivery,
    ErrorCode,
    Ping,
    Publish,
    RegisterName,
    RegisterSession,
    Subscribe,
    Unsubscribe,
    close_policy,
    command_verb,
    dumps_utf8,
    encode_ack,
    encode_error,
    encode_register_name,
    encode_run,
    is_error_reply,
    loads_strict,
    nested_deeper_than,
    parse_command,
    parse_error,
    reconnect_window,
    restart_reason,
    with_position,
)


class TestCommands:
    @pytest.mark.parametrize(
        "text, command",
        [
            ("ping", Ping()),
            (" ping\n", Ping()),
            ("register-name:Client1", RegisterName("Client1")),
            ("register-name:Ünïcode name", RegisterName("Ünïcode name")),
            ("register-session:session-A", RegisterSession("session-A")),
            ("subscribe:DetectCustomerEvent|session-A", Subscribe("DetectCustomerEvent", "session-A")),
            ("subscribe:DetectCustomerEvent", Subscribe("DetectCustomerEvent", None)),
            ("subscribe:DetectCustomerEvent|", Subscribe("DetectCustomerEvent", None)),
            ("unsubscribe:T|s", Unsubscribe("T", "s")),
            ("unsubscribe:T", Unsubscribe("T", None)),
            ("subscribe:a:b|s", Subscribe("a:b", "s")),
        ],
    )
    def test_valid(self, text: str, command: object) -> None:
        assert parse_command(text) == command

    @pytest.mark.parametrize(
        "text, code",
        [
            ("", ErrorCode.UNKNOWN_COMMAND),
            ("pong", ErrorCode.UNKNOWN_COMMAND),
            ("PING", ErrorCode.UNKNOWN_COMMAND),
            ("subscribe", ErrorCode.UNKNOWN_COMMAND),
            ("hello:world", ErrorCode.UNKNOWN_COMMAND),
            ("subscribe:", ErrorCode.INVALID_TOPIC),
            ("subscribe:|s", ErrorCode.INVALID_TOPIC),
            ("subscribe:T|s|extra", ErrorCode.INVALID_SESSION),
            ("subscribe:T\x00|s", ErrorCode.INVALID_TOPIC),
            ("subscribe:" + "t" * 257, ErrorCode.INVALID_TOPIC),
            ("subscribe:T|" + "s" * 257, ErrorCode.INVALID_SESSION),
            ("register-name:", ErrorCode.INVALID_NAME),
            ("register-name:a\nb", ErrorCode.INVALID_NAME),
            ("register-session:", ErrorCode.INVALID_SESSION),
            ("register-session:a|b", ErrorCode.INVALID_SESSION),
        ],
    )
    def test_invalid(self, text: str, code: ErrorCode) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_command(text)
        assert caught.value.code == code

    def test_unknown_command_message_is_cut_short(self) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_command("x" * 10_000)
        assert len(caught.value.message) < 100

    @pytest.mark.parametrize(
        "text, verb",
        [("ping", "ping"), ("subscribe:x", "subscribe"), ("publish-json:{", "publish-json"), ("nope", None)],
    )
    def test_command_verb(self, text: str, verb: str | None) -> None:
        assert command_verb(text) == verb


class TestPublish:
    def test_all_fields(self) -> None:
        text = 'publish-json:' + json.dumps({
            "publisher_name": "Client1", "topic": "T", "payload": "Network connected",
            "timestamp": "2024-01-24T10:25:37Z", "session_id": "session-A",
        })
        assert parse_command(text) == Publish(
            topic="T", payload="Network connected", session_id="session-A",
            publisher_name="Client1", timestamp="2024-01-24T10:25:37Z",
        )

    def test_only_topic(self) -> None:
        assert parse_command('publish-json:{"topic":"T"}') == Publish(topic="T")

    def test_empty_session_means_none(self) -> None:
        assert parse_command('publish-json:{"topic":"T","session_id":""}').session_id is None

    @pytest.mark.parametrize(
        "payload", [{"nested": [1, 2, {"x": None}]}, 42, 3.5, True, None, "text", [1, "a"]]
    )
    def test_payload_passes_through(self, payload: object) -> None:
        command = parse_command("publish-json:" + json.dumps({"topic": "T", "payload": payload}))
        assert command.payload == payload  # type: ignore[union-attr]

    def test_client_user_field_is_dropped(self) -> None:
        command = parse_command('publish-json:{"topic":"T","user":"admin"}')
        assert not hasattr(command, "user")

    @pytest.mark.parametrize(
        "body, code",
        [
            ("", ErrorCode.INVALID_JSON),
            ("{", ErrorCode.INVALID_JSON),
            ("not json", ErrorCode.INVALID_JSON),
            ('{"topic": NaN}', ErrorCode.INVALID_JSON),
            ('{"topic": "T", "payload": Infinity}', ErrorCode.INVALID_JSON),
            ('{"topic": "T", "payload": 1e400}', ErrorCode.INVALID_JSON),
            ("[" * 100_000 + "]" * 100_000, ErrorCode.INVALID_JSON),
            ("[1, 2]", ErrorCode.INVALID_MESSAGE),
            ('"T"', ErrorCode.INVALID_MESSAGE),
            ("{}", ErrorCode.MISSING_TOPIC),
            ('{"topic": ""}', ErrorCode.MISSING_TOPIC),
            ('{"topic": null}', ErrorCode.MISSING_TOPIC),
            ('{"topic": 5}', ErrorCode.INVALID_MESSAGE),
            ('{"topic": "a|b"}', ErrorCode.INVALID_TOPIC),
            ('{"topic": "T", "session_id": 7}', ErrorCode.INVALID_MESSAGE),
            ('{"topic": "T", "session_id": "a|b"}', ErrorCode.INVALID_SESSION),
            ('{"topic": "T", "publisher_name": []}', ErrorCode.INVALID_MESSAGE),
            ('{"topic": "T", "publisher_name": "a\\u0000b"}', ErrorCode.INVALID_NAME),
            ('{"topic": "T", "timestamp": 1706091937}', ErrorCode.INVALID_MESSAGE),
        ],
    )
    def test_invalid(self, body: str, code: ErrorCode) -> None:
        with pytest.raises(ProtocolError) as caught:
            parse_command("publish-json:" + body)
        assert caught.value.code == code


def _full_checks(body: str) -> Publish:
    """What ``publish-json:`` parses to through the full checks alone (no fast path)."""
    message = protocol._json_object("publish-json", body)
    publish_id = protocol._publish_id(message)
    try:
        return protocol._publish_fields(message, publish_id)
    except ProtocolError as exc:
        exc.publish_id = publish_id
        raise


def _outcome(parse: Callable[[str], Publish], body: str) -> tuple:
    try:
        command = parse(body)
    except ProtocolError as exc:
        return ("error", exc.code, exc.message, exc.publish_id)
    return ("ok", command, type(command.payload))


class TestPublishFastPath:
    """``_parse_publish`` takes the usual publish in one function: the same verdict as the full checks."""

    @pytest.mark.parametrize("body", [
        '{"topic":"T","session_id":"s","payload":"x"}',
        '{"topic":"T","session_id":"s","payload":"x","timestamp":"now","id":"a"}',
        '{"topic":"T"}', '{"topic":"T","payload":null}', '{"topic":"T","session_id":""}',
        '{"topic":"T","session_id":null}', '{"topic":"T","timestamp":null}', '{"topic":"T","id":null}',
        '{"topic":"T","publisher_name":null}', '{"topic":"T","publisher_name":"me"}',
        '{"topic":"T","publisher_name":"server"}', '{"topic":"T","user":"admin"}',
        '{"topic":"T","other":[[[[1]]]]}', '{"topic":"T","topic":"U"}', '{"topic":"T","payload":1,"payload":"2"}',
        '{"topic":"T","id":""}', '{"topic":"T","id":"' + "i" * 128 + '"}', '{"topic":"T","id":"' + "i" * 129 + '"}',
        '{"topic":"T","id":5}', '{"topic":"T","timestamp":5}', '{"topic":"T","session_id":5}',
        '{"topic":"' + "t" * 256 + '"}', '{"topic":"' + "t" * 257 + '"}',
        '{"topic":"T","session_id":"' + "s" * 256 + '"}', '{"topic":"T","session_id":"' + "s" * 257 + '"}',
        '{"topic":"a|b"}', '{"topic":"T","session_id":"a|b"}', '{"topic":"a\\u0007"}', '{"topic":"a\u0007"}',
        '{"topic":"a\u007f"}', '{"topic":"\u00e9\u2028"}', '{"topic":"T","session_id":"\u0000"}',
        '{"topic":"","payload":1}', '{"topic":null}', '{"topic":[]}', '{}', '[]', '"T"', '', ' {"topic":"T"}',
        '{"topic":"T"} ', '{"topic":"T"}x', '{"topic":"T","payload":NaN}', '{"topic":"T","payload":1e400}',
        '{"topic":"T","payload":{"a":[1,{"b":2}]}}', '{"topic":"T","payload":[1.5,"a",true]}',
        '{"topic":"T","payload":' + "[" * 63 + "]" * 63 + "}", '{"topic":"T","payload":' + "[" * 64 + "]" * 64 + "}",
        '{"topic":"T","payload":' + '{"a":' * 63 + "1" + "}" * 63 + "}",
        '{"topic":"T","payload":' + '{"a":' * 64 + "1" + "}" * 64 + "}",
        '{"topic":"T","payload":"' + "[" * 100 + '"}', '{"topic":"T","payload":' + "[" * 5000 + "]" * 5000 + "}",
        '{"topic":"T","id":"x","payload":NaN}', '{"topic":"T","id":"x","session_id":"a|b"}',
    ])
    def test_same_verdict_as_the_full_checks(self, body: str) -> None:
        expected = _outcome(_full_checks, body)
        assert _outcome(protocol._parse_publish, body) == expected
        assert _outcome(lambda body: parse_command("publish-json:" + body), body) == expected  # type: ignore[arg-type, return-value]

    @pytest.mark.parametrize("body, usual", [
        ('{"topic":"T","session_id":"s","payload":"x"}', True), ('{"topic":"T","session_id":"","timestamp":""}', True),
        ('{"topic":"T","session_id":"s","payload":"x","timestamp":"now","id":"a"}', True), ('{"topic":"T"}', True),
        ('{"topic":"T","payload":{"a":[1,{"b":2}]}}', True), ('{"topic":"T","publisher_name":"me"}', False),
        (' {"topic":"T"}', False), ('{"topic":"T","payload":NaN}', False), ('{"topic":"a|b"}', False),
        ('{"topic":"T","id":""}', False), ('[]', False), ('', False),
    ])
    def test_usual_publish_gives_the_fields_of_the_publish_or_none(self, body: str, usual: bool) -> None:
        """What a connection's run reads (``usual_publish``) is what ``parse_command`` makes of it, when it reads it."""
        fields = protocol.usual_publish("publish-json:" + body, protocol.PUBLISH_START)
        assert fields == protocol.usual_publish(body)
        assert (fields is not None) == usual
        if fields is not None:
            publish = parse_command("publish-json:" + body)
            assert isinstance(publish, Publish) and publish.publisher_name is None
            assert fields == (publish.topic, publish.payload, publish.session_id, publish.timestamp, publish.id)

    @pytest.mark.parametrize("body", [
        '{"topic":"T","session_id":"s","payload":"x","timestamp":"now","id":"a"}',
        '{"topic":"T","payload":{"a":[1,{"b":2}]}}', '{"topic":"T","payload":null}',
    ])
    def test_the_usual_publish_takes_the_fast_path(self, body: str, monkeypatch: pytest.MonkeyPatch) -> None:
        def full_checks(verb: str, argument: str) -> dict:
            raise AssertionError("the full checks ran")
        monkeypatch.setattr(protocol, "_json_object", full_checks)
        assert isinstance(protocol._parse_publish(body), Publish)


class TestEncodeRun:
    """``encode_run``: a run of one publisher's deliveries to one stream, byte for byte ``Delivery.encode``."""

    PAYLOADS: ClassVar[list[object]] = ["hi", "", "caf\u00e9 \u2028 \U0001f600", 'quote " and \\ and \n', "\ud800", "\udfff x", 1, -2.5,
                None, True, {"a": [1, {"b": "\ud800"}]}, [], [1.5, "a"]]

    @pytest.mark.parametrize("name, topic, session, user", [
        ("anonymous", "T", "s", None), ("a \"name\"", "t\u00e9", "s\u2028", "alice"), ("p", "T", "default", "\ud800"),
    ])
    def test_each_is_what_delivery_encode_gives(self, name: str, topic: str, session: str, user: str | None) -> None:
        items = [(payload, stamp) for payload in self.PAYLOADS for stamp in (None, "", "2024-01-24T10:25:37Z", "\ud800")]
        default = "2026-12-02T18:00:00.000001+00:00"
        expected = [Delivery(name, topic, payload, stamp or default, session, user).encode() for payload, stamp in items]
        assert encode_run(name, topic, session, user, items, default) == expected
        assert encode_run(name, topic, session, user, items, default, 41, "e0-1") == [
            with_position(text, offset, "e0-1") for offset, text in enumerate(expected, 41)]

    def test_a_payload_that_is_not_json_is_refused_as_by_delivery_encode(self) -> None:
        with pytest.raises(ValueError):
            encode_run("p", "T", "s", None, [("ok", None), (float("nan"), None)], "t")


class TestDelivery:
    def test_seed_field_order_and_compact_json(self) -> None:
        delivery = Delivery("Client1", "T", "hi", "2024-01-24T10:25:37Z", "session-A")
        assert delivery.encode() == (
            b'{"publisher_name":"Client1","topic":"T","payload":"hi",'
            b'"timestamp":"2024-01-24T10:25:37Z","session_id":"session-A"}'
        )

    def test_user_is_added_when_known(self) -> None:
        delivery = Delivery("c", "T", None, "t", "s", user="alice")
        assert json.loads(delivery.encode())["user"] == "alice"

    def test_lone_surrogate_falls_back_to_escapes(self) -> None:
        delivery = Delivery("c", "T", "\ud800", "t", "s")
        encoded = delivery.encode()
        encoded.decode("utf-8")  # valid UTF-8
        assert json.loads(encoded)["payload"] == "\ud800"

    def test_not_json_payloads_are_refused(self) -> None:
        with pytest.raises(ValueError):
            Delivery("c", "T", float("nan"), "t", "s").encode()
        with pytest.raises(TypeError):
            Delivery("c", "T", {1, 2}, "t", "s").encode()

    def test_non_ascii_stays_readable(self) -> None:
        assert "héllo".encode() in Delivery("c", "T", "héllo", "t", "s").encode()

    def test_round_trip(self) -> None:
        delivery = Delivery("c", "T", {"a": 1}, "t", "s", user="u")
        assert Delivery.parse(delivery.encode().decode()) == delivery

    def test_parse_keeps_unknown_fields_apart(self) -> None:
        parsed = Delivery.parse('{"topic":"T","payload":1,"extra":true}')
        assert parsed.extra == {"extra": True} and parsed.payload == 1

    @pytest.mark.parametrize("text", ["pong", "[1]", '{"payload":1}', "error:{}"])
    def test_parse_rejects_non_deliveries(self, text: str) -> None:
        with pytest.raises(ProtocolError):
            Delivery.parse(text)


class TestErrors:
    def test_encode_and_parse(self) -> None:
        text = encode_error(ErrorCode.FORBIDDEN_SESSION, "nope", "subscribe")
        assert text.startswith("error:") and is_error_reply(text)
        assert json.loads(text[6:]) == {"code": "forbidden_session", "message": "nope", "command": "subscribe"}
        error = parse_error(text)
        assert (error.code, error.message) == ("forbidden_session", "nope")

    def test_command_is_optional(self) -> None:
        assert json.loads(encode_error("unknown_command", "x")[6:]) == {"code": "unknown_command", "message": "x"}

    def test_delivery_never_looks_like_an_error(self) -> None:
        assert not is_error_reply(Delivery("error:", "error:x", "error:", "t", "s").encode().decode())

    def test_garbled_error_still_parses(self) -> None:
        assert parse_error("error:oops").code == "unknown"


class TestCloseCodes:
    @pytest.mark.parametrize(
        "code, policy",
        [
            (CloseCode.SLOW_CONSUMER, ClosePolicy.BACK_OFF),
            (CloseCode.OVERLOADED, ClosePolicy.BACK_OFF),
            (CloseCode.SERVER_RESTARTING, ClosePolicy.RECONNECT_NOW),
            (CloseCode.UNAUTHORIZED, ClosePolicy.DO_NOT_RECONNECT),
            (CloseCode.TOKEN_EXPIRED, ClosePolicy.DO_NOT_RECONNECT),
            (CloseCode.FORBIDDEN, ClosePolicy.DO_NOT_RECONNECT),
            (4050, ClosePolicy.DO_NOT_RECONNECT),
            (4150, ClosePolicy.BACK_OFF),
            (4250, ClosePolicy.RECONNECT_NOW),
            (1001, ClosePolicy.RECONNECT_NOW),
            (1012, ClosePolicy.RECONNECT_NOW),
            (1002, ClosePolicy.DO_NOT_RECONNECT),
            (1008, ClosePolicy.DO_NOT_RECONNECT),
            (1006, ClosePolicy.BACK_OFF),
            (1009, ClosePolicy.BACK_OFF),
            (1011, ClosePolicy.BACK_OFF),
            (3999, ClosePolicy.BACK_OFF),
        ],
    )
    def test_policy(self, code: int, policy: ClosePolicy) -> None:
        assert close_policy(code) is policy

    def test_every_code_is_explained(self) -> None:
        assert set(CLOSE_CODE_EXPLANATIONS) == {int(code) for code in CloseCode}


class TestReconnectWindow:
    def test_a_window_of_a_second_or_less_is_the_plain_reason(self) -> None:
        assert restart_reason(0.3) == restart_reason(1.0) == "server restarting"

    def test_a_longer_window_is_named_rounded_up_and_read_back(self) -> None:
        assert restart_reason(6.44) == "server restarting; reconnect within 6.5 s"
        assert restart_reason(10.0) == "server restarting; reconnect within 10.0 s"
        assert reconnect_window(restart_reason(6.44)) == 6.5
        assert reconnect_window(restart_reason(1e9)) == 3600.0  # at most an hour, both ways
        assert len(restart_reason(1e9).encode()) <= 123  # fits a close frame

    @pytest.mark.parametrize("window", [
        "s", "-5 s", "1e9 s", "5 ms", "5 s trailing", "\u0665 s", "123456789 s", "0.2 s", "nan s", "1.2.3 s",
        "5 s; reconnect within 9 s",
    ])
    def test_malformed_and_hostile_reasons_give_the_usual_second(self, window: str) -> None:
        assert reconnect_window(f"server restarting; reconnect within {window}") == 1.0

    @pytest.mark.parametrize("reason", [
        "", "server restarting", "x" * 10_000, "; reconnect within 5 s", "going away; reconnect within 5 s",
        "Server restarting; reconnect within 5 s", " server restarting; reconnect within 5 s",
    ])
    def test_only_a_restart_names_a_window(self, reason: str) -> None:
        assert reconnect_window(reason) == 1.0  # the reason is "server restarting" alone or with the window

    def test_the_first_delay_is_a_random_part_of_the_window(self) -> None:
        named = "server restarting; reconnect within 6.5 s"
        assert first_delay(named, 0.5, rng=lambda: 1.0) == 6.5
        assert first_delay(named, 0.5, rng=lambda: 0.0) == 0.0
        assert first_delay("server restarting", 0.5, rng=lambda: 1.0) == 1.0  # the documented second
        assert first_delay("server restarting", 0.05, rng=lambda: 1.0) == 0.1  # twice a quick back-off's
        assert first_delay("server restarting", 5.0, rng=lambda: 1.0) == 1.0


class TestTimestamps:
    def test_format(self) -> None:
        from datetime import datetime

        from rusty_ws.protocol import rfc3339_now

        assert rfc3339_now(1706091937.5) == "2024-01-24T10:25:37.500000+00:00"
        assert rfc3339_now(1706091937.0) == "2024-01-24T10:25:37.000000+00:00"
        assert rfc3339_now(1706091938.999_999_9) == "2024-01-24T10:25:39.000000+00:00"  # rounds up a second
        assert rfc3339_now(1706091937.000_012) == "2024-01-24T10:25:37.000012+00:00"
        assert rfc3339_now(1706091937.012_345) == "2024-01-24T10:25:37.012345+00:00"
        assert rfc3339_now(1706091937.999_999) == "2024-01-24T10:25:37.999999+00:00"
        parsed = datetime.fromisoformat(rfc3339_now())
        assert parsed.utcoffset().total_seconds() == 0


class TestLimits:
    """MAX_JSON_DEPTH and the reserved name: what a hostile client tries first."""

    @pytest.mark.parametrize("depth, refused", [(1, False), (63, False), (64, True), (966, True), (100_000, True)])
    def test_payload_depth(self, depth: int, refused: bool) -> None:
        text = 'publish-json:{"topic":"T","payload":' + "[" * depth + "]" * depth + "}"
        if refused:
            with pytest.raises(ProtocolError) as caught:
                parse_command(text)
            assert caught.value.code == ErrorCode.INVALID_JSON
        else:
            assert isinstance(parse_command(text), Publish)

    def test_brackets_in_strings_do_not_count(self) -> None:
        payload = json.dumps({"text": "[" * 500, "list": [[[{"a": "{" * 500}]]]})
        assert parse_command('publish-json:{"topic":"T","payload":' + payload + "}").payload == json.loads(payload)

    def test_wide_is_not_deep(self) -> None:
        payload = json.dumps([[[{"a": [1]}]] for _ in range(10_000)])
        assert len(parse_command('publish-json:{"topic":"T","payload":' + payload + "}").payload) == 10_000

    @pytest.mark.parametrize("value, limit, deeper", [
        (1, 0, False), ([], 0, True), ([], 1, False), ({"a": [{}]}, 3, False), ({"a": [{}]}, 2, True),
        ([1, [2, [3]], {"x": "[[[["}], 3, False),
    ])
    def test_nested_deeper_than(self, value: object, limit: int, deeper: bool) -> None:
        assert nested_deeper_than(value, limit) is deeper

    def test_a_cyclic_value_ends(self) -> None:
        cycle: list = []
        cycle.append(cycle)
        assert nested_deeper_than(cycle, MAX_JSON_DEPTH)

    def test_loads_strict_takes_a_limit(self) -> None:
        assert loads_strict("[[1]]", max_depth=2) == [[1]]
        with pytest.raises(ValueError, match="deeper than 1"):
            loads_strict("[[1]]", max_depth=1)

    @pytest.mark.parametrize("name", ["server", "Server", "SERVER", " server\u00a0", "ſerver"])
    def test_server_is_reserved(self, name: str) -> None:
        for text in (f"register-name:{name}", "publish-json:" + json.dumps({"topic": "T", "publisher_name": name})):
            with pytest.raises(ProtocolError) as caught:
                parse_command(text)
            assert caught.value.code == ErrorCode.RESERVED_NAME
        with pytest.raises(ProtocolError):
            encode_register_name(name)  # the clients refuse it before sending

    @pytest.mark.parametrize("name", ["servers", "my server", "server-1", "serve"])
    def test_names_like_it_are_fine(self, name: str) -> None:
        assert parse_command(f"register-name:{name}") == RegisterName(name)

    def test_the_hub_publishes_as_the_reserved_name(self) -> None:
        assert SERVER_PUBLISHER == "server"


class TestAck:
    @pytest.mark.parametrize("args, text", [
        (("m-1",), 'ack:{"id":"m-1"}'),
        (("m-1", 3, "e"), 'ack:{"id":"m-1","offset":3,"epoch":"e"}'),
        (("m-1", 3, "e", 2), 'ack:{"id":"m-1","offset":3,"epoch":"e","delivered":2}'),
        (("m-1", None, None, 0), 'ack:{"id":"m-1","delivered":0}'),
    ])
    def test_round_trip(self, args: tuple, text: str) -> None:
        assert encode_ack(*args) == text
        assert Ack.parse(text) == Ack(*args)

    @pytest.mark.parametrize("delivered", ['"2"', "true", "null", "1.5"])
    def test_a_delivered_that_is_no_count_is_none(self, delivered: str) -> None:
        assert Ack.parse(f'ack:{{"id":"m","delivered":{delivered}}}').delivered is None


class TestTokenCommands:
    """``auth:{token}``, ``refresh:{token}`` and their replies (issue 13)."""

    def test_parse(self) -> None:
        from rusty_ws.protocol import Auth, Refresh

        assert parse_command("auth:abc.def.ghi") == Auth("abc.def.ghi")
        assert parse_command("refresh: abc.def.ghi ") == Refresh("abc.def.ghi")
        assert parse_command("auth:") == Auth("")  # refused by the hub as token_invalid, not here
        assert command_verb("auth:x") == "auth" and command_verb("refresh:x") == "refresh"

    def test_the_token_never_shows_in_repr(self) -> None:
        from rusty_ws.protocol import Auth, Refresh

        assert "secret" not in repr(Auth("secret")) + repr(Refresh("secret")) + str(Auth("secret"))

    def test_encoders(self) -> None:
        from rusty_ws.protocol import encode_auth, encode_refresh

        assert encode_auth(" t.o.k ") == "auth:t.o.k"
        assert encode_refresh("t.o.k") == "refresh:t.o.k"
        for bad in ["", "  ", "a\nb"]:
            with pytest.raises(ProtocolError) as refused:
                encode_auth(bad)
            assert refused.value.code == ErrorCode.TOKEN_INVALID

    def test_replies(self) -> None:
        from rusty_ws.protocol import Authenticated, Refreshed, encode_authenticated, encode_refreshed

        text = encode_authenticated("alice", "session-A", 3600)
        assert text == 'authenticated:{"sub":"alice","sid":"session-A","expires_in":3600}'
        assert Authenticated.parse(text) == Authenticated("alice", "session-A", 3600)
        assert encode_refreshed(59) == 'refreshed:{"expires_in":59}'
        assert Refreshed.parse('refreshed:{"expires_in":59}') == Refreshed(59)
        for bad in ['refreshed:{"expires_in":"59"}', "refreshed:[]", 'refreshed:{"expires_in":true}']:
            with pytest.raises(ProtocolError):
                Refreshed.parse(bad)

    def test_the_new_error_codes(self) -> None:
        assert {code.value for code in ErrorCode} >= {
            "forbidden_topic", "token_invalid", "token_expired", "token_mismatch", "token_required",
            "not_authenticated", "already_authenticated", "auth_not_first"}


class TestDeliveryEncoding:
    """``Delivery.encode`` builds the usual delivery (str fields, str payload) without a dict: the same bytes."""

    TEXTS = ("", "plain", 'q"uote \\ back/slash', "é ☃ 😀 \u2028\u2029", "\n\t\r\b\f\x00\x01\x1f\x7f",
             "\ud800 lone high", "lone low \udfff", "x" * 5000)

    @pytest.mark.parametrize("payload", TEXTS)
    @pytest.mark.parametrize("user", [None, "alice", "é\ud801"])
    def test_the_same_bytes_as_encoding_its_dict(self, payload: str, user: str | None) -> None:
        for name in ("anonymous", 'n"ame\u00e9', "\udfff"):
            delivery = Delivery(publisher_name=name, topic="t/é", payload=payload,
                                timestamp="2024-01-24T10:25:37.123456+00:00", session_id="s\x7f", user=user)
            encoded = delivery.encode()
            assert encoded == dumps_utf8(delivery.to_dict())
            assert json.loads(encoded)["payload"] == payload.encode("utf-8", "surrogatepass").decode(
                "utf-8", "surrogatepass")

    @pytest.mark.parametrize("payload", [1, 1.5, None, True, [1, "a"], {"a": {"b": "c"}}])
    def test_other_payloads_and_positions_take_the_dict(self, payload: object) -> None:
        delivery = Delivery("n", "t", payload, "ts", "s", user="u", offset=3, epoch="e1")
        assert delivery.encode() == dumps_utf8(delivery.to_dict())
        assert Delivery("n", "t", payload, "ts", "s").encode() == dumps_utf8(Delivery("n", "t", payload, "ts", "s").to_dict())

    def test_a_payload_that_is_not_json_still_raises(self) -> None:
        with pytest.raises(ValueError):
            Delivery("n", "t", float("nan"), "ts", "s").encode()
        with pytest.raises(TypeError):
            Delivery("n", "t", {1, 2}, "ts", "s").encode()
