"""WsClient recovery: after a reconnection it resubscribes from the last position seen.

Connections are broken the way networks break them: a TCP proxy resets them
(no close frame) and can keep the client out while messages are published.
"""

from __future__ import annotations

import threading

import pytest

from rusty_ws import RecoveryFailure, ServerError, WsClient
from rusty_ws.client.wire import Waiter
from rusty_ws.protocol import Since, Subscribed, encode_subscribe_json
from support import WAIT, ClientEvents, RunningServer, dropped_as_seen, running_server
from tcp_proxy import tcp_proxy

FAST = {"backoff_initial": 0.05, "backoff_cap": 0.2, "timeout": WAIT}


def record_resumes(server: RunningServer) -> list[Since | None]:
    """The ``since`` of every ``subscribe-json`` the hub gets from now on (recorded before it is carried out)."""
    resumes: list[Since | None] = []
    real = server.hub.subscribe_json

    def spy(outbox, topic, session_id, since):
        resumes.append(since)
        return real(outbox, topic, session_id, since)

    server.hub.subscribe_json = spy  # type: ignore[method-assign]
    return resumes


def test_a_reset_subscriber_gets_all_1000_messages_in_order_once_while_they_are_published() -> None:
    """The subscriber's connection is reset at message 200 of 1,000 published one after the other."""
    with dropped_as_seen() as repeats, running_server(history_size=2000) as server, tcp_proxy(server.port) as proxy, \
            WsClient.connect_with_session("sub", "s", proxy.url, **FAST) as sub, \
            WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as pub:
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        resumes = record_resumes(server)
        cut_at_200 = threading.Event()

        def cut(delivery) -> None:  # on the subscriber's dispatcher thread
            if delivery.payload == 200:
                proxy.cut()
                cut_at_200.set()

        sub.on_delivery("T", cut)

        def publish_all() -> None:
            for n in range(1, 1001):
                pub.publish("pub", "T", n)  # each acknowledged before the next

        publisher = threading.Thread(target=publish_all, name="test-publisher")
        publisher.start()
        try:
            assert cut_at_200.wait(WAIT)
            payloads = events.wait_payload(1000, timeout=10 * WAIT)
        finally:
            publisher.join(10 * WAIT)
        pub.publish("pub", "T", "end")
        assert events.wait_payload("end") == [*list(range(1, 1001)), "end"]
        proxy.wait_accepted(2)  # it did reconnect, by itself
        [since] = resumes  # and resumed from where it was
        assert since is not None and since.offset >= 200 and since.epoch == sub.position("T").epoch
        assert events.entries("recovery_failed") == []
        assert payloads[:1000] == list(range(1, 1001))
        assert repeats == []  # the hub replayed from where the client was, not before


def test_messages_published_while_the_subscriber_is_away_are_replayed_before_new_ones() -> None:
    with running_server(history_size=2000) as server, tcp_proxy(server.port) as proxy, \
            WsClient.connect_with_session("sub", "s", proxy.url, **FAST) as sub, \
            WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as pub:
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        resumes = record_resumes(server)
        first = [pub.publish_async("pub", "T", n) for n in range(1, 301)]
        events.wait_payload(100)
        proxy.hold()
        proxy.cut()  # mid-stream: some of 101..300 may be lost in flight, all of 301..1000 are missed
        rest = [pub.publish_async("pub", "T", n) for n in range(301, 1001)]
        acks = [future.result(WAIT) for future in first + rest]
        proxy.release()
        events.wait_count("connect", 1)
        pub.publish("pub", "T", "live")
        assert events.wait_payload("live") == [*list(range(1, 1001)), "live"]
        assert events.entries("recovery_failed") == []
        assert sub.position("T") == Since(1001, acks[-1].epoch)
        [since] = resumes
        assert 100 <= since.offset <= 300  # so at least 700 came from the replay


def test_a_restarted_hub_is_reported_as_a_new_epoch_and_its_messages_still_arrive() -> None:
    with running_server() as first:
        port = first.port
        client = WsClient.connect_with_session("c", "s", first.ws_url, **FAST)
        events = ClientEvents(client, "T")
        client.subscribe("c", "T")
        for n in (1, 2, 3):
            client.publish("c", "T", n)
        events.wait_payload(3)
        before = client.position("T")
        assert before is not None and before.offset == 3
    try:
        with running_server(port=port) as second:
            [(topic, session_id, reason)] = events.wait_count("recovery_failed", 1)
            assert (topic, session_id, reason) == ("T", "s", RecoveryFailure.EPOCH_CHANGED)
            assert reason == "epoch_changed"
            events.wait_count("connect", 1)
            after = client.position("T")
            assert after is not None and after.epoch != before.epoch and after.offset == 0
            ack = client.publish("c", "T", 4)  # offset 1 of the new epoch: not taken for a repeat
            assert ack.offset == 1 and ack.epoch == second.hub.history.top(("T", "s")).epoch
            assert events.wait_payload(4) == [1, 2, 3, 4]
            kinds = [entry[0] for entry in events.log]
            assert kinds.index("recovery_failed") < kinds.index("connect")  # told before on_connect
    finally:
        client.close()


