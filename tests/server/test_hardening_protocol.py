"""What a hostile peer tries on the protocol, the broker and the tokens, against a real hub.

One test class per finding of the hardening issue: each test fails on the hub
before the fix. Redis tests run their own redis-server on a free loopback port
(``redis_support``); waits block on frames, sentinels or conditions, never on sleeps.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import websocket

from redis_support import (
    SENTINEL,
    RedisServer,
    publish_sentinel,
    publishes_landed,
    read_until_sentinel,
    redis_server,
)
from rusty_ws import create_app
from rusty_ws.brokers.redis import RedisBroker, channel_name, encode_envelope
from rusty_ws.config import Settings
from rusty_ws.exceptions import ProtocolError
from rusty_ws.protocol import (
    MAX_JSON_DEPTH,
    Delivery,
    encode_publish,
    encode_subscribe,
)
from rusty_ws.server.extension import PubSub
from rusty_ws.server.registry import Registry
from rusty_ws.server.state import state_of
from support import MS, SECRET, WAIT, RunningServer, error_of, http, login, running_server


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def nested(depth: int) -> str:
    """A JSON array nested ``depth`` deep: ``[[...]]``."""
    return "[" * depth + "]" * depth


def nested_value(depth: int) -> list[Any]:
    """The value of ``nested(depth)``, built without recursion."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def publish_nested(depth: int, topic: str = "T", session: str = "s") -> str:
    """A publish-json whose payload nests ``depth`` deep (the whole command one more)."""
    return f'publish-json:{{"topic":"{topic}","session_id":"{session}","payload":{nested(depth)}}}'


def sign(claims: dict[str, Any]) -> str:
    """A token signed with the test hub's own secret: only its claims are hostile."""
    return jwt.encode(claims, SECRET, algorithm="HS256")


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "mallory", "sid": "session-M", "iat": now, "exp": now + 600, **overrides}


def handshake(url: str, **kwargs: Any) -> tuple[int, Any]:
    """Open and close a WebSocket; (101, None) or the refusal's (status, JSON body)."""
    try:
        websocket.create_connection(url, timeout=WAIT, **kwargs).close()
    except websocket.WebSocketBadStatusException as exc:
        return exc.status_code, json.loads(exc.resp_body or b"null")
    return 101, None


# --------------------------------------------------------------------------- 1. nesting depth


class TestNestingDepth:
    @pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 100, 965, 966, 969, 990, 5000])
    def test_too_deep_is_invalid_json_and_the_connection_stays(self, server: RunningServer, depth: int) -> None:
        with server.connect() as client:
            client.command(encode_subscribe("T", "s"))
            error = error_of(client.command(publish_nested(depth)))
            assert (error["code"], error["command"]) == ("invalid_json", "publish-json")
            assert f"deeper than {MAX_JSON_DEPTH}" in error["message"]
            assert client.command(encode_publish("T", "after", session_id="s"))  # still open, still served

    def test_the_deepest_allowed_payload_is_delivered(self, server: RunningServer) -> None:
        with server.connect() as client:
            client.command(encode_subscribe("T", "s"))
            [delivery] = client.command(publish_nested(MAX_JSON_DEPTH - 1))
            assert json.loads(delivery)["payload"] == json.loads(nested(MAX_JSON_DEPTH - 1))

    @pytest.mark.parametrize("verb", ["subscribe-json", "history"])
    def test_other_json_commands_have_the_same_limit(self, server: RunningServer, verb: str) -> None:
        with server.connect() as client:
            error = error_of(client.command(f'{verb}:{{"topic":"T","x":{nested(966)}}}'))
            assert error["code"] == "invalid_json"

    def test_server_code_has_the_same_limit(self, server: RunningServer) -> None:
        pubsub: PubSub = state_of(server.app).pubsub
        deep = nested_value(MAX_JSON_DEPTH)  # one more than a payload may have
        for payload in (deep, nested_value(966), nested_value(5000)):
            with pytest.raises(ProtocolError) as caught:
                pubsub.publish("s", "T", payload, app=server.app)
            assert caught.value.code == "invalid_message"
        with server.connect() as client:
            client.command(encode_subscribe("T", "s"))
            pubsub.publish("s", "T", deep[0], app=server.app)  # 63 levels: fine
            assert json.loads(client.recv())["payload"] == deep[0]

    def test_with_redis_a_deep_message_is_delivered_nowhere(self, redis: RedisServer) -> None:
        # Before: depth 965 reached the publishing node's subscribers and no other (its
        # envelope, two levels deeper, failed to encode); 966 closed the publisher with 1011.
        with running_server(broker_url=redis.url) as a, running_server(broker_url=redis.url) as b, \
                a.connect() as here, b.connect() as there:
            for client in (here, there):
                client.command(encode_subscribe("T", "s"))
                client.command(encode_subscribe(SENTINEL, "s"))
            for depth in (MAX_JSON_DEPTH, 965, 966):
                assert error_of(here.command(publish_nested(depth)))["code"] == "invalid_json"
            replies = here.command(publish_nested(MAX_JSON_DEPTH - 1))  # the deepest allowed, delivered here
            replies += publishes_landed(here, "s")  # (at once, or through Redis with Redis history)...
            publish_sentinel(redis, "s")
            assert len(replies) + len(read_until_sentinel(here)) == 1
            [remote] = read_until_sentinel(there)  # ...and there, and nothing else anywhere
            assert remote["payload"] == json.loads(nested(MAX_JSON_DEPTH - 1))

    def test_a_forged_deep_envelope_is_dropped(self, redis: RedisServer) -> None:
        with running_server(broker_url=redis.url) as node, node.connect() as client:
            client.command(encode_subscribe("T", "s"))
            client.command(encode_subscribe(SENTINEL, "s"))
            forged = (b'{"v":1,"node":"intruder","delivery":{"publisher_name":"x","topic":"T",'
                      b'"payload":' + nested(960).encode() + b',"timestamp":"t","session_id":"s"}}')
            with contextlib.closing(redis.client()) as intruder:
                assert intruder.publish(channel_name("rusty_ws", "T", "s"), forged) == 1
            publish_sentinel(redis, "s")
            assert read_until_sentinel(client) == []
            assert node.hub.broker.status()["dropped"] == 1


