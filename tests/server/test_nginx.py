"""Three hubs on one Redis behind nginx, configured with the snippet of ``docs/scaling.md``.

The test takes the ``nginx`` block from the docs as it is, puts loopback ports
where the docs say ``nodeN.internal:8081`` and ``listen 80``, and runs the
seed's scenario through it: so the documented configuration is the tested one.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from test_seed_scenario import PUBLISHES, SESSION_OF, SUBSCRIPTIONS, check_deliveries

from nginx_support import Nginx, http_conf
from redis_support import SENTINEL, RedisServer, free_port, publish_across_nodes, redis_server
from rusty_ws.protocol import encode_register_name, encode_subscribe
from support import Client, http, running_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def documented_snippet() -> str:
    with open(os.path.join(ROOT, "docs", "scaling.md"), encoding="utf-8") as handle:
        text = handle.read()
    [block] = re.findall(r"```nginx\n(.*?)```", text, re.S)
    return block


def nginx_conf(snippet: str, node_ports: list[int], port: int, work_dir: str) -> str:
    body = snippet.replace("listen 80;", f"listen 127.0.0.1:{port};")
    for number, node_port in enumerate(node_ports, 1):
        body = body.replace(f"node{number}.internal:8081", f"127.0.0.1:{node_port}")
    assert ".internal" not in body and "listen 80;" not in body, body
    return http_conf(body, work_dir)


@contextlib.contextmanager
def nginx_in_front_of(node_ports: list[int]) -> Iterator[Nginx]:
    work_dir = tempfile.mkdtemp(prefix="rusty_ws-nginx-")
    port = free_port()
    proxy = Nginx(nginx_conf(documented_snippet(), node_ports, port, work_dir), port, work_dir)
    try:
        yield proxy
    finally:
        proxy.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.fixture
def redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


def test_the_documented_snippet_names_three_nodes() -> None:
    snippet = documented_snippet()
    assert [f"node{n}.internal:8081" in snippet for n in (1, 2, 3)] == [True] * 3
    assert "proxy_set_header Upgrade $http_upgrade;" in snippet and "proxy_read_timeout" in snippet


def test_seed_scenario_through_nginx_in_front_of_three_nodes(redis: RedisServer) -> None:
    with contextlib.ExitStack() as stack:
        hubs = [stack.enter_context(running_server(broker_url=redis.url)) for _ in range(3)]
        proxy = stack.enter_context(nginx_in_front_of([hub.port for hub in hubs]))
        base = f"127.0.0.1:{proxy.port}"
        assert http("GET", f"http://{base}/healthz")[2]["broker"]["connected"] is True
        clients: dict[str, Client] = {}
        try:
            for name, (session, topics) in SUBSCRIPTIONS.items():
                # Log in through nginx (any node), then connect through nginx (any node).
                status, _, reply = http("POST", f"http://{base}/auth/token",
                                        {"username": "testuser", "password": "password", "session_id": session})
                assert status == 200, reply
                client = clients[name] = Client(f"ws://{base}/ws?token={reply['token']}")
                client.send(encode_register_name(name))
                for topic in [*topics, SENTINEL]:
                    client.send(encode_subscribe(topic, session))
                assert client.sync() == [], f"{name} got replies to its set-up"
            # least_conn spread the four long-lived connections over the nodes.
            per_hub = [hub.hub.counts()["connections"] for hub in hubs]
            assert sum(per_hub) == 4 and sorted(per_hub) == [1, 1, 2], per_hub

            check_deliveries(publish_across_nodes(redis, clients, PUBLISHES, SESSION_OF))
        finally:
            for client in clients.values():
                client.close()
