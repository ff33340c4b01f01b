"""The seed's Rust examples, line for line in Python, against a real hub. No sleeps."""

from __future__ import annotations

import queue
import threading
from datetime import datetime, timezone

import pytest

from rusty_ws import BadCredentials, Delivery, ServerError, WsClient
from rusty_ws.client.tokens import Credentials
from support import WAIT, RunningServer, running_server


def test_complete_rust_example(server: RunningServer) -> None:
    url = server.ws_url
    session_id = "session-A"
    client_name = "Client1"
    # Its own queue, not support.messages(): the seed's on_message lines are mirrored one for one,
    # and one queue for both topics shows which callback ran, in order.
    received: queue.Queue = queue.Queue()

    # let mut client = WsClient::connect_with_session(client_name, session_id, url).await.unwrap();
    client = WsClient.connect_with_session(client_name, session_id, url)
    # client.on_message("DetectCustomerEvent", move |msg| { println!(...) });
    client.on_message("DetectCustomerEvent", lambda msg: received.put(("DetectCustomerEvent", msg)))
    client.on_message("NetworkConnectedEvent", lambda msg: received.put(("NetworkConnectedEvent", msg)))
    # client.subscribe(client_name, "DetectCustomerEvent", "no-payload").await;
    client.subscribe(client_name, "DetectCustomerEvent", "no-payload")
    client.subscribe(client_name, "NetworkConnectedEvent", "no-payload")
    # (the seed sleeps 300 ms here "for subscriptions to propagate": subscribe() already waited)
    timestamp = datetime.now(timezone.utc).isoformat()
    client.publish(client_name, "NetworkConnectedEvent", "Hello from Rust client", timestamp)
    # (the seed sleeps 2 s "for message processing": we wait for the message itself)
    assert received.get(timeout=WAIT) == ("NetworkConnectedEvent", "Hello from Rust client")
    assert received.empty()
    client.close()


def test_connection_variants(server: RunningServer) -> None:
    with WsClient.connect("Client1", server.ws_url) as plain:
        assert (plain.name, plain.session_id) == ("Client1", "session-Client1")
        assert plain.is_connected() and not plain.is_authenticated() and plain.get_token() is None
    assert not plain.is_connected()
    with WsClient.connect_with_session("Client1", "user-session-123", server.ws_url) as session:
        assert session.session_id == "user-session-123"
    auth_url = server.http_url + "/auth/token"
    with WsClient.connect_with_auth("Client1", server.ws_url, auth_url, "testuser", "password",
                                    "user-session-123") as authed:
        assert authed.session_id == "user-session-123"
        assert authed.is_authenticated() and authed.get_token()
        assert authed.refresh_token_if_needed() is False  # an hour left: nothing to do
    with WsClient.connect_with_auth("Client1", server.ws_url, auth_url, "testuser", "password") as default:
        assert default.session_id == "session-testuser"  # the token's session, not session-Client1


def test_wrong_password(server: RunningServer) -> None:
    with pytest.raises(BadCredentials):
        WsClient.connect_with_auth("Client1", server.ws_url, server.http_url + "/auth/token", "testuser", "nope")


def test_foreign_session_is_refused(server: RunningServer) -> None:
    # Not the demo user: in development mode it may have any session (issue 13). alice's
    # token (made by the app) grants its sid and session-alice only.
    credentials = Credentials(server.http_url + "/auth/token", "alice", "unused", "session-A")
    client = WsClient("Client1", server.ws_url, "session-B", credentials=credentials)
    client._connector.token = server.token("alice", "session-A")
    with pytest.raises(ServerError) as refused:
        client.open()
    assert refused.value.code == "forbidden_session"


SUBSCRIPTIONS = {
    "Client1": ("session-A", ["DetectCustomerEvent", "NetworkConnectedEvent"]),
    "Client2": ("session-A", ["DetectCustomerEvent", "RegistrationCompleteEvent"]),
    "Client3": ("session-B", ["DetectCustomerEvent", "NetworkConnectedEvent"]),
    "Client4": ("session-B", ["RegistrationCompleteEvent", "NetworkConnectedEvent"]),
}
PUBLISHES = [("Client1", "RegistrationCompleteEvent"), ("Client2", "NetworkConnectedEvent"),
             ("Client3", "DetectCustomerEvent"), ("Client4", "RegistrationCompleteEvent")]
EXPECTED = {"Client1": [("Client2", "NetworkConnectedEvent")], "Client2": [("Client1", "RegistrationCompleteEvent")],
            "Client3": [("Client3", "DetectCustomerEvent")], "Client4": [("Client4", "RegistrationCompleteEvent")]}


@pytest.mark.parametrize("authenticated", [False, True], ids=["anonymous", "tokens"])
def test_four_clients_two_sessions(server: RunningServer, authenticated: bool) -> None:
    received: dict[str, list[Delivery]] = {name: [] for name in SUBSCRIPTIONS}
    clients = {}
    for name, (session, topics) in SUBSCRIPTIONS.items():
        if authenticated:
            client = WsClient.connect_with_auth(name, server.ws_url, server.http_url + "/auth/token",
                                                "testuser", "password", session)
        else:
            client = WsClient.connect_with_session(name, session, server.ws_url)
        for topic in topics:
            client.on_delivery(topic, received[name].append)
            client.subscribe(name, topic)
        clients[name] = client
    for name, topic in PUBLISHES:
        clients[name].publish(name, topic, f"{topic} from {name}")
    # Each publish was fanned out before publish() returned; a ping now comes back after
    # every delivery, and a ping through the dispatcher proves the callbacks ran.
    for name, client in clients.items():
        client.ping()
        ran = threading.Event()
        client._dispatch.call(ran.set)
        assert ran.wait(WAIT)
        got = [(d.publisher_name, d.topic) for d in received[name]]
        assert got == EXPECTED[name], name
        assert all(d.session_id == SUBSCRIPTIONS[name][0] for d in received[name])
        assert all((d.user == "testuser") is authenticated for d in received[name])
        client.close()


def test_token_bound_elsewhere_than_session_client_name(server: RunningServer) -> None:
    """The seed's Rust client registers session-{client_name} even with a token; ours does not."""
    with WsClient.connect_with_auth("Kiosk", server.ws_url, server.http_url + "/auth/token",
                                    "testuser", "password") as client:
        client.subscribe("Kiosk", "T")
        assert client.subscriptions == ["T"]
        assert server.hub.counts()["subscriptions"] == 1


def test_server_refusals_raise_and_leave_the_client_usable() -> None:
    with running_server(max_subscriptions=1) as server:
        with WsClient.connect("c", server.ws_url) as client:
            client.subscribe("c", "A")
            with pytest.raises(ServerError) as refused:
                client.subscribe("c", "B")
            assert refused.value.code == "too_many_subscriptions"
            assert client.subscriptions == ["A"]
            client.unsubscribe("A")
            client.subscribe("c", "B")
            assert client.subscriptions == ["B"]