# --------------------------------------------------------------------------- 2. the name "server"


class TestServerNameIsReserved:
    @pytest.mark.parametrize("name", ["server", "Server", " SERVER "])
    def test_register_name(self, server: RunningServer, name: str) -> None:
        with server.connect() as client:
            error = error_of(client.command(f"register-name:{name}"))
            assert (error["code"], error["command"]) == ("reserved_name", "register-name")
            client.command(encode_subscribe("T"))
            [delivery] = client.command(encode_publish("T", 1))
            assert json.loads(delivery)["publisher_name"] == "anonymous"  # the name did not stick

    @pytest.mark.parametrize("token", [False, True], ids=["anonymous", "with-token"])
    def test_publisher_name(self, server: RunningServer, token: bool) -> None:
        with server.connect(login(server, session_id="s") if token else None) as client:
            client.command(encode_subscribe("T", "s"))
            body = {"topic": "T", "session_id": "s", "publisher_name": "server", "payload": 1, "id": "p-1"}
            error = error_of(client.command("publish-json:" + json.dumps(body)))
            assert (error["code"], error["id"]) == ("reserved_name", "p-1")  # and nothing delivered

    def test_only_the_hub_publishes_as_server_and_without_user(self, server: RunningServer) -> None:
        with server.connect() as client:
            client.command(encode_subscribe("T", "s"))
            state_of(server.app).pubsub.publish("s", "T", "from the hub", app=server.app)
            message = json.loads(client.recv())
            assert message["publisher_name"] == "server" and "user" not in message


# --------------------------------------------------------------------------- 3. envelope size


