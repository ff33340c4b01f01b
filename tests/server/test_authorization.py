"""Who may use which session and topic (issue 13): users file, app hooks, anonymous patterns, dev mode.

Every rule allowed and refused, against a real hub: ``/auth/token`` (password
first, then the policy), and each command that names or implies a session
(``register-session``, ``subscribe``, ``subscribe-json``, ``unsubscribe``,
``publish-json``, ``history``) on token and anonymous connections; then the
per-topic permissions and ``RUSTY_WS_SERVER_ONLY_TOPICS``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.security import generate_password_hash

from rusty_ws import PubSub
from rusty_ws.protocol import (
    Ack,
    HistoryReply,
    Subscribed,
    encode_history,
    encode_ping,
    encode_publish,
    encode_register_session,
    encode_subscribe,
    encode_subscribe_json,
    encode_unsubscribe,
)
from rusty_ws.server.access import TopicAction
from rusty_ws.server.state import state_of
from support import Client, RunningServer, error_of, http, hub_config, login, running_server

#: Cheap hashes: the tests check rules, not scrypt.
FAST_HASH = "pbkdf2:sha256:1000"


def users_file(tmp_path: Path, entries: dict[str, Any]) -> str:
    """A users file; an entry given as ``(password, extra)`` becomes an object, a bare password a hash."""
    data: dict[str, Any] = {}
    for name, entry in entries.items():
        if isinstance(entry, tuple):
            password, extra = entry
            data[name] = {"password_hash": generate_password_hash(password, method=FAST_HASH), **extra}
        else:
            data[name] = generate_password_hash(entry, method=FAST_HASH)
    path = tmp_path / "users.json"
    path.write_text(json.dumps(data))
    return str(path)


def token_status(server: RunningServer, username: str, password: str, session_id: str | None = None
                 ) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"username": username, "password": password}
    if session_id is not None:
        body["session_id"] = session_id
    status, _, reply = http("POST", server.http_url + "/auth/token", body)
    return status, reply


#: Every command that names a session, as (name, build(session) -> text).
NAMING: dict[str, Callable[[str], str]] = {
    "register-session": encode_register_session,
    "subscribe": lambda s: encode_subscribe("T", s),
    "subscribe-json": lambda s: encode_subscribe_json("T", s),
    "unsubscribe": lambda s: encode_unsubscribe("T", s),
    "publish-json": lambda s: encode_publish("T", "x", session_id=s),
    "history": lambda s: encode_history("T", s),
}
#: The same commands without a session: they act on the connection's own.
IMPLYING: dict[str, str] = {
    "subscribe": encode_subscribe("T"),
    "subscribe-json": encode_subscribe_json("T"),
    "unsubscribe": encode_unsubscribe("T"),
    "publish-json": encode_publish("T", "x"),
    "history": encode_history("T"),
}


def refused(client: Client, text: str, code: str = "forbidden_session") -> dict[str, Any]:
    error = error_of(client.command(text))
    assert error["code"] == code, error
    return error


def allowed(client: Client, text: str) -> None:
    for reply in client.command(text):
        assert not reply.startswith("error:"), (text, reply)


class TestUsersFile:
    @pytest.fixture
    def server(self, tmp_path: Path) -> RunningServer:
        path = users_file(tmp_path, {
            "plain": "pw-plain",
            "alice": ("wonderland", {"sessions": ["session-alice", "team-7-*"], "admin": True}),
            "bob": ("builder", {"sessions": []}),
            "carol": ("c", {"sessions": ["exact"]}),
        })
        with running_server(users_file=path) as running:
            yield running

    def test_a_plain_entry_has_only_its_own_session(self, server: RunningServer) -> None:
        assert token_status(server, "plain", "pw-plain")[0] == 200
        assert token_status(server, "plain", "pw-plain", "session-plain")[0] == 200
        status, body = token_status(server, "plain", "pw-plain", "session-alice")
        assert (status, body["code"]) == (403, "forbidden_session") and body["error"]

    def test_an_empty_sessions_list_means_the_same(self, server: RunningServer) -> None:
        assert token_status(server, "bob", "builder")[0] == 200
        assert token_status(server, "bob", "builder", "team-7-x")[0] == 403

    def test_patterns_grant_sessions(self, server: RunningServer) -> None:
        for session in ["session-alice", "team-7-", "team-7-blue", "team-7-*"]:
            assert token_status(server, "alice", "wonderland", session)[0] == 200, session
        for session in ["team-8-blue", "Team-7-blue", "team-7", "session-bob"]:
            assert token_status(server, "alice", "wonderland", session)[0] == 403, session

    def test_without_session_id_the_default_is_checked_like_any_other(self, server: RunningServer) -> None:
        # carol lists sessions, and session-carol is not among them.
        assert token_status(server, "carol", "c")[0] == 403
        assert token_status(server, "carol", "c", "exact")[0] == 200

    def test_credentials_come_first(self, server: RunningServer) -> None:
        for username, password in [("alice", "wrong"), ("nobody", "wonderland")]:
            status, body = token_status(server, username, password, "session-forbidden-to-all")
            assert (status, body["code"]) == (401, "bad_credentials")

    def test_a_token_connection_may_use_every_session_granted_to_its_user(self, server: RunningServer) -> None:
        token = login(server, "alice", "wonderland", "session-alice")
        with server.connect(token) as client:
            for build in NAMING.values():
                allowed(client, build("team-7-blue"))
                allowed(client, build("session-alice"))
                refused(client, build("team-8"))
                refused(client, build("session-bob"))

    def test_a_plain_users_token_may_use_only_its_sid_and_its_own_session(self, server: RunningServer) -> None:
        token = login(server, "plain", "pw-plain")
        with server.connect(token) as client:
            for build in NAMING.values():
                allowed(client, build("session-plain"))
                refused(client, build("session-alice"))

    def test_the_tokens_sid_is_always_allowed(self, server: RunningServer) -> None:
        # A token the hub signed for a session the policy does not list (rusty-ws token, tokens.issue).
        with server.connect(server.token("plain", "issued-by-the-app")) as client:
            for text in IMPLYING.values():
                allowed(client, text)
            allowed(client, encode_subscribe("T", "issued-by-the-app"))
            refused(client, encode_subscribe("T", "other"))

    def test_a_granted_register_session_moves_the_connection(self, server: RunningServer) -> None:
        token = login(server, "alice", "wonderland", "session-alice")
        with server.connect(token) as client, server.connect() as watcher:
            watcher.command(encode_subscribe("T", "team-7-blue"))
            allowed(client, encode_register_session("team-7-blue"))
            sub = Subscribed.parse(client.command(encode_subscribe_json("T"))[0])
            assert sub.session_id == "team-7-blue"
            client.send(encode_publish("T", "moved"))
            assert [json.loads(m)["session_id"] for m in client.sync()] == ["team-7-blue"]  # its own
            assert [json.loads(m)["session_id"] for m in watcher.sync()] == ["team-7-blue"]
            refused(client, encode_register_session("team-8"))
            client.command(encode_publish("T", "still"))  # its pong: the publish is done
            assert [json.loads(m)["payload"] for m in watcher.sync()] == ["still"]  # still in team-7-blue

    def test_a_refused_command_changes_nothing(self, server: RunningServer) -> None:
        token = login(server, "plain", "pw-plain")
        with server.connect(token) as client, server.connect() as victim:
            victim.command(encode_subscribe("T", "session-alice"))
            error = refused(client, encode_publish("T", "x", session_id="session-alice", id="p-1"))
            assert error["id"] == "p-1" and "session-alice" in error["message"]
            refused(client, encode_subscribe("T", "session-alice"))
            assert victim.sync() == []
            assert server.hub.counts()["subscriptions"] == 1  # the victim's only

    def test_admin_is_read(self, server: RunningServer) -> None:
        assert state_of(server.app).users.admins() == ["alice"]


class TestAppHook:
    def make(self, policy: Callable[[str | None, str], bool], decorator: bool, **settings: Any) -> Flask:
        app = Flask(__name__)
        app.config.update(hub_config(**settings))
        if decorator:
            pubsub = PubSub(app)
            pubsub.session_policy(policy)
        else:
            PubSub(app, session_policy=policy)
        return app

    @pytest.mark.parametrize("decorator", [False, True])
    def test_the_hook_decides_for_users(self, decorator: bool) -> None:
        calls: list[tuple[str | None, str]] = []

        def policy(username: str | None, session_id: str) -> bool:
            calls.append((username, session_id))
            return username == "testuser" and session_id.startswith("team-")

        with running_server(self.make(policy, decorator)) as server:
            assert token_status(server, "testuser", "password", "team-1")[0] == 200
            assert token_status(server, "testuser", "password", "session-testuser")[0] == 403
            assert token_status(server, "testuser", "wrong", "team-1")[0] == 401  # the hook is not asked
            assert calls == [("testuser", "team-1"), ("testuser", "session-testuser")]
            token = login(server, session_id="team-1")
            calls.clear()
            with server.connect(token) as client:
                allowed(client, encode_subscribe("T"))  # the sid: the hook is not asked
                allowed(client, encode_subscribe("T", "team-2"))
                refused(client, encode_publish("T", session_id="other"))
            assert calls == [("testuser", "team-2"), ("testuser", "other")]

    def test_anonymous_connections_ask_the_hook_with_none(self) -> None:
        calls: list[tuple[str | None, str]] = []

        def policy(username: str | None, session_id: str) -> bool:
            calls.append((username, session_id))
            return session_id != "secret"

        with running_server(self.make(policy, True)) as server, server.connect() as client:
            allowed(client, encode_subscribe("T"))
            refused(client, encode_subscribe("T", "secret"))
        assert calls == [(None, "default"), (None, "secret")]

    def test_the_anonymous_patterns_bound_the_hook(self) -> None:
        with running_server(self.make(lambda username, session: True, True,
                                      anonymous_sessions="public-*")) as server, server.connect() as client:
            allowed(client, encode_subscribe("T", "public-1"))
            refused(client, encode_subscribe("T", "private"))

    def test_a_raising_hook_refuses(self, caplog: pytest.LogCaptureFixture) -> None:
        def policy(username: str | None, session_id: str) -> bool:
            raise RuntimeError("database down")

        with running_server(self.make(policy, False)) as server:
            assert token_status(server, "testuser", "password")[0] == 403
            with server.connect() as client:
                refused(client, encode_subscribe("T"))
        assert "database down" in caplog.text

    def test_a_credential_hook_without_a_policy_grants_only_the_own_session(self) -> None:
        app = Flask(__name__)
        app.config.update(hub_config())
        pubsub = PubSub(app, check_credentials=lambda username, password: password == "open")
        with running_server(app) as server:
            assert token_status(server, "dave", "open")[0] == 200
            assert token_status(server, "dave", "open", "session-dave")[0] == 200
            assert token_status(server, "dave", "open", "team-1")[0] == 403
            assert token_status(server, "testuser", "password")[0] == 401  # no demo user
            assert pubsub.state(app).access.development_mode is False


class TestAnonymous:
    def test_any_session_by_default(self, server: RunningServer) -> None:
        with server.connect() as client:
            for build in NAMING.values():
                allowed(client, build("any-session"))
            for text in IMPLYING.values():
                allowed(client, text)

    @pytest.mark.parametrize("setting", ["public-*, lobby", '["public-*", "lobby"]', ["public-*", "lobby"]])
    def test_patterns_confine_them_default_included(self, setting: Any) -> None:
        with running_server(anonymous_sessions=setting) as server, server.connect() as client:
            for build in NAMING.values():
                allowed(client, build("public-1"))
                allowed(client, build("lobby"))
                refused(client, build("private"))
                refused(client, build("lobby-2"))
            allowed(client, encode_register_session("lobby"))
            for text in IMPLYING.values():
                allowed(client, text)  # now in lobby

    def test_the_default_session_is_checked_like_any_other(self) -> None:
        with running_server(anonymous_sessions="public-*") as server, server.connect() as client:
            for text in IMPLYING.values():
                refused(client, text)  # default is no public-* session
            assert client.command(encode_ping()) == []

    def test_an_empty_list_allows_no_session(self) -> None:
        with running_server(anonymous_sessions=[]) as server:
            with server.connect() as client:
                refused(client, encode_subscribe("T", "x"))
            # Token connections are not anonymous: their sid still works.
            with server.connect(server.token("alice", "s")) as client:
                allowed(client, encode_subscribe("T"))


class TestDevelopmentMode:
    def test_the_demo_user_may_have_any_session(self, server: RunningServer) -> None:
        for session in ["session-testuser", "session-A", "anything"]:
            assert token_status(server, "testuser", "password", session)[0] == 200
        with server.connect(login(server, session_id="session-A")) as client:
            for build in NAMING.values():
                allowed(client, build("session-B"))

    def test_the_seed_rust_clients_way_works(self, server: RunningServer) -> None:
        # connect_with_auth registers and subscribes in session-{client_name}, whatever the token's sid.
        token = login(server)  # session-testuser
        with server.connect(token) as client, server.connect() as watcher:
            watcher.command(encode_subscribe("Hello", "session-Client1"))
            allowed(client, encode_register_session("session-Client1"))
            allowed(client, encode_subscribe("Hello", "session-Client1"))
            client.command(encode_publish("Hello", "hi"))
            [message] = [json.loads(m) for m in watcher.sync()]
            assert (message["session_id"], message["user"]) == ("session-Client1", "testuser")

    def test_other_users_tokens_keep_the_default_rule(self, server: RunningServer) -> None:
        # Only testuser is the demo user; a token the app made for alice is not.
        with server.connect(server.token("alice", "session-A")) as client:
            allowed(client, encode_subscribe("T", "session-A"))
            allowed(client, encode_subscribe("T", "session-alice"))
            refused(client, encode_subscribe("T", "session-B"))


class TestTopics:
    def test_server_only_topics_may_be_subscribed_not_published(self) -> None:
        with running_server(server_only_topics="system.*, Announcements") as server:
            token = server.token("alice", "s")
            with server.connect() as anonymous, server.connect(token) as user:
                for client in (anonymous, user):
                    allowed(client, encode_subscribe("system.time", "s"))
                    allowed(client, encode_subscribe_json("Announcements", "s"))
                    HistoryReply.parse(client.command(encode_history("system.time", "s"))[0])
                    error = refused(client, encode_publish("system.time", "x", session_id="s", id="i"),
                                    "forbidden_topic")
                    assert error["id"] == "i" and error["command"] == "publish-json"
                    refused(client, encode_publish("Announcements", session_id="s"), "forbidden_topic")
                    allowed(client, encode_publish("system", session_id="s"))  # no match: allowed
                state_of(server.app).pubsub.publish("s", "system.time", 1, app=server.app)  # the server may
                for client in (anonymous, user):
                    assert [json.loads(m)["topic"] for m in client.sync()] == ["system.time"]

    def test_the_permissions_hook(self) -> None:
        calls: list[tuple[Any, ...]] = []

        def permissions(username: str | None, session_id: str, topic: str, action: TopicAction) -> bool:
            calls.append((username, session_id, topic, action))
            return not topic.startswith("locked") and (action == "subscribe" or username is not None)

        app = Flask(__name__)
        app.config.update(hub_config())
        pubsub = PubSub(app)
        assert pubsub.permissions(permissions) is permissions
        with running_server(app) as server:
            with server.connect() as anonymous, server.connect(server.token("alice", "s")) as user:
                allowed(anonymous, encode_subscribe("T", "s"))
                refused(anonymous, encode_publish("T", "x", session_id="s"), "forbidden_topic")
                refused(anonymous, encode_subscribe("locked", "s"), "forbidden_topic")
                refused(anonymous, encode_subscribe_json("locked", "s"), "forbidden_topic")
                refused(anonymous, encode_history("locked", "s"), "forbidden_topic")
                allowed(anonymous, encode_unsubscribe("locked", "s"))  # never asked
                ack = Ack.parse(user.command(encode_publish("T", "y", session_id="s", id="a"))[0])
                assert ack.id == "a"
                assert [json.loads(m)["payload"] for m in anonymous.sync()] == ["y"]
                assert server.hub.counts()["subscriptions"] == 1
        assert calls == [
            (None, "s", "T", "subscribe"), (None, "s", "T", "publish"), (None, "s", "locked", "subscribe"),
            (None, "s", "locked", "subscribe"), (None, "s", "locked", "subscribe"), ("alice", "s", "T", "publish"),
        ]
        assert all(isinstance(call[3], TopicAction) for call in calls)

    def test_the_session_is_checked_before_the_topic(self) -> None:
        calls = []
        app = Flask(__name__)
        app.config.update(hub_config(anonymous_sessions="public"))
        PubSub(app, permissions=lambda *args: calls.append(args) or True)
        with running_server(app) as server, server.connect() as client:
            refused(client, encode_subscribe("T", "private"), "forbidden_session")
            assert calls == []
