"""Acknowledged publishes of WsClient: publish(), publish_async(), their retries, and history()."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

import pytest

from rusty_ws import ConnectionClosedError, ProtocolError, ServerError, WsClient
from rusty_ws.protocol import Ack, ErrorCode, Since, encode_subscribe
from support import MS, WAIT, Client, ClientEvents, RunningServer, running_server
from tcp_proxy import tcp_proxy

FAST = {"backoff_initial": 0.05, "backoff_cap": 0.2, "timeout": WAIT}


def payloads_until(watcher: Client, last: Any) -> list[dict[str, Any]]:
    """The deliveries a raw subscriber gets, up to and including the one with payload ``last``."""
    got: list[dict[str, Any]] = []
    while not got or got[-1]["payload"] != last:
        got.append(json.loads(watcher.recv()))
    return got


def test_publish_returns_the_ack(server: RunningServer) -> None:
    with WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as client:
        first = client.publish("pub", "T", 1)
        second = client.publish("pub", "T", 2, "2024-01-24T10:25:37Z")  # the seed's signature
        epoch = server.hub.history.top(("T", "s")).epoch
        assert isinstance(first, Ack) and (first.offset, first.epoch) == (1, epoch)
        assert second.offset == 2 and second.id != first.id
        assert first.id.split("-")[0] == second.id.split("-")[0]  # one prefix per client


def test_a_publish_whose_ack_is_lost_is_sent_again_and_delivered_once() -> None:
    with running_server() as server, tcp_proxy(server.port) as proxy, server.connect() as watcher, \
            WsClient.connect_with_session("pub", "s", proxy.url, **FAST) as pub, \
            WsClient.connect_with_session("sub", "s", server.ws_url, **FAST) as sub:
        watcher.command(encode_subscribe("T", "s"))
        sub.subscribe("sub", "T")
        events = ClientEvents(sub, "T")
        sub.on_message("T", lambda payload: proxy.cut() if payload == "once" else None)
        proxy.mute()  # the hub's answers to the publisher are lost from now on; its commands still arrive
        # The hub publishes "once", the subscriber sees it and cuts the publisher's connection
        # (its ack lost on the way); the publisher reconnects and sends it again, same id.
        ack = pub.publish("pub", "T", "once")
        proxy.wait_accepted(2)
        [delivery] = [d for (d,) in events.entries("message") if d.payload == "once"]
        assert ack.offset == delivery.offset  # the hub answered the retry as the first one
        pub.publish("pub", "T", "marker")
        assert [m["payload"] for m in payloads_until(watcher, "marker")] == ["once", "marker"]


def test_an_error_reply_raises_with_the_publish_id_and_is_not_retried(server: RunningServer,
                                                                       monkeypatch) -> None:
    def refuse(delivery, publish_id=None, answer=None):
        raise ProtocolError(ErrorCode.UNAVAILABLE, "the broker is down")

    with WsClient.connect_with_session("pub", "s", server.ws_url, **FAST) as client:
        with monkeypatch.context() as patch:
            patch.setattr(server.hub, "publish", refuse)
            future = client.publish_async("pub", "T", "refused")
            with pytest.raises(ServerError) as caught:
                client.publish("pub", "T", "refused too", publish_id="mine-1")
        assert caught.value.code == "unavailable" and caught.value.publish_id == "mine-1"
        with pytest.raises(ServerError) as first:
            future.result(WAIT)
        assert first.value.publish_id == future.publish_id
        [connection] = server.hub.connections()
        connection.close(1012, "service restart")  # a reconnection sends nothing refused again
        assert client.publish("pub", "T", "accepted").offset == 1


def test_a_publish_not_acknowledged_in_time_raises_and_the_wire_stays_in_step(server: RunningServer,
                                                                              monkeypatch) -> None:
    release = threading.Event()
    real = server.hub.publish

    def stuck(delivery, publish_id=None, answer=None):
        release.wait(WAIT)
        return real(delivery, publish_id, answer)

    with WsClient.connect_with_session("pub", "s", server.ws_url, timeout=300 * MS) as client:
        with monkeypatch.context() as patch:
            patch.setattr(server.hub, "publish", stuck)
            with pytest.raises(TimeoutError):
                client.publish("pub", "T", "late")
        release.set()
        # The late ack arrives first and is matched to the abandoned publish, not to this one.
        ack = client.publish("pub", "T", "next")
        assert ack.offset == 2 and [m.payload for m in client.history("T").messages] == ["late", "next"]


def test_a_user_chosen_id_is_idempotent(server: RunningServer) -> None:
    with server.connect() as watcher, WsClient.connect_with_session("pub", "s", server.ws_url) as client:
        watcher.command(encode_subscribe("T", "s"))
        first = client.publish("pub", "T", "once", publish_id="reg-7")
        again = client.publish("pub", "T", "once", publish_id="reg-7")
        assert first == again == Ack("reg-7", 1, first.epoch, delivered=1)
        client.publish("pub", "T", "marker")
        assert [m["payload"] for m in payloads_until(watcher, "marker")] == ["once", "marker"]
        for bad in ("", "x" * 129):
            with pytest.raises(ProtocolError):
                client.publish("pub", "T", 1, publish_id=bad)


class TestPublishAsync:
    def test_many_futures_resolve_in_order(self, server: RunningServer) -> None:
        with WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as client, \
                server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            futures = [client.publish_async("pub", "T", n) for n in range(1, 1001)]
            offsets = [future.result(WAIT).offset for future in futures]
            assert offsets == list(range(1, 1001))
            assert [m["payload"] for m in payloads_until(watcher, 1000)] == list(range(1, 1001))
            assert len({future.publish_id for future in futures}) == 1000

    def test_done_callbacks_run_on_the_dispatcher_thread(self, server: RunningServer) -> None:
        ran = threading.Event()
        where: list[str] = []

        def done(future) -> None:
            where.append(threading.current_thread().name)
            ran.set()

        with WsClient.connect_with_session("pub", "s", server.ws_url, timeout=WAIT) as client:
            future = client.publish_async("pub", "T", 1)
            future.add_done_callback(done)
            assert future.cancel() is False  # on the wire: it cannot be taken back
            assert future.result(WAIT).offset == 1
            assert ran.wait(WAIT)
            future.add_done_callback(done)  # done already: runs now, here
        assert where == ["rusty_ws-client-dispatch-pub", threading.current_thread().name]

    def test_order_and_once_across_a_reconnection(self) -> None:
        with running_server(history_size=2000) as server, tcp_proxy(server.port) as proxy, \
                server.connect() as watcher, WsClient.connect_with_session("pub", "s", proxy.url, **FAST) as client:
            watcher.command(encode_subscribe("T", "s"))
            futures = [client.publish_async("pub", "T", n) for n in range(1, 301)]
            assert [m["payload"] for m in payloads_until(watcher, 100)] == list(range(1, 101))
            proxy.cut()  # while publishes are on the wire, some acked, some not
            futures += [client.publish_async("pub", "T", n) for n in range(301, 601)]
            acks = [future.result(WAIT) for future in futures]
            assert [ack.offset for ack in acks] == list(range(1, 601))  # each once, in order
            assert [m["payload"] for m in payloads_until(watcher, 600)] == list(range(101, 601))
            assert len(watcher.sync()) == 0  # nothing delivered twice
            proxy.wait_accepted(2)

    def test_closing_fails_what_is_not_acknowledged(self) -> None:
        with running_server() as server, tcp_proxy(server.port) as proxy:
            client = WsClient.connect_with_session("pub", "s", proxy.url, **FAST)
            events = ClientEvents(client)
            proxy.hold()
            proxy.cut()
            events.wait_count("disconnect", 1)
            future = client.publish_async("pub", "T", "never")  # waits for a connection that never comes
            client.close()
            with pytest.raises(ConnectionClosedError):
                future.result(WAIT)
            with pytest.raises(ConnectionClosedError):
                client.publish_async("pub", "T", "after close")
            with pytest.raises(ConnectionClosedError):
                client.publish("pub", "T", "after close")
            assert server.hub.history.top(("T", "s")) is None  # nothing was published

    def test_past_max_unacked_a_publish_waits_for_room_then_times_out(self) -> None:
        with running_server() as server, tcp_proxy(server.port) as proxy, server.connect() as watcher:
            watcher.command(encode_subscribe("T", "s"))
            client = WsClient.connect_with_session("pub", "s", proxy.url, backoff_initial=0.05, backoff_cap=0.2,
                                                   timeout=0.5, max_unacked=3)
            with client:
                events = ClientEvents(client)
                proxy.hold()
                proxy.cut()
                events.wait_count("disconnect", 1)
                kept = [client.publish_async("pub", "T", n) for n in (1, 2, 3)]  # wait for the connection
                with pytest.raises(TimeoutError, match="max_unacked=3"):
                    client.publish_async("pub", "T", "no room")  # waited its 0.5 s, then refused
                blocked: list[Any] = []
                publisher = threading.Thread(target=lambda: blocked.append(_publish_waiting(client, 4)))
                client.timeout = WAIT  # the next wait for room outlasts the reconnection
                publisher.start()
                _wait_blocked_in(publisher, "wait_for")  # waiting for room, not yet published
                proxy.release()
                assert [future.result(WAIT).offset for future in kept] == [1, 2, 3]
                publisher.join(WAIT)
                assert [future.result(WAIT).offset for future in blocked] == [4]  # woken by an ack
                assert [m["payload"] for m in payloads_until(watcher, 4)] == [1, 2, 3, 4]  # "no room" never went

    def test_closing_wakes_a_publish_waiting_for_room(self) -> None:
        with running_server() as server, tcp_proxy(server.port) as proxy:
            client = WsClient.connect_with_session("pub", "s", proxy.url, **FAST, max_unacked=1)
            events = ClientEvents(client)
            proxy.hold()
            proxy.cut()
            events.wait_count("disconnect", 1)
            first = client.publish_async("pub", "T", "kept")
            outcome: list[BaseException] = []
            waiting = threading.Thread(target=lambda: outcome.append(_raised(client.publish_async, "pub", "T", 2)))
            waiting.start()
            client.close()
            waiting.join(WAIT)
            assert not waiting.is_alive()
            assert [type(error) for error in outcome] == [ConnectionClosedError]
            with pytest.raises(ConnectionClosedError):
                first.result(WAIT)

    def test_max_unacked_must_be_at_least_one(self, server: RunningServer) -> None:
        for bad in (0, -1, 1.5, "10"):
            with pytest.raises(ValueError, match="max_unacked"):
                WsClient("pub", server.ws_url, max_unacked=bad)  # type: ignore[arg-type]


def _publish_waiting(client: WsClient, payload: Any) -> Any:
    """publish_async from another thread (it blocks until there is room)."""
    return client.publish_async("pub", "T", payload)


def _wait_blocked_in(thread: threading.Thread, function: str) -> None:
    """Until ``thread`` is inside ``function`` (seen in its stack), bounded by WAIT."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        frame = sys._current_frames().get(thread.ident or 0)
        while frame is not None and frame.f_code.co_name != function:
            frame = frame.f_back
        if frame is not None:
            return
        time.sleep(0.005)  # sleep-ok: a thread waiting on a Condition gives no event; bounded polling of its stack
    raise AssertionError(f"{thread.name} never waited in {function}")