class TestRedisEnvelopeSize:
    def test_a_forged_20_mb_message_is_dropped_and_subscribers_stay(self, redis: RedisServer,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
        with running_server(broker_url=redis.url) as node, node.connect() as client:
            client.command(encode_subscribe("T", "s"))
            client.command(encode_subscribe(SENTINEL, "s"))
            forged = encode_envelope("intruder", Delivery(publisher_name="x", topic="T", payload="x" * 20_000_000,
                                                          timestamp="t", session_id="s"))
            with contextlib.closing(redis.client()) as intruder:
                assert intruder.publish(channel_name("rusty_ws", "T", "s"), forged) == 1
            publish_sentinel(redis, "s")
            assert read_until_sentinel(client) == []  # before: closed with 4100, slow consumer
            assert node.hub.broker.status()["dropped"] == 1
            assert "more than the 4194304 an envelope may have" in caplog.text
            replies = client.command(encode_publish("T", "still here", session_id="s"))
            assert json.loads((replies or [client.recv()])[0])["payload"] == "still here"  # (through Redis: later)

    def test_a_node_refuses_to_send_what_no_node_would_take(self, redis: RedisServer) -> None:
        # A publish within the message limit whose delivery is far bigger: 1e15 re-encodes as
        # 1000000000000000.0, so 30 KB of text become a 110 KB envelope, past the 48 KiB bound.
        limits = {"max_message_size": 32 * 1024, "max_queued_bytes": 48 * 1024}
        with running_server(broker_url=redis.url, **limits) as a, \
                running_server(broker_url=redis.url, **limits) as b, \
                a.connect() as here, b.connect() as there:
            for client in (here, there):
                client.command(encode_subscribe("T", "s"))
                client.command(encode_subscribe(SENTINEL, "s"))
            text = '{"topic": "T", "session_id": "s", "id": "big", "payload": [' + ",".join(["1e15"] * 6000) + "]}"
            error = error_of(here.command("publish-json:" + text))
            assert (error["code"], error["id"]) == ("invalid_message", "big")
            assert publishes_landed(here, "s") == []
            publish_sentinel(redis, "s")
            assert read_until_sentinel(here) == [] and read_until_sentinel(there) == []


# --------------------------------------------------------------------------- 4. /healthz


class FakeSubscriber:
    """A registry handle that is no connection (the registry never calls it)."""


class TestHealthz:
    def test_counts_are_exact_and_cost_nothing_at_scale(self, server: RunningServer) -> None:
        registry = server.hub.registry
        subscribers = [FakeSubscriber() for _ in range(100)]
        for n, subscriber in enumerate(subscribers):  # 100,000 subscriptions, 1,000 topics, 100 sessions
            for topic in range(1000):
                registry.subscribe(subscriber, f"T{topic}", f"s{n}")
        with server.connect() as client:  # one connection in a session of its own, one in s0
            client.command("register-session:lonely")
            with server.connect() as other:
                other.command("register-session:s0")
                health = http("GET", server.http_url + "/healthz")[2]
                assert (health["connections"], health["sessions"], health["topics"], health["subscriptions"]) == \
                    (2, 101, 1000, 100_000)
                best = min(_duration(server.hub.counts) for _ in range(5))
                assert best < 5 * MS, f"counts() took {best * 1000:.1f} ms"  # before: ~45 ms, under the lock
        for subscriber in subscribers:
            registry.remove(subscriber)
        server.wait_connections(0)
        health = http("GET", server.http_url + "/healthz")[2]
        assert (health["sessions"], health["topics"], health["subscriptions"]) == (0, 0, 0)

    @pytest.mark.parametrize("mode, status, body", [
        ("full", 200, None), ("minimal", 200, {"status": "ok"}), ("off", 404, None),
    ])
    def test_modes(self, mode: str, status: int, body: Any) -> None:
        with running_server(healthz=mode) as server:
            got_status, _, got = http("GET", server.http_url + "/healthz")
            assert got_status == status
            if mode == "full":
                assert {"connections", "sessions", "broker"} <= set(got)
            elif body is not None:
                assert got == body

    def test_a_bad_mode_stops_start_up(self) -> None:
        with pytest.raises(ValueError, match="RUSTY_WS_HEALTHZ"):
            create_app({"RUSTY_WS_JWT_SECRET_KEY": SECRET, "RUSTY_WS_HEALTHZ": "verbose"})


class TestRegistryCounts:
    """The counts kept as things change equal the counts a walk of the registry finds."""

    def test_churn(self) -> None:
        rng = random.Random(7)
        registry = Registry(max_subscriptions=5)
        subscribers = [FakeSubscriber() for _ in range(20)]
        present: dict[FakeSubscriber, str] = {}  # connections and their session
        for _ in range(5000):
            who, topic, session = rng.choice(subscribers), f"T{rng.randrange(6)}", f"s{rng.randrange(6)}"
            action = rng.randrange(5)
            if action == 0:
                with contextlib.suppress(ProtocolError):  # too_many_subscriptions leaves no trace
                    registry.subscribe(who, topic, session)
            elif action == 1:
                registry.unsubscribe(who, topic, session)
            elif action == 2:
                registry.remove(who)
            elif action == 3 and who not in present:
                present[who] = session
                registry.enter_session(session)
            elif action == 4 and who in present:
                registry.leave_session(present.pop(who))
            keys = registry.keys()
            counts = registry.counts()
            assert counts.topics == len({t for t, _ in keys})
            assert counts.sessions == len({s for _, s in keys})
            assert counts.subscriptions == sum(len(registry.subscribers(*key)) for key in keys)
            assert counts.subscribers == sum(1 for sub in subscribers if registry.subscriptions_of(sub))
            assert counts.sessions_in_use == len({s for _, s in keys} | set(present.values()))

    def test_keys_among(self) -> None:
        registry = Registry()
        registry.subscribe(FakeSubscriber(), "T", "s")
        assert registry.keys([("T", "s"), ("T", "other"), ("U", "s")]) == [("T", "s")]
        assert registry.keys([]) == []


def _duration(call: Any) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- 5. tokens


class TestTokens:
    @pytest.mark.parametrize("bad", [
        {"exp": float("inf")}, {"exp": float("nan")}, {"iat": float("-inf")},
        {"nbf": 4_000_000_000}, {"nbf": float("nan")},
        {"sid": "a|b"}, {"sid": "s\n"}, {"sid": "s" * 257},
        {"auth_time": float("inf")},
    ], ids=repr)
    def test_refused_at_the_handshake_and_by_refresh(self, server: RunningServer, bad: dict[str, Any]) -> None:
        token = sign(claims(**bad))
        status, body = handshake(f"{server.ws_url}?token={token}")
        assert (status, body["code"]) == (401, "token_invalid")
        status, _, body = http("POST", server.http_url + "/auth/refresh", headers={"Authorization": f"Bearer {token}"})
        assert (status, body["code"]) == (401, "token_invalid")

    def test_nbf_in_the_past_is_fine(self, server: RunningServer) -> None:
        assert handshake(f"{server.ws_url}?token={sign(claims(nbf=int(time.time()) - 5))}")[0] == 101

    def test_a_refresh_chain_ends_at_its_max_lifetime(self) -> None:
        with running_server(jwt_max_lifetime=1000) as server:
            status, _, reply = http("POST", server.http_url + "/auth/token",
                                    {"username": "testuser", "password": "password"})
            first = jwt.decode(reply["token"], SECRET, algorithms=["HS256"])
            assert status == 200 and first["auth_time"] == first["iat"]
            assert first["exp"] - first["iat"] <= 1000 and reply["expires_in"] <= 1000  # not the 3600 lifetime

            now = int(time.time())
            old_login = sign(claims(auth_time=now - 900))  # 100 s of the chain left
            status, _, reply = http("POST", server.http_url + "/auth/refresh",
                                    headers={"Authorization": f"Bearer {old_login}"})
            refreshed = jwt.decode(reply["token"], SECRET, algorithms=["HS256"])
            assert status == 200 and refreshed["auth_time"] == now - 900  # carried, not restarted
            assert refreshed["exp"] == now + 100 and 98 <= reply["expires_in"] <= 100

            for past in (sign(claims(auth_time=now - 1000)), sign(claims(iat=now - 2000))):  # no auth_time: iat
                status, _, reply = http("POST", server.http_url + "/auth/refresh",
                                        headers={"Authorization": f"Bearer {past}"})
                assert (status, reply["code"]) == (401, "token_expired")


# --------------------------------------------------------------------------- 6. concurrent logins


class TestConcurrentLogins:
    def test_at_most_the_limit_check_passwords_and_the_rest_get_503(self) -> None:
        gate = threading.Event()
        running = threading.Condition()
        inside, most = [0], [0]

        def slow_check(username: str, password: str) -> bool:
            with running:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
                running.notify_all()
            try:
                return gate.wait(WAIT)
            finally:
                with running:
                    inside[0] -= 1

        app = create_app({"RUSTY_WS_JWT_SECRET_KEY": SECRET, "RUSTY_WS_MAX_CONCURRENT_LOGINS": 2,
                          "RUSTY_WS_LOGIN_QUEUE_TIMEOUT": 100 * MS})
        state_of(app).pubsub.check_credentials(slow_check)
        with running_server(app) as server:
            results: list[tuple[int, dict[str, str], Any]] = []

            def attempt() -> None:
                result = http("POST", server.http_url + "/auth/token", {"username": "u", "password": "p"})
                with running:
                    results.append(result)
                    running.notify_all()

            threads = [threading.Thread(target=attempt, name=f"test-login-{n}") for n in range(6)]
            for thread in threads:
                thread.start()
            with running:
                assert running.wait_for(lambda: inside[0] == 2, WAIT)
            with running:  # the four that found no free check answer after the queue timeout
                assert running.wait_for(lambda: len(results) == 4, WAIT)
                refused = list(results)
            gate.set()
            for thread in threads:
                thread.join(WAIT)
            assert most[0] == 2  # before: all six at once
            assert [(status, body["code"]) for status, _, body in refused] == [(503, "too_many_logins")] * 4
            assert all(head["Retry-After"] == "1" for _, head, _ in refused)
            assert sorted(status for status, _, _ in results) == [200, 200, 503, 503, 503, 503]


# --------------------------------------------------------------------------- 7. Host and DNS rebinding


class TestAllowedHosts:
    def test_dns_rebinding_is_refused_when_origins_are_restricted(self) -> None:
        with running_server(cors_origins=["https://app.example.com"]) as server:
            # evil.example resolves to the hub now: the page is "same-origin" with it.
            evil = f"evil.example:{server.port}"
            status, body = handshake(server.ws_url, host=evil, origin=f"http://{evil}")
            assert (status, body["code"]) == (403, "forbidden_host")  # before: 101, as the hub's own origin
            status, _, body = http("GET", server.http_url + "/healthz", headers={"Host": evil})
            assert (status, body["code"]) == (403, "forbidden_host")
            status, _, _ = http("POST", server.http_url + "/auth/token", {"username": "testuser", "password": "password"},
                                headers={"Host": evil, "Content-Type": "application/json"})
            assert status == 403
            # Loopback names, and the allowed origins' hosts, still pass.
            assert handshake(server.ws_url, host=f"localhost:{server.port}", origin="https://app.example.com")[0] == 101
            assert handshake(server.ws_url, host="app.example.com", suppress_origin=True)[0] == 101
            assert handshake(server.ws_url)[0] == 101

    def test_an_explicit_list(self) -> None:
        with running_server(cors_origins=["https://app.example.com"],
                            allowed_hosts="hub.example.com, 127.0.0.1") as server:
            assert handshake(server.ws_url, host="HUB.example.com:8443", origin="https://hub.example.com:8443")[0] == 101
            assert handshake(server.ws_url)[0] == 101
            assert handshake(server.ws_url, host=f"localhost:{server.port}")[0] == 403

    def test_any_host_while_origins_are_any(self, server: RunningServer) -> None:
        assert handshake(server.ws_url, host="whatever.example", origin="http://whatever.example")[0] == 101


# --------------------------------------------------------------------------- settings


class TestSettings:
    def test_defaults(self) -> None:
        settings = Settings.from_config({})
        assert (settings.jwt_max_lifetime, settings.max_concurrent_logins, settings.login_queue_timeout,
                settings.healthz, settings.allowed_hosts) == (86400, 4, 5.0, "full", ("*",))

    @pytest.mark.parametrize("key, value", [
        ("JWT_MAX_LIFETIME", -1), ("JWT_MAX_LIFETIME", 1.5), ("MAX_CONCURRENT_LOGINS", 0),
        ("LOGIN_QUEUE_TIMEOUT", -1), ("HEALTHZ", "everything"), ("ALLOWED_HOSTS", 5),
    ])
    def test_bad_values_name_the_key(self, key: str, value: Any) -> None:
        with pytest.raises(ValueError, match=f"RUSTY_WS_{key}"):
            Settings.from_config({f"RUSTY_WS_{key}": value})

    def test_env_values(self) -> None:
        settings = Settings.from_config({"RUSTY_WS_ALLOWED_HOSTS": "a.example, B.example:8443",
                                         "RUSTY_WS_HEALTHZ": "Minimal"})
        assert settings.allowed_hosts == ("a.example", "b.example:8443") and settings.healthz == "minimal"
        assert settings.host_allowed("a.example:1") and settings.host_allowed("b.example:8443")
        assert not settings.host_allowed("b.example:80") and not settings.host_allowed(None)


def test_redis_broker_gets_the_outbox_bound(redis: RedisServer) -> None:
    with running_server(broker_url=redis.url, max_message_size=1000, max_queued_bytes=17_500) as node:
        broker = node.hub.broker
        assert isinstance(broker, RedisBroker) and broker.max_envelope_size == 17_500