def test_a_gap_bigger_than_the_history_replays_what_remains_and_says_so() -> None:
    with running_server(history_size=10) as server, tcp_proxy(server.port) as proxy, \
            WsClient.connect_with_session("sub", "s", proxy.url, **FAST) as sub, \
            WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as pub:
        events = ClientEvents(sub, "T")
        sub.subscribe("sub", "T")
        for n in range(1, 6):
            pub.publish("pub", "T", n)
        events.wait_payload(5)
        proxy.hold()
        proxy.cut()
        for future in [pub.publish_async("pub", "T", n) for n in range(6, 41)]:
            future.result(WAIT)
        proxy.release()
        [(topic, session_id, reason)] = events.wait_count("recovery_failed", 1)
        assert (topic, session_id, reason) == ("T", "s", RecoveryFailure.MESSAGES_DROPPED)
        pub.publish("pub", "T", 41)
        assert events.wait_payload(41) == [1, 2, 3, 4, 5, *range(31, 41), 41]
        # In order: what remained, then the report, then new messages.
        log = [entry[1].payload if entry[0] == "message" else entry[0]
               for entry in events.log if entry[0] in ("message", "recovery_failed")]
        assert log == [1, 2, 3, 4, 5, *range(31, 41), "recovery_failed", 41]


def test_with_history_off_it_resubscribes_as_the_seed_did() -> None:
    with running_server(history_size=0) as server, tcp_proxy(server.port) as proxy, \
            WsClient.connect_with_session("sub", "s", proxy.url, **FAST) as sub, \
            WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as pub:
        events = ClientEvents(sub, "T")
        reply = sub.subscribe("sub", "T")
        assert reply is not None and reply.offset is None and reply.epoch is None
        ack = pub.publish("pub", "T", 1)
        assert ack is not None and ack.offset is None and ack.id
        events.wait_payload(1)
        assert sub.position("T") is None
        proxy.cut()
        events.wait_count("connect", 1)
        pub.publish("pub", "T", 2)
        assert events.wait_payload(2) == [1, 2]
        assert events.entries("recovery_failed") == []


def test_subscribing_again_does_not_deliver_twice(server) -> None:
    with WsClient.connect_with_session("c", "s", server.ws_url, **FAST) as client:
        events = ClientEvents(client, "T")
        client.subscribe("c", "T")
        client.publish("c", "T", 1)
        client.subscribe("c", "T")
        client.publish("c", "T", 2)
        assert events.wait_payload(2) == [1, 2]


def test_a_replay_of_what_was_seen_already_is_not_delivered_twice() -> None:
    """The hub replays from an older position than the client's (as after a lost reply): repeats are dropped."""
    with running_server() as server, WsClient.connect_with_session("c", "s", server.ws_url, **FAST) as client:
        events = ClientEvents(client, "T")
        client.subscribe("c", "T")
        for n in (1, 2, 3):
            client.publish("c", "T", n)
        events.wait_payload(3)
        epoch = client.position("T").epoch
        older = Since(0, epoch)
        waiter = Waiter("resubscribe T", Subscribed, client._supervisor.on_subscribed("T", older, replay=True))
        assert client._wire.send(client._wire.socket, [encode_subscribe_json("T", "s", older)], waiter)
        assert waiter.wait(WAIT).recovered is True  # the hub did replay 1..3
        client.publish("c", "T", 4)
        assert events.wait_payload(4) == [1, 2, 3, 4]
        assert client.position("T") == Since(4, epoch)


class TestSeedProtocol:
    def test_speaks_only_the_seeds_commands(self, server) -> None:
        with WsClient.connect_with_session("c", "s", server.ws_url, seed_protocol=True, **FAST) as client:
            events = ClientEvents(client, "T")
            assert client.subscribe("c", "T") is None
            assert client.publish("c", "T", 1) is None
            events.wait_payload(1)
            assert client.position("T") is None and client.subscriptions == ["T"]
            with pytest.raises(RuntimeError):
                client.publish_async("c", "T", 2)
            with pytest.raises(RuntimeError):
                client.history("T")
            [connection] = server.hub.connections()
            connection.close(1012, "service restart")  # reconnect now
            events.wait_count("connect", 1)
            client.publish("c", "T", 2)
            assert events.wait_payload(2) == [1, 2]

    def test_a_history_command_the_server_skips_fails_at_the_next_pong(self, server) -> None:
        """What a client gets from a server that ignores commands it does not know (as the seed's does)."""
        with WsClient.connect_with_session("c", "s", server.ws_url, **FAST) as client:
            waiter = Waiter("subscribe T", Subscribed)
            # A ping where the history command would be: the pong comes, its reply never does.
            assert client._wire.send(client._wire.socket, ["ping"], waiter)
            with pytest.raises(ServerError) as caught:
                waiter.wait(WAIT)
            assert caught.value.code == "no_reply"
            client.ping()  # the wire is still in step