def _raised(call: Any, *args: Any) -> BaseException:
    try:
        call(*args)
    except BaseException as error:  # the test looks at which
        return error
    raise AssertionError(f"{call} returned")


class TestHistory:
    def test_returns_what_was_published(self, server: RunningServer) -> None:
        with WsClient.connect_with_session("c", "s", server.ws_url, timeout=WAIT) as client:
            acks = [client.publish("c", "T", n) for n in range(1, 6)]
            reply = client.history("T", limit=3)
            assert [m.payload for m in reply.messages] == [3, 4, 5]
            assert [m.offset for m in reply.messages] == [3, 4, 5]
            assert (reply.offset, reply.epoch) == (5, acks[-1].epoch)
            assert [m.payload for m in client.history("T").messages] == [1, 2, 3, 4, 5]
            page = client.history("T", limit=2, since=Since(2, reply.epoch))
            assert [m.payload for m in page.messages] == [3, 4]
            assert client.history("T", since=Since(2, "another-epoch")).messages == []
            assert client.history("Nothing").messages == [] and client.subscriptions == []

    def test_bad_arguments_are_the_servers_errors(self, server: RunningServer) -> None:
        with WsClient.connect_with_session("c", "s", server.ws_url, timeout=WAIT) as client:
            with pytest.raises(ServerError) as caught:
                client.history("T", limit=0)
            assert caught.value.code == "invalid_limit"
            epoch = client.history("T").epoch
            with pytest.raises(ServerError) as caught:
                client.history("T", since=Since(5, epoch))
            assert caught.value.code == "invalid_since"
            client.ping()

    def test_with_history_off_is_empty(self) -> None:
        with running_server(history_size=0) as server, \
                WsClient.connect_with_session("c", "s", server.ws_url, timeout=WAIT) as client:
            client.publish("c", "T", 1)
            reply = client.history("T")
            assert reply.messages == [] and reply.offset is None
