"""Callbacks, threads and closing of WsClient."""

from __future__ import annotations

import logging
import queue
import threading

from rusty_ws import WsClient
from support import MS, WAIT, Hooks, RunningServer, deliveries, messages, running_server


def test_publish_from_inside_a_callback(server: RunningServer) -> None:
    with WsClient.connect("c", server.ws_url) as client:
        client.on_message("Ask", lambda payload: client.publish("c", "Answer", payload * 2))
        echoes = messages(client, "Answer")
        client.subscribe("c", "Ask")
        client.subscribe("c", "Answer")
        client.publish("c", "Ask", 21)
        assert echoes.get(timeout=WAIT) == 42


def test_decorator_and_whole_delivery(server: RunningServer) -> None:
    payloads: queue.Queue = queue.Queue()  # filled by the decorated callback under test
    with WsClient.connect_with_auth("Kiosk", server.ws_url, server.http_url + "/auth/token",
                                    "testuser", "password") as client:
        @client.topic_callback("T")
        def on_t(payload):
            payloads.put(payload)

        whole = deliveries(client, "T")
        client.subscribe("Kiosk", "T")
        client.publish("Kiosk", "T", {"x": 1}, "2024-01-24T10:25:37Z")
        assert payloads.get(timeout=WAIT) == {"x": 1}
        delivery = whole.get(timeout=WAIT)
    assert (delivery.publisher_name, delivery.user, delivery.session_id, delivery.timestamp) == (
        "Kiosk", "testuser", "session-testuser", "2024-01-24T10:25:37Z")
    assert on_t.__name__ == "on_t"


def test_a_raising_callback_is_logged_and_the_next_one_runs(server: RunningServer, caplog) -> None:
    def broken(payload):
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="rusty_ws.client"):
        with WsClient.connect("c", server.ws_url) as client:
            client.on_message("T", broken)
            received = messages(client, "T")
            client.subscribe("c", "T")
            client.publish("c", "T", 1)
            client.publish("c", "T", 2)
            assert [received.get(timeout=WAIT), received.get(timeout=WAIT)] == [1, 2]
    assert sum("broken" in record.getMessage() for record in caplog.records) == 2


def test_close_from_a_callback(server: RunningServer) -> None:
    done = threading.Event()
    client = WsClient.connect("c", server.ws_url)

    def stop(payload):
        client.close()
        done.set()

    client.on_message("Stop", stop)
    client.subscribe("c", "Stop")
    client.publish("c", "Stop", None)
    assert done.wait(WAIT)
    client._dispatch.thread.join(WAIT)
    client._reader.join(WAIT)
    assert not client._dispatch.thread.is_alive() and not client._reader.is_alive()
    assert not client.is_connected()


def test_close_is_idempotent_and_leaves_no_thread(server: RunningServer) -> None:
    client = WsClient.connect("c", server.ws_url)
    threads = [client._reader, client._dispatch.thread]
    client.close()
    client.close()
    assert not any(thread.is_alive() for thread in threads)
    assert not [t for t in threading.enumerate() if t.name.startswith("rusty_ws-client")]


def test_many_threads_publish_at_once(server: RunningServer) -> None:
    received: list = []
    with WsClient.connect_with_session("sub", "shared", server.ws_url) as subscriber, \
            WsClient.connect_with_session("pub", "shared", server.ws_url) as publisher:
        subscriber.on_message("T", received.append)
        subscriber.subscribe("sub", "T")

        def publish_many(worker: int) -> None:
            for i in range(50):
                publisher.publish("pub", "T", [worker, i])

        workers = [threading.Thread(target=publish_many, args=(w,)) for w in range(4)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(WAIT * 5)
        subscriber.ping()
        ran = threading.Event()
        subscriber._dispatch.call(ran.set)
        assert ran.wait(WAIT)
    assert len(received) == 200
    for worker in range(4):
        assert [i for w, i in received if w == worker] == list(range(50))


def test_a_slow_callback_does_not_stop_keepalive() -> None:
    with running_server(ping_interval=100 * MS, ping_timeout=200 * MS) as server:
        release = threading.Event()
        with WsClient.connect("c", server.ws_url) as client:
            hooks = Hooks(client)
            # The first message's callback holds the dispatcher for several of the server's
            # keepalive rounds (100 + 200 MS); only the reader thread can answer the pings.
            client.on_message("Slow", lambda payload: release.wait(1000 * MS))
            received = messages(client, "Fast")
            client.subscribe("c", "Slow")
            client.subscribe("c", "Fast")
            [connection] = server.hub.connections()
            client.publish("c", "Slow", None)
            client.publish("c", "Fast", "after")
            assert received.get(timeout=WAIT) == "after"
            client.ping()
            assert server.hub.connections() == [connection]  # never dropped, never replaced
            assert hooks.disconnected.empty() and client.is_connected()
