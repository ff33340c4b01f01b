"""The seed's four clients in two sessions: exact deliveries, nothing across sessions."""

from __future__ import annotations

import json

import pytest

from rusty_ws.protocol import encode_publish, encode_subscribe
from support import RunningServer

SUBSCRIPTIONS = {
    "Client1": ("session-A", ["DetectCustomerEvent", "NetworkConnectedEvent"]),
    "Client2": ("session-A", ["DetectCustomerEvent", "RegistrationCompleteEvent"]),
    "Client3": ("session-B", ["DetectCustomerEvent", "NetworkConnectedEvent"]),
    "Client4": ("session-B", ["RegistrationCompleteEvent", "NetworkConnectedEvent"]),
}
SESSION_OF = {name: session for name, (session, _) in SUBSCRIPTIONS.items()}
PUBLISHES = [
    ("Client1", "RegistrationCompleteEvent"),
    ("Client2", "NetworkConnectedEvent"),
    ("Client3", "DetectCustomerEvent"),
    ("Client4", "RegistrationCompleteEvent"),
]
EXPECTED = {
    "Client1": [("Client2", "NetworkConnectedEvent")],
    "Client2": [("Client1", "RegistrationCompleteEvent")],
    "Client3": [("Client3", "DetectCustomerEvent")],
    "Client4": [("Client4", "RegistrationCompleteEvent")],
}


def run_scenario(server: RunningServer, tokens: dict[str, str | None]) -> dict[str, list[dict]]:
    clients = {name: server.connect(tokens[name]) for name in SUBSCRIPTIONS}
    received: dict[str, list[str]] = {name: [] for name in SUBSCRIPTIONS}
    try:
        # The seed's own command strings (its "Protocol" list, and what its JavaScript sends),
        # spelt here as the seed spells them, not through rusty_ws.protocol's encoders: this
        # scenario checks the hub against the seed's wire format, not against our own codec.
        for name, (session, topics) in SUBSCRIPTIONS.items():
            client = clients[name]
            client.send(f"register-name:{name}")
            client.send(f"register-session:{session}")
            for topic in topics:
                client.send(f"subscribe:{topic}|{session}")
            assert client.sync() == [], f"{name} got replies to its set-up"
        for name, topic in PUBLISHES:
            session = SUBSCRIPTIONS[name][0]
            message = {
                "publisher_name": name,
                "topic": topic,
                "payload": f"{topic} from {name}",
                "timestamp": "2024-01-24T10:25:37Z",
                "session_id": session,
            }
            clients[name].send("publish-json:" + json.dumps(message))
            # Once the pong is back the publish has been fanned out; what came before
            # the pong is what this client received meanwhile.
            received[name] += clients[name].sync()
        # Each client's pong now comes after every delivery meant for it.
        for name, client in clients.items():
            received[name] += client.sync()
        return {name: [json.loads(m) for m in messages] for name, messages in received.items()}
    finally:
        for client in clients.values():
            client.close()


def check_deliveries(received: dict[str, list[dict]]) -> None:
    for name, messages in received.items():
        got = [(m["publisher_name"], m["topic"]) for m in messages]
        assert got == EXPECTED[name], f"{name} received {got}"
        for message in messages:
            assert message["session_id"] == SUBSCRIPTIONS[name][0]
            assert message["payload"] == f"{message['topic']} from {message['publisher_name']}"
            assert message["timestamp"] == "2024-01-24T10:25:37Z"


def test_anonymous_clients(server: RunningServer) -> None:
    received = run_scenario(server, {name: None for name in SUBSCRIPTIONS})
    check_deliveries(received)
    assert all("user" not in m for messages in received.values() for m in messages)


def test_one_token_per_client(server: RunningServer) -> None:
    tokens = {name: server.token(name.lower(), session) for name, (session, _) in SUBSCRIPTIONS.items()}
    received = run_scenario(server, tokens)
    check_deliveries(received)
    for messages in received.values():
        for message in messages:
            assert message["user"] == message["publisher_name"].lower()


@pytest.mark.parametrize("rounds", [3])
def test_repeated_publishes_arrive_in_order(server: RunningServer, rounds: int) -> None:
    with server.connect() as publisher, server.connect() as subscriber:
        subscriber.send(encode_subscribe("Ordered", "s"))
        subscriber.sync()
        for i in range(rounds * 100):
            publisher.send(encode_publish("Ordered", i, session_id="s"))
        publisher.sync()
        payloads = [json.loads(m)["payload"] for m in subscriber.sync()]
        assert payloads == list(range(rounds * 100))
