"""Fan-out through the hub: many publishers, many subscribers, frames intact and in order."""

from __future__ import annotations

import json
import socket
import threading

from rusty_ws.protocol import encode_publish, encode_subscribe
from support import WAIT, Client, RunningServer, running_server


def test_several_publishers_to_one_subscriber_never_corrupt_a_frame() -> None:
    publishers, per_publisher = 6, 200
    with running_server(max_queued_bytes=64 << 20) as server:
        subscriber = Client(server.ws_url, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 8192),))
        subscriber.command(encode_subscribe("T", "s"))
        clients = [server.connect() for _ in range(publishers)]

        def publish(index: int) -> None:
            for i in range(per_publisher):
                payload = f"{index}:{i}:" + ("x" * 100_000 if i % 10 == 0 else "y" * 20)
                clients[index].send(encode_publish("T", payload, session_id="s"))

        threads = [threading.Thread(target=publish, args=(p,)) for p in range(publishers)]
        for thread in threads:
            thread.start()
        seen: dict[int, list[int]] = {}
        for _ in range(publishers * per_publisher):  # websocket-client raises on a corrupt frame
            index, i, rest = subscriber.recv_json()["payload"].split(":", 2)
            assert rest == ("x" * 100_000 if int(i) % 10 == 0 else "y" * 20)
            seen.setdefault(int(index), []).append(int(i))
        for thread in threads:
            thread.join(WAIT)
        assert seen == {p: list(range(per_publisher)) for p in range(publishers)}
        for client in clients:
            assert client.sync() == []  # no error replies either
            client.close()
        subscriber.close()


def test_one_publish_reaches_every_subscriber_once(server: RunningServer) -> None:
    subscribers = [server.connect() for _ in range(50)]
    for client in subscribers:
        client.command(encode_subscribe("T"))
    with server.connect() as publisher:
        for i in range(20):
            publisher.send(encode_publish("T", i))
        publisher.sync()
    for client in subscribers:
        assert [json.loads(m)["payload"] for m in client.sync()] == list(range(20))
        client.close()
